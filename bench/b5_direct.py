"""B5's direct peer: the transceiver's media path (bridge, VAD, agent link) on a plain aiortc peer, no relay.

    .venv/bin/python -m bench.b5_direct --listen 10.70.0.11:8082 --agent-url ws://127.0.0.1:8090/

What a transceiver would be without icegate's relay: one ``RTCPeerConnection`` per session
with sockets of its own (host candidates, no route token, no Geneve tunnel mux), and the
very media path the transceiver runs (:class:`transceiver.bridge.MediaBridge`: the
caller's audio through the same jitter-buffer setting and VAD to the same agent, the
agent's audio paced back through the same playout track; turn events on the ``events``
data channel). So "through the relay" minus "direct" is what the relay and the tunnel
add. Signaling has the transceiver's shape (``POST /v1/sessions?vad.start_ms=...`` with
an SDP offer -> 201, ``Location``, the answer; ``DELETE`` ends it), with CORS for pages.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import aiohttp
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel

from transceiver import session_options
from transceiver.audio import set_receive_prefetch
from transceiver.bridge import MediaBridge
from transceiver.config import AgentLinkConfig, VadConfig

SDP = "application/sdp"
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Expose-Headers": "Location",
}


class DirectAnswerer:
    def __init__(self, agent_url: str, receive_prefetch: int | None = None) -> None:
        self.agent_url = agent_url
        self.link = AgentLinkConfig()
        if receive_prefetch is not None:
            self.link = AgentLinkConfig(receive_prefetch_packets=receive_prefetch)
        self.peers: dict[str, tuple[RTCPeerConnection, MediaBridge]] = {}
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None

    async def answer(self, offer: str, query: dict[str, str]) -> tuple[str, str]:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        session = str(next(self._ids))
        vad = session_options.endpointing(VadConfig(), query)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        bridge = MediaBridge(session, vad, agent_url=self.agent_url, http=self._http, link=self.link)
        self.peers[session] = (pc, bridge)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                bridge.attach_input(track)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            bridge.events = channel
            channel.on("message", bridge.client_message)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session)

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        set_receive_prefetch(pc, self.link.receive_prefetch_packets)
        pc.addTrack(bridge.track)
        await pc.setLocalDescription(await pc.createAnswer())
        await bridge.connect_agent()
        return session, str(pc.localDescription.sdp)

    async def close(self, session: str) -> bool:
        peer = self.peers.pop(session, None)
        if peer is None:
            return False
        pc, bridge = peer
        await bridge.close("closed")
        await pc.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(s) for s in list(self.peers)))
        if self._http is not None:
            await self._http.close()


def make_app(answerer: DirectAnswerer) -> web.Application:
    async def create(request: web.Request) -> web.StreamResponse:
        session, answer = await answerer.answer(await request.text(), dict(request.query))
        headers = {"Location": f"/v1/sessions/{session}", **CORS}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def preflight(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204, headers=CORS)

    async def listing(request: web.Request) -> web.StreamResponse:
        return web.json_response(sorted(answerer.peers), headers=CORS)

    async def delete(request: web.Request) -> web.StreamResponse:
        found = await answerer.close(request.match_info["id"])
        return web.Response(status=204 if found else 404, headers=CORS)

    async def shutdown(app: web.Application) -> None:
        await answerer.close_all()

    app = web.Application()
    app.router.add_post("/v1/sessions", create)
    app.router.add_get("/v1/sessions", listing)
    app.router.add_route("OPTIONS", "/v1/sessions", preflight)
    app.router.add_route("OPTIONS", "/v1/sessions/{id}", preflight)
    app.router.add_delete("/v1/sessions/{id}", delete)
    app.on_shutdown.append(shutdown)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8082", help="HOST:PORT of the signaling endpoint")
    parser.add_argument("--agent-url", required=True, help="ws://HOST:PORT/ of the voice agent")
    parser.add_argument("--receive-prefetch", type=int, help="agent.receive_prefetch_packets")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    answerer = DirectAnswerer(args.agent_url, args.receive_prefetch)
    web.run_app(make_app(answerer), host=host, port=int(port), print=None)


if __name__ == "__main__":
    main()
