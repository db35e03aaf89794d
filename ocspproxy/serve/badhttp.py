"""Bad HTTP from clients: what kind it is, what to answer, and its request line.

aiohttp's parser refuses a request line or header over its limit, too many headers, garbage, a TLS
ClientHello on this plain port, a broken chunked body. Such a client is answered malformedRequest
(``server.py``) and logged with the project's one request line, ``outcome=malformed`` and a ``detail``
naming the kind; when a kind repeats (a scanner, a flood), only its first line per interval and then
a count (``ocspproxy.log.Repeats``).
"""

from __future__ import annotations

import asyncio
import re

import structlog
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    PayloadEncodingError,
)

from ocspproxy.log import Repeats, request_line

__all__ = ["BadRequestLog", "classify", "reason"]

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
