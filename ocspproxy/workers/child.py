"""A worker process: answers cache hits on its own socket of the shared port (SO_REUSEPORT).

It holds a copy of the signature-checked staples and the issuers of the main process, sent over its
channel (``ocspproxy/workers/protocol.py``), and answers requests for those with the same hit table
(``ocspproxy/serve/hits.py``) and pre-rendered bytes as the main process's fast path. It imports only
what that needs: no aiohttp, no cache, store or upstream. Every other connection (a miss, an error,
odd HTTP, a slow sender) goes to the main process, socket and bytes read so far, so fetching,
validation, rate limits and every error answer stay in one place and a CA still sees one request per
refresh.

Started by ``ocspproxy/workers/pool.py`` as ``python -m ocspproxy.workers.child SETTINGS_JSON``;
exits when its channel closes (the main process is gone) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ocspproxy.core.ocsp import CertId, CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.log import configure_logging
from ocspproxy.loop import event_loop_runner
from ocspproxy.serve.answer import Answer
from ocspproxy.serve.fastpath import FastPath
from ocspproxy.serve.hits import HitTable, IssuerRow
from ocspproxy.serve.limits import Gate, Limits
from ocspproxy.serve.tally import Tally
from ocspproxy.workers.outbox import Outbox
from ocspproxy.workers.protocol import (
    CHUNK,
    decode_drops,
    decode_issuers,
    decode_staples,
    encode_handoff,
    encode_tally,
)

__all__ = ["Mirror", "WorkerSettings", "main"]

_RECV = CHUNK + 1024


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    index: int
    listen_fds: tuple[int, ...]
    channel_fd: int
    limits: Limits
    log_level: str
    log_format: str
    shutdown_timeout: float
    report_every: float = 0.0  # seconds between reports of its request counters; 0: none kept

    def to_json(self) -> str:
        limits = self.limits
        return json.dumps(
            {
                "index": self.index,
                "listen_fds": list(self.listen_fds),
                "channel_fd": self.channel_fd,
                "limits": [
                    limits.max_request_bytes,
                    limits.max_connections,
                    limits.request_timeout,
                    limits.connection_lifetime,
                ],
                "log": [self.log_level, self.log_format],
                "shutdown_timeout": self.shutdown_timeout,
                "report_every": self.report_every,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        data: dict[str, Any] = json.loads(text)
        size, connections, request_timeout, lifetime = data["limits"]
        return cls(
            index=int(data["index"]),
            listen_fds=tuple(int(fd) for fd in data["listen_fds"]),
            channel_fd=int(data["channel_fd"]),
            limits=Limits(
                max_request_bytes=size,
                max_connections=connections,
                request_timeout=request_timeout,
                connection_lifetime=lifetime,
            ),
            log_level=data["log"][0],
            log_format=data["log"][1],
            shutdown_timeout=float(data["shutdown_timeout"]),
            report_every=float(data.get("report_every", 0.0)),
        )


class Mirror:
    """The worker's copy of what the main process would answer as a hit: the issuers and the staples
    of the hit table (``IssuerLookup``, ``StapleLookup``)."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.issuers: dict[tuple[str, bytes], IssuerRow] = {}
        self.staples: dict[CertKey, Staple] = {}

    def apply(self, message: bytes) -> None:
        kind, body = message[:1], message[1:]
        if kind == b"S":
            for staple in decode_staples(body):
                self.staples[staple.key] = staple
        elif kind == b"D":
            for key in decode_drops(body):
                self.staples.pop(key, None)
        elif kind == b"I":
            self.issuers = {(r.alg, r.key_hash): r for r in decode_issuers(body)}
        else:
            raise ValueError(f"unknown message {kind!r}")

    def issuer_name(self, alg: str, key_hash: bytes, name_hash: bytes) -> str | None:
        issuer = self.issuers.get((alg, key_hash))
        return None if issuer is None or issuer.name_hash != name_hash else issuer.name

    def servable(self, key: CertKey) -> Staple | None:
        staple = self.staples.get(key)
        if staple is None:
            return None
        if not staple.servable(self.clock()):
            del self.staples[key]  # never servable again; the main process sends a newer one
            return None
        return staple

    def sweep(self, now: datetime) -> int:
        """Forget staples past nextUpdate that no request came for (a certificate taken out of the
        configuration is not refreshed again). Returns how many."""
        gone = [key for key, staple in self.staples.items() if not staple.servable(now)]
        for key in gone:
            del self.staples[key]
        return len(gone)


class Worker:
    """The host of the worker's fast path: hits from the mirror, the rest to the main process."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.gate = Gate(settings.limits)
        self.log_fields: dict[str, object] = {"worker": settings.index}
        self.tally = Tally() if settings.report_every > 0 else None
        self.mirror = Mirror()
        self.hits = HitTable(self.mirror, self.mirror)
        self.channel = socket.socket(fileno=settings.channel_fd)
        self.channel.setblocking(False)
        self._outbox = Outbox(self.channel, on_error=self._close_channel)
        self._reported_refused = 0
        self.closed = asyncio.Event()

    def hit(self, cert_id: CertId) -> Answer | None:
        return self.hits.hit(cert_id)

    def hand_over(
        self, transport: asyncio.Transport, buffer: bytes, timer: asyncio.TimerHandle | None
    ) -> None:
        """Send the client's socket and what it sent so far to the main process; forget it here."""
        if timer is not None:
            self.gate.release(timer)  # the connection counts against the main process's cap now
        sock = transport.get_extra_info("socket")
        if self.closed.is_set() or sock is None:
            transport.abort()
            return
        transport.pause_reading()  # whatever the client sends from now on, the main process reads
        fd = os.dup(sock.fileno())
        first, *rest = encode_handoff(buffer)
        transport.abort()  # closes this process's descriptor only: the duplicate keeps the connection
        self._outbox.put(first, fd)
        for part in rest:
            self._outbox.put(part)

    def report(self) -> None:
        """Send the request counters to the main process, when they changed."""
        tally = self.tally
        if tally is None or self.closed.is_set():
            return
        if tally.changed or self.gate.refused != self._reported_refused:
            self._reported_refused = self.gate.refused
            self._outbox.put(encode_tally(tally.snapshot(self.gate.refused)))

    def on_readable(self) -> None:
        while True:
            try:
                message = self.channel.recv(_RECV)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self._close_channel()  # the main process is gone: nothing left to serve for
                return
            self.mirror.apply(message)

    def _close_channel(self) -> None:
        if self.closed.is_set():
            return
        asyncio.get_running_loop().remove_reader(self.channel.fileno())
        self._outbox.close()
        self.channel.close()
        self.closed.set()


async def serve(settings: WorkerSettings) -> int:
    """Serve until the channel closes. SIGTERM (systemd sends it to every process of the unit) stops
    the accepting, then waits a while for the main process to close the channel: a worker that left
    first would be reported as having died."""
    loop = asyncio.get_running_loop()
    worker = Worker(settings)
    loop.add_reader(worker.channel.fileno(), worker.on_readable)
    terminate = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminate.set)
    servers = [
        await loop.create_server(lambda: FastPath(worker), sock=socket.socket(fileno=fd))
        for fd in settings.listen_fds
    ]
    sweeper = asyncio.ensure_future(_sweep(worker.mirror))
    reporter = asyncio.ensure_future(_report(worker, settings.report_every))
    await asyncio.wait(
        [asyncio.ensure_future(worker.closed.wait()), asyncio.ensure_future(terminate.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    sweeper.cancel()
    reporter.cancel()
    for server in servers:
        server.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.shutdown_timeout + 1):
            await worker.closed.wait()
            # Connections already accepted finish (a hit is answered at once).
            while worker.gate.active:  # noqa: ASYNC110 - a counter kept by the connections' callbacks
                await asyncio.sleep(0.01)
    return 0


async def _sweep(mirror: Mirror, every: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every)
        mirror.sweep(datetime.now(UTC))


async def _report(worker: Worker, every: float) -> None:
    if worker.tally is None:
        return
    while True:
        await asyncio.sleep(every)
        worker.report()


def main(argv: list[str]) -> int:
    settings = WorkerSettings.from_json(argv[0])
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return event_loop_runner()(serve(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
