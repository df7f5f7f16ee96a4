"""The peer for ``bench.sessions``: a plain aiortc answerer as its own process, echoing each client's audio.

    .venv/bin/python -m bench.plain_answerer --listen 10.70.0.11:8081

What classic WebRTC does without icegate: one ``RTCPeerConnection`` per session, each
gathering host candidates on sockets of its own (no relay, no route token, no tunnel
mux, no agent), its audio track sent back as the answerer's own track, so every frame
is decoded and re-encoded by aiortc's default media path. The signaling has the shape
of the transceiver's (``POST /v1/sessions`` with an SDP offer -> 201, ``Location``, the
SDP answer; ``DELETE`` ends a session; ``GET /v1/sessions`` lists them), so the same
:class:`transceiver.client.VoiceClient` talks to both.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

SDP = "application/sdp"


class EchoAnswerer:
    """Answers offers with one ``RTCPeerConnection`` each, sending the client's audio back."""

    def __init__(self) -> None:
        self.peers: dict[str, RTCPeerConnection] = {}
        self._ids = itertools.count(1)

    async def answer(self, offer: str) -> tuple[str, str]:
        """``(session id, SDP answer)`` for ``offer``."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = str(next(self._ids))
        self.peers[session] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(track)  # the echo: received frames are what this peer sends

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session)

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return session, str(pc.localDescription.sdp)

    async def close(self, session: str) -> bool:
        pc = self.peers.pop(session, None)
        if pc is None:
            return False
        await pc.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(s) for s in list(self.peers)))


def make_app(answerer: EchoAnswerer) -> web.Application:
    async def create(request: web.Request) -> web.StreamResponse:
        if request.content_type != SDP:
            return web.json_response({"error": f"expected Content-Type {SDP}"}, status=415)
        session, answer = await answerer.answer(await request.text())
        location = f"/v1/sessions/{session}"
        return web.Response(status=201, text=answer, content_type=SDP, headers={"Location": location})

    async def listing(request: web.Request) -> web.StreamResponse:
        return web.json_response(sorted(answerer.peers))

    async def delete(request: web.Request) -> web.StreamResponse:
        found = await answerer.close(request.match_info["id"])
        return (
            web.Response(status=204) if found else web.json_response({"error": "no such session"}, status=404)
        )

    async def shutdown(app: web.Application) -> None:
        await answerer.close_all()

    app = web.Application()
    app.router.add_post("/v1/sessions", create)
    app.router.add_get("/v1/sessions", listing)
    app.router.add_delete("/v1/sessions/{id}", delete)
    app.on_shutdown.append(shutdown)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT of the signaling endpoint")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    # SIGTERM and SIGINT end run_app cleanly: on_shutdown closes every peer connection.
    web.run_app(make_app(EchoAnswerer()), host=host, port=int(port), print=None)


if __name__ == "__main__":
    main()
