"""Checking and trimming a client's SDP offer before aiortc sees it.

Every rejection is a :class:`~icegate.errors.SignalingError` carrying the HTTP status
and a reason a developer can act on. Accepted offers lose the candidates a relayed
session can never use and that would make aioice do work we forbid:

- mDNS candidates (``*.local``): resolving them would open a multicast socket per
  session. Behind the relay the client is learned from its checks anyway
  (peer-reflexive), with the address the relay saw.
- non-UDP candidates: the relay carries UDP only.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc import sdp

from icegate.errors import SignalingError

BAD_REQUEST = 400
UNPROCESSABLE = 422


@dataclass(frozen=True)
class Offer:
    sdp: str
    audio_lines: int
    dropped_candidates: int


def _usable_candidate(line: str) -> bool:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    fields = line.split()
    if len(fields) < 8:
        return False
    transport, address = fields[2].lower(), fields[4].lower()
    return transport == "udp" and not address.endswith(".local")


usable_candidate = _usable_candidate  # the same rule for candidates trickled over PATCH (session.py)


def prepare_offer(body: bytes) -> Offer:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignalingError(BAD_REQUEST, "the offer is not UTF-8 text") from None
    if not text.lstrip().startswith("v=0"):
        raise SignalingError(BAD_REQUEST, "not an SDP offer: the body must start with v=0")
    try:
        description = sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise SignalingError(BAD_REQUEST, f"malformed SDP: {exc!r}") from exc
    if not description.media:
        raise SignalingError(UNPROCESSABLE, "the offer has no m-line")
    audio = [m for m in description.media if m.kind == "audio"]
    if not audio:
        raise SignalingError(UNPROCESSABLE, "the offer has no audio m-line: icegate sessions carry voice")
    for index, media in enumerate(description.media):
        if media.port == 0:
            continue  # a rejected m-line needs no transport
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise SignalingError(BAD_REQUEST, f"m-line {index} ({media.kind}) lacks ice-ufrag/ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise SignalingError(BAD_REQUEST, f"m-line {index} ({media.kind}) lacks a DTLS fingerprint")
    newline = "\r\n" if "\r\n" in text else "\n"
    kept: list[str] = []
    dropped = 0
    for line in text.splitlines():
        if line.startswith("a=candidate:") and not _usable_candidate(line):
            dropped += 1
            continue
        kept.append(line)
    return Offer(newline.join(kept) + newline, len(audio), dropped)
