"""An in-process CA responder (aiohttp on port 0) that can be told to misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.x509 import ocsp


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/ocsp-response"})
    delay: float = 0.0  # seconds before answering
    reset: bool = False  # drop the connection instead of answering
    chunked: bool = False  # stream the body with chunked encoding (no Content-Length)


Behaviour = Callable[[int], Reply | Awaitable[Reply]]


class FakeUpstream:
    """Answers each OCSP POST with ``behaviour(serial)``; counts requests per serial."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = lambda serial: Reply(status=500)
        self.requests: list[int] = []
        self.times: list[float] = []  # monotonic arrival of each request
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            serial = ocsp.load_der_ocsp_request(body).serial_number
        except ValueError:
            return web.Response(status=400)
        self.requests.append(serial)
        self.times.append(time.monotonic())
        reply = self.behaviour(serial)
        if not isinstance(reply, Reply):
            reply = await reply
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if reply.chunked:
            return await self._stream(request, reply)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    @staticmethod
    async def _stream(request: web.Request, reply: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(status=reply.status, headers=reply.headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        # The client may hang up part way (a size cap): that is the point, not an error here.
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(reply.body), 8192):
                await resp.write(reply.body[start : start + 8192])
            await resp.write_eof()
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def go_down(self) -> None:
        """A CA outage: stop listening, so connections are refused; stop() is then a no-op."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
