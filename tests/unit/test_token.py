"""The route-token codec against the shared vectors, plus properties of mint/verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icegate import token
from icegate.errors import TokenError
from icegate.siphash import siphash24

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "token_vectors.json").read_text())
KEYS = {int(k): bytes.fromhex(v) for k, v in VECTORS["keys"].items()}


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors(case: dict) -> None:
    if case["ok"]:
        t = token.verify(case["ufrag"], KEYS)
        assert (t.key_id, t.cluster, t.index, t.nonce, t.tag) == (
            case["key_id"],
            case["cluster"],
            case["index"],
            case["nonce"],
            case["tag"],
        )
        assert t.verified
    else:
        with pytest.raises(TokenError) as err:
            token.verify(case["ufrag"], KEYS)
        assert err.value.reason == case["reason"]


def test_siphash_reference_vectors() -> None:
    # From the SipHash paper's reference implementation (vectors.h): key 00..0f, message 00..n-1.
    key = bytes(range(16))
    assert siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert siphash24(key, bytes(range(8))) == 0x93F5F5799A932462
    assert siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5


@given(
    key_id=st.integers(0, 15),
    cluster=st.integers(0, 0xFFFF),
    index=st.integers(0, 0xFFFF),
    key=st.binary(min_size=16, max_size=16),
)
def test_mint_verify_round_trip(key_id: int, cluster: int, index: int, key: bytes) -> None:
    ufrag = token.mint(key_id, key, cluster, index)
    assert len(ufrag) == token.TOKEN_CHARS
    assert all(c.isalnum() or c in "+/" for c in ufrag)  # ice-char, RFC 8839
    t = token.verify(ufrag, {key_id: key})
    assert (t.key_id, t.cluster, t.index) == (key_id, cluster, index)


def test_fresh_tokens_differ() -> None:
    minted = {token.mint(0, KEYS[0], 1, 1) for _ in range(200)}
    assert len(minted) == 200


@given(st.binary(min_size=24, max_size=24))
def test_random_ufrags_never_verify(raw: bytes) -> None:
    with pytest.raises(TokenError):
        token.verify(raw, KEYS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"key_id": 16}, "key id"),
        ({"cluster": 1 << 16}, "cluster id"),
        ({"index": -1}, "transceiver index"),
        ({"nonce": 1 << 40}, "nonce"),
    ],
)
def test_mint_rejects_out_of_range(kwargs: dict, message: str) -> None:
    args = {"key_id": 0, "key": KEYS[0], "cluster": 1, "index": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        token.mint(**args)
