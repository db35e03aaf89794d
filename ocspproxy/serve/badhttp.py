"""Bad HTTP from clients: what kind it is, what to answer, and its request line.

aiohttp's parser refuses a request line or header over its limit, too many headers, garbage, a TLS
ClientHello on this plain port, a broken chunked body. Such a client is answered malformedRequest
(``edge.py``) and logged with the project's one request line, ``outcome=malformed`` and a ``detail``
naming the kind; when a kind repeats (a scanner, a flood), only its first line per interval and then
a count (``ocspproxy.log.Repeats``).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from ocspproxy.log import Repeats, request_line

__all__ = ["BadRequestLog", "ErrorAnsweringHandler", "classify", "reason"]

log = structlog.get_logger("ocspproxy")

# aiohttp quotes the client's bytes after its message: after a blank line (llhttp's errors) or inline.
_QUOTED = re.compile(r"\n\n|: (?:b'|b\"|bytearray\()")
_FRAMING = ("chunk", "content-length", "transfer-encoding")


def classify(exc: HttpProcessingError, *, max_field_size: int) -> tuple[str, int]:
    """The kind of bad request (the log's ``detail``) and the HTTP status to answer it with."""
    if isinstance(exc, LineTooLong):
        # The parser says neither which line nor which part; its limit tells them apart.
        if exc.args[1] == max_field_size:
            return "header too long", 431
        return "request line too long", 414
    if exc.message.startswith("Too many headers"):
        return "too many headers", 431
    if isinstance(exc, BadHttpMethod):
        return ("TLS on the plain HTTP port" if "HTTPS" in exc.message else "invalid method"), 400
    if isinstance(exc, BadStatusLine):
        return "invalid request line", 400
    # The parsers raise plain BadHttpMessage for most else; their messages tell the rest apart.
    message = exc.message.lower()
    if isinstance(exc, PayloadEncodingError) or any(word in message for word in _FRAMING):
        return "invalid body framing", 400
    if isinstance(exc, InvalidHeader) or "header" in message:
        return "invalid header", 400
    return "invalid HTTP", 400


def reason(exc: BaseException) -> str:
    """aiohttp's message for exc, on one line, without the client's bytes it quotes."""
    message = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    return " ".join(_QUOTED.split(message, maxsplit=1)[0].split()).rstrip(":")[:120]


class BadRequestLog:
    """Logs bad requests: the request line of the first of each kind per interval, then the count
    of the others once the interval ends (event ``repeated requests``)."""

    def __init__(self, repeats: Repeats | None = None) -> None:
        self.repeats = repeats or Repeats()
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, fields: dict[str, object]) -> None:
        """fields: a request line with ``outcome=malformed`` and a ``detail`` naming the kind."""
        if self.repeats.note(str(fields["detail"])):
            request_line(fields)
        self._schedule()

    def _summarise(self) -> None:
        self._timer = None
        for kind, count in self.repeats.summaries():
            log.info(
                "repeated requests",
                outcome="malformed",
                detail=kind,
                count=count,
                interval_s=self.repeats.interval,
            )
        self._schedule()

    def _schedule(self) -> None:
        delay = self.repeats.next_summary()
        if delay is None:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if self._timer.when() <= loop.time() + delay:
                return
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._summarise)


class ErrorAnsweringHandler(RequestHandler):
    """aiohttp's handler of one connection, whose errors each listener answers its own way
    (``bad_http``, ``failed``) instead of aiohttp's text page, and logs as one line: a client can
    send bad HTTP at will, so it never logs a traceback."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("a response is sent already")
        if isinstance(exc, HttpProcessingError):
            kind, http_status = classify(exc, max_field_size=self.max_field_size)
            response = self.bad_http(request, exc, kind, http_status)
        else:  # our bug (status 500), or a handler that timed out (504, no exc)
            response = self.failed(request, exc)
        response.force_close()
        return response

    def bad_http(
        self, request: web.BaseRequest, exc: HttpProcessingError, kind: str, http_status: int
    ) -> web.StreamResponse:
        raise NotImplementedError

    def failed(self, request: web.BaseRequest, exc: BaseException | None) -> web.StreamResponse:
        raise NotImplementedError

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After an answer aiohttp reads what is left of the body; a broken one is reported as an
        # "Unhandled exception", yet it is the client's doing and its request was logged already.
        if isinstance(kw.get("exc_info"), RequestPayloadError | HttpProcessingError | ConnectionError):
            return
        super().log_exception(*args, **kw)
