"""Tooling on the top floor: the namespace lab, the demo, ``icegate bench``, the BPF test
harness, packet builders, the static next hop and the helpers the tests and ``bench/``
share. It imports the product; nothing in the product (``icegate``, ``controlplane``,
``transceiver``, ``geo``) imports it (enforced by import-linter, ``scripts/check``).
"""
