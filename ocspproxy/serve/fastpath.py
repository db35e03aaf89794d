"""The hot path: a request like mod_ssl's for a certificate with a servable staple, answered from
pre-rendered bytes without building an HTTP request object.

Every connection is accepted here. Anything that is not such a hit (a miss, an error, odd HTTP, a
slow sender) is handed, with the bytes read so far, to the host: in the main process aiohttp's
request handler, which owns every other behaviour of the HTTP edge; in a worker process
(``ocspproxy/workers/child.py``) the main process, which gets the connection itself. Both paths log the same
one line per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from ocspproxy.core.ocsp import CertId, MalformedRequest, decode_get_path, parse_request
from ocspproxy.log import request_line
from ocspproxy.serve.answer import Answer, request_fields
from ocspproxy.serve.limits import Gate, Limits
from ocspproxy.serve.render import Rendered
from ocspproxy.serve.tally import Tally

__all__ = ["FastPath", "Host"]


class Host(Protocol):
    """What the fast path needs from the process it runs in."""

    gate: Gate
    limits: Limits
    log_fields: dict[str, object]  # added to every request line (a worker's number)
    tally: Tally | None  # the process's request counters (None: metrics are off)

    def hit(self, cert_id: CertId) -> Answer | None: ...

    def hand_over(
        self, transport: asyncio.Transport, buffer: bytes, timer: asyncio.TimerHandle | None
    ) -> None: ...


_RENDERED = Rendered()


class FastPath(asyncio.Protocol):
    def __init__(self, host: Host, *, preload: bytes = b"") -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = b""
        self.started = 0.0
        self.preload = preload  # what the client sent to the worker that handed this connection over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses
        self.timer = self.host.gate.admit(self.transport)
        if self.timer is not None and self.preload:
            preload, self.preload = self.preload, b""
            self.data_received(preload)  # before the event loop reads anything newer

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.host.gate.release(self.timer)
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if not self.buffer:
            self.started = time.perf_counter()
        self.buffer += data
        outcome = self._try_hit()
        if outcome is None:
            self._hand_over()

    def _try_hit(self) -> bool | None:
        """True: answered. False: wait for more bytes. None: not ours, hand over."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            # Wait for the rest of the head, unless these bytes start no request (a TLS ClientHello
            # waits for an answer): aiohttp's parser answers those at once.
            return False if len(buffer) < 8192 and buffer[:1].isalpha() else None
        head = buffer[:end].split(b"\r\n")
        parts = head[0].split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            return None
        method, target, version = parts
        if method == b"POST":
            length = None
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value) if value.strip().isdigit() else -1
                elif name in (b"transfer-encoding", b"expect"):
                    return None
            limit = self.host.limits.max_request_bytes
            if length is None or length < 0 or length > limit:
                return None
            have = len(buffer) - end - 4
            if have < length:
                return None  # a body still on its way: aiohttp's handler owns the body timeout
            if have > length:
                return None  # pipelined bytes: let aiohttp see them all
            der = buffer[end + 4 :]
        elif method == b"GET" and len(buffer) == end + 4:
            try:
                der = decode_get_path(target.decode("latin-1"), max_length=self.host.limits.max_request_bytes)
            except MalformedRequest:
                return None
        else:
            return None
        try:
            cert_id = parse_request(der)
        except MalformedRequest:
            return None
        answer = self.host.hit(cert_id)
        if answer is None or answer.staple is None:
            return None
        assert self.transport is not None
        self.transport.write(_RENDERED.get(answer.staple, version, time.time()))
        self.transport.close()
        peer = self.transport.get_extra_info("peername")
        seconds = time.perf_counter() - self.started
        tally = self.host.tally
        if tally is not None:
            tally.answered("hit", seconds)
        fields = request_fields(
            method=method.decode(),
            answer=answer,
            latency_ms=seconds * 1000,
            peer=peer[0] if peer else None,
            cert_id=cert_id,
        )
        request_line({**self.host.log_fields, **fields})
        return True

    def _hand_over(self) -> None:
        """Give the connection, and what it sent so far, to the host."""
        assert self.transport is not None
        timer, self.timer = self.timer, None  # the host owns its place under the cap from now on
        buffer, self.buffer = self.buffer, b""
        self.host.hand_over(self.transport, buffer, timer)
