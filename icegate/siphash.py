"""SipHash-2-4 (Aumasson & Bernstein, 2012), the keyed MAC of route tokens.

Pure Python so the codec has no native dependency; it runs once per minted or
verified token, never per packet. ``bpf/token.h`` holds the C twin that the XDP
program runs; ``tests/data/token_vectors.json`` drives both.
"""

from __future__ import annotations

import struct

KEY_BYTES = 16
_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
    for _ in range(n):
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, message: bytes) -> int:
    """Return the 64-bit SipHash-2-4 of ``message`` under the 16-byte ``key``."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"SipHash key must be {KEY_BYTES} bytes, got {len(key)}")
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    whole = len(message) - len(message) % 8
    for offset in range(0, whole, 8):
        (m,) = struct.unpack_from("<Q", message, offset)
        v3 ^= m
        v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
        v0 ^= m

    last = (len(message) & 0xFF) << 56
    for i, byte in enumerate(message[whole:]):
        last |= byte << (8 * i)
    v3 ^= last
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
    v0 ^= last

    v2 ^= 0xFF
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 4)
    return v0 ^ v1 ^ v2 ^ v3
