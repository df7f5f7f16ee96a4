"""What an offer may ask of its session beyond SDP (docs/AGENT_PROTOCOL.md §3).

- Endpointing, per session: query parameters ``vad.<field>`` of ``POST /v1/sessions``
  override the transceiver's :class:`VadConfig` (``?vad.detector=webrtc&vad.silence_ms=300``).
  An unknown field or a bad value is a 400 naming it; other query parameters are not ours.
- Metadata for the agent: the request headers the operator lists in
  ``agent.metadata_headers`` (and only those) reach the agent in ``hello.metadata``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from icegate.config import build
from icegate.errors import ConfigError, SignalingError
from transceiver.config import VadConfig

PREFIX = "vad."
MAX_HEADER_CHARS = 1024
_TYPES = {f.name: f.type for f in dataclasses.fields(VadConfig)}


def endpointing(base: VadConfig, query: Mapping[str, str]) -> VadConfig:
    """``base`` with the offer's ``vad.*`` overrides; SignalingError(400) naming a bad one."""
    overrides: dict[str, Any] = {}
    for key, text in query.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        kind = _TYPES.get(name)
        if kind is None:
            raise SignalingError(
                400, f"{key}: unknown endpointing field (known: {', '.join(sorted(_TYPES))})"
            )
        try:
            overrides[name] = int(text) if kind == "int" else float(text) if kind == "float" else text
        except ValueError:
            raise SignalingError(400, f"{key}: expected a {kind}, got {text!r}") from None
    if not overrides:
        return base
    try:
        return build(VadConfig, dataclasses.asdict(base) | overrides, "vad")
    except ConfigError as exc:
        raise SignalingError(400, str(exc)) from exc


def metadata(allowed: tuple[str, ...], headers: Mapping[str, str]) -> dict[str, str]:
    """The allowed headers present in the request, by their configured name."""
    out = {}
    for name in allowed:
        value = headers.get(name)
        if value is not None:
            if len(value) > MAX_HEADER_CHARS:
                raise SignalingError(400, f"header {name}: longer than {MAX_HEADER_CHARS} characters")
            out[name] = value
    return out
