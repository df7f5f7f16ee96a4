"""Voice agents for the transceiver's agent protocol: the SDK (:mod:`.sdk`) and agents built on it."""
