"""The lab: network namespaces that the demo, the e2e tests and the benchmarks run in.

    from labkit.lab import Lab, LabConfig
    lab = Lab(LabConfig(name="icg"))
    lab.up()                                   # namespaces, veths, bridge, routes, Redis
    lab.start_process("relay", "relay", [...]) # recorded; ended by lab.down()
    lab.relay_config(); lab.transceivers()     # settings for the components
    lab.status()                               # JSON-ready description
    lab.down()                                 # also after a crash: finds leftovers by name

Modules: :mod:`.config` (LabConfig), :mod:`.topology` (what the config means, pure),
:mod:`.kernel` (offloads, sysctls, netem, reads), :mod:`.processes` (the registry),
:mod:`.core` (Lab), :mod:`.cli` (``icegate lab``). The topology is drawn in docs/LAB.md.
"""

from __future__ import annotations

from labkit.lab.cli import lab
from labkit.lab.config import (
    DEFAULT_NAME,
    ClientConfig,
    LabConfig,
    PrivateConfig,
    PublicConfig,
    TransceiverHostConfig,
    load_lab_config,
)
from labkit.lab.core import ClientSettings, Lab, Teardown, TransceiverSettings
from labkit.lab.processes import LabProcess

__all__ = [
    "DEFAULT_NAME",
    "ClientConfig",
    "ClientSettings",
    "Lab",
    "LabConfig",
    "LabProcess",
    "PrivateConfig",
    "PublicConfig",
    "Teardown",
    "TransceiverHostConfig",
    "TransceiverSettings",
    "lab",
    "load_lab_config",
]
