"""The relay's operator commands: ``relay``, ``flows``, ``backends``, ``token``, ``stats``
(one ``cli_*`` module per group, shared parts in :mod:`.cli_common`).

They read the pinned maps directly (``KernelStore``), so they work while the daemon is
down, or the twin's state over HTTP when the relay runs in userspace, and Redis where
the cluster's view is needed (registrations, route keys). Every listing prints a table,
or the same rows as JSON with ``--json`` (``views.py``). The groups plug into the
``icegate`` root through the ``icegate.commands`` entry points (``pyproject.toml``).
"""

from __future__ import annotations

from controlplane.operator.cli_backends import backends
from controlplane.operator.cli_common import CliEnv, RelayAccess, Target, limit_capacities, readiness
from controlplane.operator.cli_drain import relay_drain
from controlplane.operator.cli_flows import flows
from controlplane.operator.cli_relay import relay
from controlplane.operator.cli_stats import stats
from controlplane.operator.cli_token import token

__all__ = [
    "CliEnv",
    "RelayAccess",
    "Target",
    "backends",
    "flows",
    "limit_capacities",
    "readiness",
    "relay",
    "relay_drain",
    "stats",
    "token",
]
