"""The HTTP edge: parses requests, maps answers and errors to OCSP responses, owns cache headers.

Every request gets a proper OCSP response quickly: mod_ssl turns a transport failure into a fake
tryLater that it may cache and staple for an hour.
"""

from __future__ import annotations

import time
from datetime import datetime
from email.utils import format_datetime

import structlog
from aiohttp import web

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

__all__ = ["RESPONDER", "make_app"]

log = structlog.get_logger("ocspproxy")

RESPONDER = web.AppKey("responder", Responder)
MAX_REQUEST_BYTES = web.AppKey("max_request_bytes", int)

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


async def _request_der(request: web.Request, max_bytes: int) -> bytes:
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


def _staple_response(staple: Staple, now: datetime) -> web.Response:
    max_age = max(0, int((staple.next_update - now).total_seconds()))
    return web.Response(
        body=staple.der,
        headers={
            "Content-Type": CONTENT_TYPE,
            "Last-Modified": format_datetime(staple.this_update, usegmt=True),
            "Expires": format_datetime(staple.next_update, usegmt=True),
            "ETag": staple.etag,
            "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        },
    )


def _error_response(status: ResponseStatus, http_status: int = 200) -> web.Response:
    return web.Response(
        status=http_status,
        body=_ERROR_BODIES[status],
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )


async def handle(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    responder = request.app[RESPONDER]
    http_status = 200
    cert_id: CertId | None = None
    if request.method not in ("GET", "POST"):
        answer = Answer(Outcome.MALFORMED, detail=f"method {request.method} not allowed")
        http_status = 405
    else:
        try:
            der = await _request_der(request, request.app[MAX_REQUEST_BYTES])
            cert_id = parse_request(der)
        except MalformedRequest as exc:
            answer = Answer(Outcome.MALFORMED, detail=str(exc))
            http_status = 413 if isinstance(exc, _TooLarge) else 400
        if cert_id is not None:
            try:
                answer = await responder.answer(cert_id)
            except Exception:
                log.exception("request failed", serial=f"{cert_id.key.serial:x}")
                answer = Answer(Outcome.ERROR, detail="internal error")

    if answer.staple is not None:
        response = _staple_response(answer.staple, responder.staples.clock())
    else:
        response = _error_response(_STATUS_FOR.get(answer.outcome, ResponseStatus.TRY_LATER), http_status)
        if http_status == 405:
            response.headers["Allow"] = "GET, POST"
    if request.version < (1, 1) or not request.keep_alive:
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
    log.info("request", **fields)
    return response


def make_app(*, responder: Responder, max_request_bytes: int) -> web.Application:
    # The body is read by hand with our own cap, so aiohttp's own limit only needs to be above it.
    app = web.Application(client_max_size=max_request_bytes + 1)
    app[RESPONDER] = responder
    app[MAX_REQUEST_BYTES] = max_request_bytes
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
