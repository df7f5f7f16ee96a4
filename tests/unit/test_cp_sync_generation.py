"""A backend's generation as the map holds it (32 bits): a steady registration changes nothing."""

from __future__ import annotations

from controlplane.cluster.sync import backend_of, plan_backends
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend
from icegate.schema import Registration


def test_millisecond_generations_do_not_rewrite_the_map_every_sync() -> None:
    generation = 1_796_284_353_703  # a transceiver's int(time.time() * 1000): more than 32 bits
    reg = Registration(1, 1, "10.70.0.11", 6081, "http://10.70.0.11:8080", "active", generation)
    in_map = Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, generation & 0xFFFFFFFF)
    assert backend_of(reg) == in_map
    plan = plan_backends({(1, 1): reg}, [in_map], {}, 0.0, 600.0)
    assert plan.put == [] and plan.delete == []
