"""The HTTP edge: parses requests, maps answers and errors to OCSP responses, owns cache headers.

Every request gets a proper OCSP response quickly: mod_ssl turns a transport failure into a fake
tryLater that it may cache and staple for an hour.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ocspproxy.log import request_line
from ocspproxy.ocsp import (
    CertId,
    MalformedRequest,
    ResponseStatus,
    decode_get_path,
    error_response,
    parse_request,
)
from ocspproxy.responder import Answer, Outcome, Responder
from ocspproxy.staple import Staple

__all__ = ["Edge", "GuardedServer", "Limits"]

log = structlog.get_logger("ocspproxy")


CONTENT_TYPE = "application/ocsp-response"

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


async def _request_der(request: web.BaseRequest, max_bytes: int) -> bytes:
    if request.method == "GET":
        return decode_get_path(request.raw_path, max_length=max_bytes)
    if request.content_length is not None and request.content_length > max_bytes:
        raise _TooLarge(f"body of {request.content_length} bytes exceeds {max_bytes}")
    body = bytearray()
    while chunk := await request.content.read(max_bytes + 1 - len(body)):
        body += chunk
        if len(body) > max_bytes:
            raise _TooLarge(f"body exceeds {max_bytes} bytes")
    return bytes(body)


def cache_headers(staple: Staple, now: float) -> dict[str, str]:
    """RFC 5019 caching headers of a staple at time now (seconds since the epoch)."""
    max_age = max(0, int(staple.next_update.timestamp() - now))
    return {
        "Last-Modified": format_datetime(staple.this_update, usegmt=True),
        "Expires": format_datetime(staple.next_update, usegmt=True),
        "ETag": staple.etag,
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
    }


def _staple_response(staple: Staple, now: datetime) -> web.Response:
    headers = {"Content-Type": CONTENT_TYPE, **cache_headers(staple, now.timestamp())}
    return web.Response(body=staple.der, headers=headers)


def _error_response(status: ResponseStatus, http_status: int = 200) -> web.Response:
    return web.Response(
        status=http_status,
        body=_ERROR_BODIES[status],
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one client may cost us. mod_ssl sends one small request per connection and closes."""

    max_request_bytes: int = 16 * 1024
    max_connections: int = 1024  # beyond this, new connections are closed at once
    request_timeout: float = 5.0  # to receive a request body
    connection_lifetime: float = 15.0  # any connection is closed after this (slow headers, idlers)
    keepalive_timeout: float = 5.0


class Edge:
    """Turns one HTTP request into one OCSP answer and one log line."""

    def __init__(self, responder: Responder, limits: Limits) -> None:
        self.responder = responder
        self.limits = limits

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        http_status = 200
        cert_id: CertId | None = None
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
            response = _staple_response(answer.staple, self.responder.staples.clock())
        else:
            status = _STATUS_FOR.get(answer.outcome, ResponseStatus.TRY_LATER)
            response = _error_response(status, http_status)
            if http_status == 405:
                response.headers["Allow"] = "GET, POST"
        if request.version < (1, 1) or not request.keep_alive or http_status in (408, 413):
            response.force_close()

        fields: dict[str, object] = {
            "method": request.method,
            "outcome": str(answer.outcome),
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "peer": request.remote,
        }
        if cert_id is not None:
            fields["serial"] = f"{cert_id.key.serial:x}"
            fields["issuer"] = answer.issuer or cert_id.key.issuer_key_hash.hex()
        if answer.staple is not None:
            fields["cert_status"] = str(answer.staple.status)
            fields["next_update"] = answer.staple.next_update.isoformat()
        if answer.detail:
            fields["detail"] = answer.detail
        request_line(fields)
        return response


class Gate:
    """The connection cap and the lifetime of every connection, applied where connections are
    accepted. aiohttp has no timeout for slowly sent headers; closing any connection older than
    ``connection_lifetime`` bounds what a slow or idle client can hold, and the cap bounds how many."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.active = 0
        self.refused = 0
        self._refusing = False

    def admit(self, transport: asyncio.Transport) -> asyncio.TimerHandle | None:
        """A timer that closes the connection at the end of its lifetime, or None (refused)."""
        if self.active >= self.limits.max_connections:
            self.refused += 1
            if not self._refusing:
                log.warning(
                    "connection limit reached; refusing new connections", limit=self.limits.max_connections
                )
                self._refusing = True
            transport.abort()
            return None
        if self._refusing:
            log.info("below the connection limit again", refused=self.refused)
            self._refusing = False
        self.active += 1
        return asyncio.get_running_loop().call_later(self.limits.connection_lifetime, transport.close)

    def release(self, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        self.active -= 1


class GuardedServer(web.Server):
    """aiohttp's low-level server for every request the fast path hands over."""

    def __init__(self, edge: Edge) -> None:
        limits = edge.limits
        super().__init__(
            edge.handle,
            access_log=None,
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_request_bytes + 64,
            max_field_size=8190,
            max_headers=64,
        )
        self.limits = limits
        self.responder = edge.responder
        self.gate = Gate(limits)
        self.log_fields: dict[str, object] = {}
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}

    def hit(self, cert_id: CertId) -> Answer | None:
        return self.responder.hit(cert_id)

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

    @property
    def refused(self) -> int:
        return self.gate.refused

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            self.gate.release(timer)
        super().connection_lost(handler, exc)
