"""``application/trickle-ice-sdpfrag`` (RFC 8840 §9): the body of a WHIP PATCH (RFC 9725 §4.3).

A fragment carries ICE credentials, candidates and end-of-candidates, at session level
(before any ``m=``) or inside media sections named by ``a=mid``::

    a=ice-ufrag:EsAw
    a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
    m=audio 9 UDP/TLS/RTP/SAVPF 111
    a=mid:0
    a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host
    a=end-of-candidates

:func:`parse` reads one (bounded: :data:`MAX_BYTES`, :data:`MAX_CANDIDATES`; a
``ValueError`` with an exact message for anything malformed), :func:`write` makes the
server's answer to an ICE restart. Attributes a fragment may carry but icegate does not
use (``ice-options``, ``group``) are skipped; a fragment with different credentials in
two places is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "application/trickle-ice-sdpfrag"
MAX_BYTES = 16384
MAX_CANDIDATES = 64
MAX_ATTRIBUTE = 1024  # bytes of one line; a candidate line is ~100
ICE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


@dataclass
class SdpFrag:
    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)  # (mid, "candidate:..." value)
    end_of_candidates: bool = False
    mids: list[str] = field(default_factory=list)


def _ice_chars(value: str, name: str, low: int, high: int) -> str:
    # RFC 8839 §5.4: ice-ufrag 4-256 ice-char, ice-pwd 22-256 ice-char.
    if not low <= len(value) <= high or not set(value) <= ICE_CHARS:
        raise ValueError(f"{name}: expected {low}-{high} ice-char, got {value!r}")
    return value


def parse(body: bytes) -> SdpFrag:
    if len(body) > MAX_BYTES:
        raise ValueError(f"sdpfrag: {len(body)} bytes exceeds {MAX_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("sdpfrag: not UTF-8") from exc
    frag = SdpFrag()
    mid: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if len(line) > MAX_ATTRIBUTE:
            raise ValueError(f"sdpfrag line {number}: longer than {MAX_ATTRIBUTE} bytes")
        kind, eq, value = line.partition("=")
        if eq != "=" or len(kind) != 1:
            raise ValueError(f"sdpfrag line {number}: expected <type>=<value>")
        if kind == "m":
            mid = None
            continue
        if kind != "a":
            continue  # v=, o=, c= ... carry nothing ICE needs
        name, _, arg = value.partition(":")
        if name == "mid":
            mid = arg
            frag.mids.append(arg)
        elif name == "ice-ufrag":
            ufrag = _ice_chars(arg, "ice-ufrag", 4, 256)
            if frag.ufrag not in (None, ufrag):
                raise ValueError("sdpfrag: two different ice-ufrag values")
            frag.ufrag = ufrag
        elif name == "ice-pwd":
            pwd = _ice_chars(arg, "ice-pwd", 22, 256)
            if frag.pwd not in (None, pwd):
                raise ValueError("sdpfrag: two different ice-pwd values")
            frag.pwd = pwd
        elif name == "candidate":
            if len(frag.candidates) >= MAX_CANDIDATES:
                raise ValueError(f"sdpfrag: more than {MAX_CANDIDATES} candidates")
            if len(arg.split()) < 8:
                raise ValueError(f"sdpfrag line {number}: a candidate needs at least 8 fields")
            frag.candidates.append((mid, arg))
        elif name == "end-of-candidates":
            frag.end_of_candidates = True
    if (frag.ufrag is None) != (frag.pwd is None):
        raise ValueError("sdpfrag: ice-ufrag and ice-pwd come together")
    return frag


def write(ufrag: str, pwd: str, mids: Sequence[str], candidates: Sequence[str]) -> str:
    """The answer to an ICE restart: new credentials, then per media section its candidates
    (``candidate:...`` values) and end-of-candidates (icegate gathers nothing later)."""
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
    for mid in mids:
        lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 0", f"a=mid:{mid}"]
        lines += [f"a={c}" for c in candidates]
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
