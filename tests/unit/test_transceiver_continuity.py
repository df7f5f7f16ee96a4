"""transceiver.continuity, iceadapter.restart_connection, sdpfrag and WHIP PATCH.

A real aiortc answerer bound to a real mux (the iceadapter harness); the client's side
is played by hand with real STUN in real Geneve, so every step of latching is visible:
the authentic check from a new address, the transceiver's triggered check, its answer.
The lab test (tests/integration/test_continuity_lab.py) does the same with a real NAT.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aioice import stun
from aiortc import RTCPeerConnection

from icegate import inet, token
from icegate.errors import ConfigError
from tests.unit.test_transceiver_iceadapter import CLUSTER, INDEX, KEY, VIP1, Harness, run, sdp_value
from tests.unit.test_transceiver_signaling import SDP, client_offer
from tests.unit.test_transceiver_signaling import config as signaling_config
from tests.unit.test_transceiver_signaling import run as run_service
from transceiver import sdpfrag
from transceiver.continuity import Continuity, Latch
from transceiver.iceadapter import MuxBinding, bind_peer_connection, ice_transports, restart_connection
from transceiver.service import Transceiver

FRAG = sdpfrag.CONTENT_TYPE


@dataclass
class Client:
    """The client's ICE side, by hand: its credentials and the server's."""

    ufrag: str
    pwd: str
    server_ufrag: str
    server_pwd: str
    requests: list[tuple[inet.UdpPacket, stun.Message]] = field(default_factory=list)

    def check(self, *, nominate: bool = False, password: str | None = None) -> stun.Message:
        msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        msg.attributes.update(
            {"USERNAME": f"{self.server_ufrag}:{self.ufrag}", "PRIORITY": 1_000_000, "ICE-CONTROLLING": 1}
        )
        if nominate:
            msg.attributes["USE-CANDIDATE"] = None
        msg.add_message_integrity((password or self.server_pwd).encode())
        msg.add_fingerprint()
        return msg

    def reply(self, request: stun.Message, mapped: tuple[str, int]) -> bytes:
        msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id)
        msg.attributes["XOR-MAPPED-ADDRESS"] = mapped
        msg.add_message_integrity(self.pwd.encode())
        msg.add_fingerprint()
        return bytes(msg)


async def wait_request(h: Harness, to: tuple[str, int], timeout: float = 3.0) -> stun.Message:
    """The next binding request the transceiver sends to ``to`` (other packets skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        pkt, msg = await h.recv(max(deadline - loop.time(), 0.01))
        if msg is not None and msg.message_class == stun.Class.REQUEST and (pkt.dst, pkt.dport) == to:
            return msg


async def requests_to(h: Harness, to: tuple[str, int], wait: float = 0.4) -> list[stun.Message]:
    """Every binding request the transceiver sends to ``to`` within ``wait`` seconds (aioice's
    own triggered check and continuity's latching check both go there)."""
    found = [await wait_request(h, to)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while loop.time() < deadline:
        try:
            found.append(await wait_request(h, to, deadline - loop.time()))
        except TimeoutError:
            break
    return found


async def poll(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


async def connected(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> tuple[
    MuxBinding, Client, tuple[str, int]
]:  # fmt: skip
    """Answer the offer, complete ICE from the client's host address; return the binding."""
    await server.setRemoteDescription(client.localDescription)
    binding = bind_peer_connection(server, h.mux, h.vips, lambda: token.mint(0, KEY, CLUSTER, INDEX))
    await server.setLocalDescription(await server.createAnswer())
    offer, answer = client.localDescription.sdp, server.localDescription.sdp
    c = Client(
        sdp_value(offer, "ice-ufrag"),
        sdp_value(offer, "ice-pwd"),
        sdp_value(answer, "ice-ufrag"),
        sdp_value(answer, "ice-pwd"),
    )
    host = re.search(r"^a=candidate:\S+ 1 udp \d+ (\d+\.\d+\.\d+\.\d+) (\d+) typ host", offer, re.M)
    assert host
    me = (host.group(1), int(host.group(2)))
    h.send(me, VIP1, bytes(c.check(nominate=True)))
    request = await wait_request(h, me)
    h.send(me, VIP1, c.reply(request, VIP1))
    (transport,) = ice_transports(server)
    await poll(lambda: transport.state == "completed", what=f"ICE state {transport.state}")
    return binding, c, me


def continuity_for(h: Harness, binding: MuxBinding, **kw: Any) -> Continuity:
    (connection,), (route,) = binding.connections, binding.routes
    c = Continuity(connection, route, h.mux, **kw)
    for protocol in connection._protocols:
        protocol.watcher = c  # type: ignore[attr-defined]
    return c


def test_a_check_from_a_new_address_moves_media_only_once_the_triggered_check_is_answered() -> None:
    async def scenario(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> None:
        binding, c, me = await connected(h, client, server)
        latches: list[Latch] = []
        cont = continuity_for(h, binding, on_latch=latches.append)
        conn = binding.connections[0]
        rebound = (me[0], me[1] + 1000)  # the NAT's new mapping
        assert conn._nominated[1].remote_addr == me

        # A check with a wrong password from elsewhere: the mux drops it, nothing moves.
        h.send(rebound, VIP1, bytes(c.check(password="x" * 22)))
        await asyncio.sleep(0.1)
        assert h.mux.counters["in", "bad_integrity"] == 1 and cont.counters["moved"] == 0

        # An authentic check from the new address: answered, and a triggered check goes there...
        h.send(rebound, VIP1, bytes(c.check()))
        triggered = await requests_to(h, rebound)
        assert {t.attributes["USERNAME"] for t in triggered} == {f"{c.ufrag}:{c.server_ufrag}"}
        # ...but until it is answered, media still goes to the old address (RFC 7675).
        assert conn._nominated[1].remote_addr == me and not latches
        # Answers from a third address do not count (RFC 8445 §7.2.5.2.1).
        for t in triggered:
            h.send((me[0], me[1] + 2000), VIP1, c.reply(t, VIP1))
        await poll(lambda: cont.counters["failed"] == 1, what="the mismatched answer to count")
        assert conn._nominated[1].remote_addr == me and not latches

        # The next authentic check; this time the client answers from where it is.
        h.send(rebound, VIP1, bytes(c.check()))
        for t in await requests_to(h, rebound):
            h.send(rebound, VIP1, c.reply(t, VIP1))
        await poll(lambda: bool(latches), what="the latch")
        (latch,) = latches
        assert (latch.old, latch.new, latch.vip) == (me, rebound, VIP1)
        assert conn._nominated[1].remote_addr == rebound
        assert (me, VIP1) not in h.mux._flows and (rebound, VIP1) in h.mux._flows
        # Data now leaves for the new address, and the old one is no longer a flow.
        await conn.send(b"\x80" + b"\x00" * 20)
        while True:
            pkt, msg = await h.recv()
            if msg is None:
                assert (pkt.dst, pkt.dport) == rebound
                break
        before = h.mux.counters["in", "no_flow"]
        h.send(me, VIP1, b"\x80" + b"\x00" * 20)
        await poll(lambda: h.mux.counters["in", "no_flow"] == before + 1, what="no_flow from the old address")
        await cont.close()

    run(scenario)


def test_consent_renewed_by_answers_and_expired_without_them() -> None:
    async def scenario(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> None:
        binding, c, me = await connected(h, client, server)
        expired = asyncio.Event()
        cont = continuity_for(h, binding, consent_window_s=1.0, on_expired=expired.set)
        cont.start()
        loop = asyncio.get_running_loop()
        answer_until = loop.time() + 2.0  # twice the window: answered checks keep it alive
        while loop.time() < answer_until:
            try:
                request = await wait_request(h, me, timeout=answer_until - loop.time())
            except TimeoutError:
                break
            h.send(me, VIP1, c.reply(request, VIP1))
        assert not expired.is_set() and cont.counters["consent_ok"] >= 2, cont.counters
        theirs = binding.connections[0]._query_consent_task
        assert theirs is None or theirs.cancelled(), "aioice's own consent loop still runs"
        silent_from = loop.time()
        await asyncio.wait_for(expired.wait(), 5.0)
        assert 0.5 < loop.time() - silent_from < 3.0  # the window (1 s) + one check interval
        assert cont.counters["consent_expired"] == 1
        await cont.close()

    run(scenario)


def test_ice_restart_takes_new_credentials_on_the_same_connection() -> None:
    async def scenario(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> None:
        binding, c, me = await connected(h, client, server)
        (conn,), (route,) = binding.connections, binding.routes
        nominated = conn._nominated[1]
        new_ufrag = token.mint(0, KEY, CLUSTER, INDEX)
        password = restart_connection(conn, route, h.mux, new_ufrag, "cli2", "n" * 22)
        assert binding.ufrags == [new_ufrag] and token.verify(new_ufrag, {0: KEY}).index == INDEX
        old = Client(c.ufrag, c.pwd, c.server_ufrag, c.server_pwd)
        new = Client("cli2", "n" * 22, new_ufrag, password)
        # The old credentials no longer reach the session...
        h.send(me, VIP1, bytes(old.check()))
        await poll(lambda: h.mux.counters["in", "unknown_ufrag"] == 1, what="the old ufrag refused")
        # ...the new ones do, answered with the new password, on the same nominated pair.
        check = new.check(nominate=True)
        h.send(me, VIP1, bytes(check))
        while True:
            _, msg = await h.recv()
            if msg is not None and msg.transaction_id == check.transaction_id:
                break
        assert msg.message_class == stun.Class.RESPONSE and msg.check_message_integrity(password.encode())
        assert conn._nominated[1] is nominated and (me, VIP1) in h.mux._flows

    run(scenario)


# -- sdpfrag -------------------------------------------------------------------------

RESTART = (
    b"a=ice-options:trickle ice2\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
    b"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    b"a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
    b"a=end-of-candidates\r\n"
)


def test_sdpfrag_round_trip() -> None:
    frag = sdpfrag.parse(RESTART)
    assert (frag.ufrag, frag.pwd, frag.mids, frag.end_of_candidates) == (
        "EsAw",
        "P2uYro0UCOQ4zxjKXaWCBui1",
        ["0"],
        True,
    )
    assert frag.candidates == [("0", "1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0")]
    text = sdpfrag.write("abcd", "p" * 22, ["0"], ["candidate:1 1 udp 2130706431 192.0.2.10 3478 typ host"])
    again = sdpfrag.parse(text.encode())
    assert (again.ufrag, again.pwd, again.mids, len(again.candidates)) == ("abcd", "p" * 22, ["0"], 1)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"a=ice-ufrag:ab\r\na=ice-pwd:" + b"p" * 22, "ice-ufrag: expected 4-256"),
        (b"a=ice-ufrag:abcd\r\n", "come together"),
        (b"a=ice-ufrag:abcd\r\na=ice-pwd:" + b"p" * 22 + b"\r\na=ice-ufrag:abce", "two different ice-ufrag"),
        (b"a=ice-ufrag:ab-d\r\na=ice-pwd:" + b"p" * 22, "ice-char"),
        (b"a=candidate:1 1 udp\r\n", "at least 8 fields"),
        (b"x" * (sdpfrag.MAX_BYTES + 1), "exceeds"),
        (b"a=candidate:1 1 udp 1 192.0.2.1 1 typ host\r\n" * (sdpfrag.MAX_CANDIDATES + 1), "more than"),
        (b"garbage\r\n", "expected <type>=<value>"),
        (b"\xff", "not UTF-8"),
    ],
)
def test_sdpfrag_refuses_bad_fragments(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        sdpfrag.parse(body)


# -- WHIP PATCH over real HTTP --------------------------------------------------------


def test_patch_restarts_ice_on_the_same_session_with_etag_preconditions() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        client, offer = await client_offer()
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers=SDP) as resp:
                assert resp.status == 201
                location, etag = resp.headers["Location"], resp.headers["ETag"]
                first_ufrag = sdp_value(await resp.text(), "ice-ufrag")
            session_url = f"{url}{location}"
            frag = b"a=ice-ufrag:n3wU\r\na=ice-pwd:" + b"q" * 24 + b"\r\n"

            async def patch(body: bytes, **headers: str) -> tuple[int, str, Any]:
                async with http.patch(session_url, data=body, headers={"Content-Type": FRAG, **headers}) as r:
                    return r.status, await r.text(), r.headers

            assert (await patch(frag))[0] == 428  # no If-Match
            assert (await patch(frag, **{"If-Match": '"stale"'}))[0] == 412
            async with http.patch(session_url, data=frag, headers={"If-Match": etag}) as r:
                assert r.status == 415
            status, body, _ = await patch(b"a=ice-ufrag:n3wU\r\n", **{"If-Match": etag})
            assert status == 400 and "come together" in body

            status, body, headers = await patch(frag, **{"If-Match": "*"})
            assert status == 200 and headers["Content-Type"].startswith(FRAG), body
            answer = sdpfrag.parse(body.encode())
            assert answer.ufrag is not None and answer.ufrag != first_ufrag
            decoded = token.verify(answer.ufrag, {3: bytes.fromhex("00112233445566778899aabbccddeeff")})
            assert (decoded.cluster, decoded.index) == (2, 5)  # the same transceiver
            assert answer.end_of_candidates and [c.split()[4] for _, c in answer.candidates][:2] == [
                "192.0.2.10",
                "192.0.2.20",
            ]
            new_etag = headers["ETag"]
            assert new_etag != etag
            # The same session, under its new ufrag; the old ETag names a finished ICE session.
            async with http.get(session_url) as r:
                shown = await r.json()
            assert shown["ufrags"] == [answer.ufrag] and shown["ice_restarts"] == 1
            assert (await patch(frag, **{"If-Match": etag}))[0] == 412
            # Trickle for the current ICE session (same ufrag): 204; aioice has the candidate
            # (an mDNS one is dropped, as in offers).
            trickle = (
                b"a=ice-ufrag:n3wU\r\na=ice-pwd:" + b"q" * 24 + b"\r\na=mid:0\r\n"
                b"a=candidate:1 1 udp 2122260223 198.51.100.7 40123 typ host\r\n"
                b"a=candidate:2 1 udp 2122260223 5f1c-4e.local 40124 typ host\r\n"
                b"a=end-of-candidates\r\n"
            )
            assert (await patch(trickle, **{"If-Match": new_etag}))[0] == 204
            live = service.sessions.get(location.rsplit("/", 1)[1])
            assert live is not None and live.binding is not None
            remote = [(c.host, c.port) for c in live.binding.connections[0]._remote_candidates]
            assert ("198.51.100.7", 40123) in remote and not [h for h, _ in remote if h.endswith(".local")]
            async with http.options(
                session_url, headers={"Origin": "http://page.test", "Access-Control-Request-Method": "PATCH"}
            ) as r:
                assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
                assert "If-Match" in r.headers["Access-Control-Allow-Headers"]
            # A draining transceiver refuses a restart (relays refuse it new flows), keeps the session.
            service.drain()
            status, body, headers = await patch(
                b"a=ice-ufrag:th1rd\r\na=ice-pwd:" + b"r" * 24, **{"If-Match": "*"}
            )
            assert status == 503 and "draining" in body and headers["Retry-After"]
            async with http.get(session_url) as r:
                assert r.status == 200 and (await r.json())["ice_restarts"] == 1
            async with http.delete(session_url) as r:
                assert r.status == 204
        finally:
            await client.hangup()

    service = run_service(scenario)
    assert service.sessions.outcomes["completed"] == 1


def test_a_bad_consent_window_fails_at_start_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"transceiver\.consent_window_s"):
        signaling_config(consent_window_s=0)
    assert signaling_config().consent_window_s == 30.0  # RFC 7675 §5.1
