"""The errors icegate raises, as one tree.

IcegateError
├── ConfigError        bad configuration; names the field (``relay.vips[0].port: ...``)
├── TokenError         a ufrag that is not a valid route token; ``reason`` says why
├── WireError          a packet or header that cannot be parsed (Geneve, IP, UDP, STUN)
│   └── StunReject         a STUN-range payload that cannot be a first check; ``reason``
│                          is the drop counter (``stun_malformed``, ``username_missing``...)
├── DependencyError    a system dependency is missing (bcc, bpffs, kernel headers, ethtool)
├── BpfError           loading, attaching or reading the XDP program and its maps
│   ├── RelayNotRunning    no pinned maps for the named relay
│   └── ReadOnlyState      a write asked of the twin's state read over HTTP
├── LinkError          netlink / namespace operations (pyroute2)
├── StoreError         Redis unreachable or returned something unexpected
├── SignalingError     SDP offers the transceiver cannot answer; ``status`` is the HTTP code
└── DemoError          a step of the lab demo failed (tooling: ``labkit.demo``)
"""

from __future__ import annotations


class IcegateError(Exception):
    """Base of every error icegate raises on purpose."""


class ConfigError(IcegateError):
    """A configuration value is missing or invalid; the message starts with the field path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class TokenError(IcegateError):
    """A ufrag is not a valid route token.

    ``reason`` is the stats-enum name without its ``DROP_`` prefix
    (``controlplane.datapath.layout.Stat``): ``token_length``, ``token_alphabet``,
    ``token_version``, ``token_key`` or ``token_mac``, so the twin counts exactly what
    the XDP program counts.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class WireError(IcegateError, ValueError):
    """A packet or header is malformed."""


class StunReject(WireError):
    """A payload in the STUN range that cannot be a first check; ``reason`` is the counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DependencyError(IcegateError):
    """A system dependency is missing; the message says how to install it."""


class BpfError(IcegateError):
    """The XDP program or one of its maps could not be loaded, attached or read."""


class RelayNotRunning(BpfError):
    """No relay with that name has pinned maps on this host."""


class ReadOnlyState(BpfError):
    """A write asked of a snapshot (the twin's maps, read over HTTP)."""


class LinkError(IcegateError):
    """A netlink or network-namespace operation failed."""


class StoreError(IcegateError):
    """Redis is unreachable or returned data that does not parse."""


class SignalingError(IcegateError):
    """An offer the transceiver cannot answer; ``status`` is the HTTP status to return."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class DemoError(IcegateError):
    """A demo step failed (the message says which, with the component's log tail)."""
