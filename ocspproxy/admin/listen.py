"""How the admin listener takes connections: aiohttp's low-level server behind the OCSP port's gate
(a cap on connections, a lifetime for each), bad HTTP answered with a short text and logged once
per kind a minute, and a unix socket made with its mode from the start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import tempfile
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ocspproxy.log import Repeats
from ocspproxy.serve.badhttp import ErrorAnsweringHandler
from ocspproxy.serve.limits import Gate

__all__ = ["GatedServer", "socket_file", "unix_socket"]

log = structlog.get_logger("ocspproxy")

SOCKET_MODE = 0o660  # the service's user and group


class _Handler(ErrorAnsweringHandler):
    """aiohttp's handler of one connection, answering bad HTTP with a short text (not a traceback
    in the log for each: a client can send it at will)."""

    __slots__ = ("_repeats",)

    def __init__(self, manager: web.Server, repeats: Repeats, **settings: Any) -> None:
        super().__init__(manager, **settings)
        self._repeats = repeats

    def bad_http(
        self, request: web.BaseRequest, exc: HttpProcessingError, kind: str, http_status: int
    ) -> web.StreamResponse:
        if self._repeats.note(kind):
            log.info("admin listener: bad request", detail=kind, peer=request.remote)
        return web.Response(status=http_status, text=kind + "\n")

    def failed(self, request: web.BaseRequest, exc: BaseException | None) -> web.StreamResponse:
        log.error("admin request failed", peer=request.remote, exc_info=exc)
        return web.Response(status=500, text="internal error\n")


class GatedServer(web.Server):
    """aiohttp's low-level server with the OCSP port's gate: a cap on connections, a lifetime."""

    def __init__(self, handler: Any, gate: Gate, **settings: Any) -> None:
        super().__init__(handler, **settings)
        self.gate = gate
        self.repeats = Repeats()
        self._settings = settings
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}

    def __call__(self) -> RequestHandler:
        return _Handler(self, self.repeats, loop=self._loop, **self._settings)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        timer = self.gate.admit(transport)
        if timer is not None:
            self._timers[handler] = timer

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            self.gate.release(timer)
        super().connection_lost(handler, exc)


def unix_socket(path: str) -> socket.socket:
    """A listening unix socket at path, mode 0660 from the start: bound in a private directory
    beside it, then renamed into place (no moment where others may connect). An old socket at
    path is replaced; anything else there is an error."""
    with contextlib.suppress(FileNotFoundError):
        if not socket_file(path):
            raise OSError(f"{path} exists and is not a socket")
    directory = tempfile.mkdtemp(prefix=".admin-", dir=os.path.dirname(path) or ".")
    temporary = os.path.join(directory, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temporary)
        os.chmod(temporary, SOCKET_MODE)
        os.replace(temporary, path)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        os.rmdir(directory)
    sock.setblocking(False)
    return sock


def socket_file(path: str) -> bool:
    return stat.S_ISSOCK(os.lstat(path).st_mode)
