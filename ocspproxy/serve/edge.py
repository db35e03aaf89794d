"""The HTTP edge: parses requests, maps answers and errors to OCSP responses, owns cache headers.

Every request gets a proper OCSP response quickly: mod_ssl turns a transport failure into a fake
tryLater that it may cache and staple for an hour.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from ocspproxy.core.ocsp import (
    CertId,
    MalformedRequest,
    ResponseStatus,
    decode_get_path,
    error_response,
    parse_request,
)
from ocspproxy.core.staple import Staple
from ocspproxy.log import request_line
from ocspproxy.serve.answer import Answer, Outcome, request_fields
from ocspproxy.serve.badhttp import BadRequestLog, ErrorAnsweringHandler, reason
from ocspproxy.serve.fastpath import FastPath
from ocspproxy.serve.limits import Gate, Limits
from ocspproxy.serve.render import CONTENT_TYPE, cache_headers
from ocspproxy.serve.responder import Responder
from ocspproxy.serve.tally import Tally

__all__ = ["Edge", "GuardedServer"]

log = structlog.get_logger("ocspproxy")

_STATUS_FOR = {
    Outcome.UNAUTHORIZED: ResponseStatus.UNAUTHORIZED,
    Outcome.NO_UPSTREAM: ResponseStatus.UNAUTHORIZED,
    Outcome.MALFORMED: ResponseStatus.MALFORMED_REQUEST,
    Outcome.ERROR: ResponseStatus.INTERNAL_ERROR,
}
# Pre-encoded error bodies: the edge answers errors without building anything.
_ERROR_BODIES: dict[ResponseStatus, bytes] = {
    status: error_response(status) for status in ResponseStatus if status is not ResponseStatus.SUCCESSFUL
}


class _TooLarge(MalformedRequest):
    pass


class _Broken(MalformedRequest):
    """The client broke off its request, or its body's framing: logged as a kind that repeats."""

    def __init__(self, kind: str, reason: str | None = None) -> None:
        super().__init__(kind)
        self.reason = reason


async def _request_der(request: web.BaseRequest, max_bytes: int) -> bytes:
    if request.method == "GET":
        return decode_get_path(request.raw_path, max_length=max_bytes)
    if request.content_length is not None and request.content_length > max_bytes:
        raise _TooLarge(f"body of {request.content_length} bytes exceeds {max_bytes}")
    body = bytearray()
    try:
        while chunk := await request.content.read(max_bytes + 1 - len(body)):
            body += chunk
            if len(body) > max_bytes:
                raise _TooLarge(f"body exceeds {max_bytes} bytes")
    except ConnectionError as exc:
        raise _Broken("connection lost mid-request") from exc
    except RuntimeError as exc:  # aiohttp's error for a read after the connection was lost
        if request.transport is not None:
            raise
        raise _Broken("connection lost mid-request") from exc
    except RequestPayloadError as exc:  # bad chunked encoding or compression
        raise _Broken("invalid body", reason(exc.__cause__ or exc)) from exc
    return bytes(body)


def _staple_response(staple: Staple, now: datetime) -> web.Response:
    headers = {"Content-Type": CONTENT_TYPE, **cache_headers(staple, now.timestamp())}
    return web.Response(body=staple.der, headers=headers)


def _error_response(status: ResponseStatus, http_status: int = 200) -> web.Response:
    return web.Response(
        status=http_status,
        body=_ERROR_BODIES[status],
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )


class Edge:
    """Turns one HTTP request into one OCSP answer and one log line."""

    def __init__(self, responder: Responder, limits: Limits, tally: Tally | None = None) -> None:
        self.responder = responder
        self.limits = limits
        self.tally = tally  # the main process's request counters (None: metrics are off)
        self.bad_requests = BadRequestLog()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        http_status = 200
        cert_id: CertId | None = None
        broken: _Broken | None = None
        if request.method not in ("GET", "POST"):
            answer = Answer(Outcome.MALFORMED, detail=f"method {request.method} not allowed")
            http_status = 405
        else:
            try:
                async with asyncio.timeout(self.limits.request_timeout):
                    der = await _request_der(request, self.limits.max_request_bytes)
                cert_id = parse_request(der)
            except MalformedRequest as exc:
                answer = Answer(Outcome.MALFORMED, detail=str(exc))
                http_status = 413 if isinstance(exc, _TooLarge) else 400
                broken = exc if isinstance(exc, _Broken) else None
            except TimeoutError:
                answer = Answer(Outcome.MALFORMED, detail="request body too slow")
                http_status = 408
            if cert_id is not None:
                try:
                    answer = await self.responder.answer(cert_id)
                except Exception:
                    log.exception("request failed", serial=f"{cert_id.key.serial:x}")
                    answer = Answer(Outcome.ERROR, detail="internal error")

        if answer.staple is not None:
            response = _staple_response(answer.staple, self.responder.clock())
        else:
            status = _STATUS_FOR.get(answer.outcome, ResponseStatus.TRY_LATER)
            response = _error_response(status, http_status)
            if http_status == 405:
                response.headers["Allow"] = "GET, POST"
        # A body cut short or broken leaves nothing on the connection that could be read on from.
        unfinished = http_status in (408, 413) or broken is not None
        if request.version < (1, 1) or not request.keep_alive or unfinished:
            response.force_close()

        seconds = time.perf_counter() - started
        if self.tally is not None:
            self.tally.answered(answer.outcome.value, seconds)
        fields = request_fields(
            method=request.method,
            answer=answer,
            latency_ms=seconds * 1000,
            peer=request.remote,
            cert_id=cert_id,
        )
        if broken is not None:
            if broken.reason:
                fields["reason"] = broken.reason
            self.bad_requests(fields)
        else:
            request_line(fields)
        return response


class _Handler(ErrorAnsweringHandler):
    """aiohttp's handler of one connection, answering what aiohttp answers with a text page (and logs
    with a traceback) as OCSP: bad HTTP with malformedRequest and one request line, a bug in a request
    handler with internalError and one error line."""

    __slots__ = ("_bad_requests", "_tally")

    def __init__(
        self, manager: web.Server, bad_requests: BadRequestLog, tally: Tally | None, **settings: Any
    ) -> None:
        super().__init__(manager, **settings)
        self._bad_requests = bad_requests
        self._tally = tally

    def bad_http(
        self, request: web.BaseRequest, exc: HttpProcessingError, kind: str, http_status: int
    ) -> web.StreamResponse:
        fields: dict[str, object] = {"outcome": str(Outcome.MALFORMED), "detail": kind}
        self._bad_requests({**fields, "reason": reason(exc), "peer": request.remote})
        self._count(Outcome.MALFORMED)
        return _error_response(ResponseStatus.MALFORMED_REQUEST, http_status)

    def failed(self, request: web.BaseRequest, exc: BaseException | None) -> web.StreamResponse:
        log.error("request failed", peer=request.remote, exc_info=exc)
        fields = {"method": request.method, "outcome": str(Outcome.ERROR), "detail": "internal error"}
        request_line({**fields, "peer": request.remote})
        self._count(Outcome.ERROR)
        return _error_response(ResponseStatus.INTERNAL_ERROR)

    def _count(self, outcome: Outcome) -> None:
        if self._tally is not None:
            self._tally.answered(outcome.value, 0.0)  # (aiohttp keeps no start time for these)


class GuardedServer(web.Server):
    """aiohttp's low-level server for every request the fast path hands over."""

    def __init__(self, edge: Edge) -> None:
        limits = edge.limits
        self._settings: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": limits.keepalive_timeout,
            "max_line_size": limits.max_request_bytes + 64,
            "max_field_size": 8190,
            "max_headers": 64,
        }
        super().__init__(edge.handle, **self._settings)
        self.bad_requests = edge.bad_requests
        self.tally = edge.tally
        self.limits = limits
        self.responder = edge.responder
        self.gate = Gate(limits)
        self.log_fields: dict[str, object] = {}
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}

    def hit(self, cert_id: CertId) -> Answer | None:
        return self.responder.hits.hit(cert_id)

    def __call__(self) -> RequestHandler:
        return _Handler(self, self.bad_requests, self.tally, loop=self._loop, **self._settings)

    def hand_over(
        self, transport: asyncio.Transport, buffer: bytes, timer: asyncio.TimerHandle | None
    ) -> None:
        """The fast path's connection, and the bytes it read, go to aiohttp's request handler."""
        handler = self()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if timer is not None:
            self._timers[handler] = timer  # keeps its place under the cap and its lifetime
        handler.data_received(buffer)

    def adopt(self, sock: socket.socket, data: bytes) -> None:
        """A connection a worker handed over: served here as if accepted here, starting with the bytes
        the worker read (fed before anything else is read from the socket)."""
        task = asyncio.ensure_future(
            asyncio.get_running_loop().connect_accepted_socket(lambda: FastPath(self, preload=data), sock)
        )
        task.add_done_callback(lambda t: _close_on_error(t, sock))

    @property
    def refused(self) -> int:
        return self.gate.refused

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            self.gate.release(timer)
        super().connection_lost(handler, exc)


def _close_on_error(task: asyncio.Future[Any], sock: socket.socket) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cannot take over a worker's connection", error=str(task.exception()))
        sock.close()
