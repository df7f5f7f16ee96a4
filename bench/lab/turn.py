"""Just enough of a TURN client (RFC 8656) to give coturn a channel: Allocate, then
ChannelBind to the peer, from the client address the generator will send from. coturn
runs with ``--no-auth`` in the benchmark (lab addresses only), so no credentials."""

from __future__ import annotations

import os
import socket
import struct

MAGIC = 0x2112A442
ALLOCATE, CHANNEL_BIND = 0x0003, 0x0009
SUCCESS = 0x0100
REQUESTED_TRANSPORT, XOR_PEER_ADDRESS, CHANNEL_NUMBER = 0x0019, 0x0012, 0x000C
CHANNEL = 0x4000  # RFC 8656 §12: channel numbers 0x4000-0x4FFF


def _attr(kind: int, value: bytes) -> bytes:
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", kind, len(value)) + value + bytes(pad)


def _message(method: int, attrs: bytes) -> tuple[bytes, bytes]:
    tid = os.urandom(12)
    return struct.pack("!HHI", method, len(attrs), MAGIC) + tid + attrs, tid


def _xor_address(host: str, port: int) -> bytes:
    addr = int.from_bytes(socket.inet_aton(host), "big") ^ MAGIC
    return struct.pack("!BBHI", 0, 1, port ^ (MAGIC >> 16), addr)


def _transact(sock: socket.socket, server: tuple[str, int], method: int, attrs: bytes) -> None:
    msg, tid = _message(method, attrs)
    sock.sendto(msg, server)
    while True:
        reply = sock.recv(2048)
        kind = struct.unpack("!H", reply[:2])[0]
        if reply[8:20] != tid:
            continue
        if kind != method | SUCCESS:
            raise OSError(f"TURN method {method:#x} failed: response type {kind:#x}")
        return


def allocate_and_bind(client: tuple[str, int], server: tuple[str, int], peer: tuple[str, int]) -> None:
    """Allocate from ``client`` and bind CHANNEL to ``peer``; the allocation lives on
    (600 s) after the socket closes, for the generator that binds the same address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(client)
        sock.settimeout(1.0)
        _transact(sock, server, ALLOCATE, _attr(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])))
        attrs = _attr(CHANNEL_NUMBER, struct.pack("!HH", CHANNEL, 0)) + _attr(
            XOR_PEER_ADDRESS, _xor_address(*peer)
        )
        _transact(sock, server, CHANNEL_BIND, attrs)


def channel_prefix(size: int) -> str:
    """The ChannelData header (RFC 8656 §12.4) for a UDP payload of ``size`` bytes, as hex."""
    return struct.pack("!HH", CHANNEL, size - 4).hex()
