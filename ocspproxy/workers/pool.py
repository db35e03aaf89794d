"""The main process's side of the worker processes (``workers`` > 1): start them, keep their copy of
the staples and issuers current, take the connections they hand over, start them again if they die.

Each worker gets its own listening socket bound to the main listener's address with SO_REUSEPORT, so
the kernel spreads new connections over all processes. The sockets are made here and passed down:
a worker never binds anything itself. The main process keeps no copy of a worker's socket, so when a
worker dies its socket leaves the group and no connection waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from ocspproxy.cache.events import Listener
from ocspproxy.cache.memory import Cache
from ocspproxy.certs.catalog import Catalog
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.serve.hits import IssuerRow
from ocspproxy.serve.limits import Limits
from ocspproxy.serve.tally import TallySnapshot
from ocspproxy.workers.child import WorkerSettings
from ocspproxy.workers.outbox import Outbox
from ocspproxy.workers.protocol import (
    CHUNK,
    decode_handoff,
    decode_tally,
    encode_drops,
    encode_issuers,
    encode_staples,
)

__all__ = ["PoolSettings", "WorkerPool"]

log = structlog.get_logger("ocspproxy")

_RECV = CHUNK + 1024
_RESTART_INITIAL = 0.5
_RESTART_MAX = 30.0

Adopt = Callable[[socket.socket, bytes], None]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    count: int  # worker processes besides the main one
    addresses: tuple[tuple[int, tuple[str, int]], ...]  # (family, address) of each main listener
    limits: Limits
    log_level: str
    log_format: str
    shutdown_timeout: float
    report_every: float = 0.0  # seconds between the workers' reports of their counters; 0: none


@dataclass
class _Handoff:
    fd: int
    total: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class _Worker:
    """One worker process and the main process's end of its channel."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: socket.socket | None = None
        self.outbox: Outbox | None = None
        self.handoff: _Handoff | None = None
        self.started = 0.0
        self.restart_delay = _RESTART_INITIAL
        self.tally = TallySnapshot()  # as the running process last reported it
        self.earlier = TallySnapshot()  # its earlier processes' (counters never go back)

    def start(self) -> None:
        s = self.pool.settings
        listeners: list[socket.socket] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for family, address in s.addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(1024)  # connections wait here until the worker runs
            settings = WorkerSettings(
                index=self.index,
                listen_fds=tuple(sock.fileno() for sock in listeners),
                channel_fd=theirs.fileno(),
                limits=s.limits,
                log_level=s.log_level,
                log_format=s.log_format,
                shutdown_timeout=s.shutdown_timeout,
                report_every=s.report_every,
            )
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ocspproxy.workers.child", settings.to_json()],
                pass_fds=(*settings.listen_fds, settings.channel_fd),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            for sock in listeners:
                sock.close()  # the worker's own now: see the module's docstring
        ours.setblocking(False)
        self.channel = ours
        outbox = self.outbox = Outbox(ours, on_error=self.lost)
        self.started = asyncio.get_running_loop().time()
        asyncio.get_running_loop().add_reader(ours.fileno(), self.on_readable)
        issuers, staples = issuer_rows(self.pool.catalog), self.pool.cache.verified()  # the full copy
        outbox.put(encode_issuers(issuers))  # (a closed outbox, should this fail, ignores the rest)
        outbox.put_lazily(encode_staples(staples))  # generated as the channel takes it
        log.info("worker started", worker=self.index, pid=self.proc.pid, staples=len(staples))

    def send(self, messages: list[bytes]) -> None:
        if self.outbox is not None:
            for message in messages:
                self.outbox.put(message)

    def on_readable(self) -> None:
        assert self.channel is not None
        while self.channel is not None:
            try:
                message, fds, _flags, _addr = socket.recv_fds(self.channel, _RECV, 1)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message:
                for fd in fds:
                    os.close(fd)
                self.lost()
                return
            self.receive(message, fds)

    def receive(self, message: bytes, fds: list[int]) -> None:
        kind, body = message[:1], message[1:]
        if kind == b"H" and len(fds) == 1:
            self.drop_handoff()
            total, first = decode_handoff(body)
            self.handoff = _Handoff(fd=fds[0], total=total)
            self.add_part(first)
        elif kind == b"C" and not fds and self.handoff is not None:
            self.add_part(body)
        elif kind == b"T" and not fds:
            try:
                self.tally = decode_tally(body)
            except ValueError as exc:
                log.error("worker sent an unreadable tally", worker=self.index, error=str(exc))
        else:
            for fd in fds:
                os.close(fd)
            log.error("worker sent an unexpected message", worker=self.index, kind=kind.decode("latin-1"))

    def add_part(self, part: bytes) -> None:
        handoff = self.handoff
        assert handoff is not None
        handoff.parts.append(part)
        handoff.size += len(part)
        if handoff.size >= handoff.total:
            self.handoff = None
            try:
                sock = socket.socket(fileno=handoff.fd)
            except OSError:
                os.close(handoff.fd)
                return
            self.pool.adopted += 1
            self.pool.adopt(sock, b"".join(handoff.parts))

    def drop_handoff(self) -> None:
        if self.handoff is not None:
            os.close(self.handoff.fd)
            self.handoff = None

    def lost(self) -> None:
        """The channel closed: the worker exited (or is exiting). Start another unless stopping."""
        loop = asyncio.get_running_loop()
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self.channel is not None:
            loop.remove_reader(self.channel.fileno())
            self.channel.close()
            self.channel = None
        self.drop_handoff()
        self.earlier.add(self.tally)
        self.tally = TallySnapshot()
        if self.pool.stopping:
            return
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()  # alive without its channel: of no use, and never waited for
            code = self.proc.wait()
        if loop.time() - self.started > 60:
            self.restart_delay = _RESTART_INITIAL  # it ran a good while: not a crash loop
        log.error(
            "worker exited; starting another",
            worker=self.index,
            exit_code=code,
            in_seconds=self.restart_delay,
        )
        self.pool.restart_later(self, self.restart_delay)
        self.restart_delay = min(self.restart_delay * 2, _RESTART_MAX)

    async def stop(self, grace: float) -> None:
        proc = self.proc
        if self.channel is not None:
            self.lost()  # closing our end tells the worker to finish and exit
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while proc.poll() is None:  # noqa: ASYNC110 - Popen has nothing to await
                    await asyncio.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def issuer_rows(catalog: Catalog) -> list[IssuerRow]:
    """The issuers a worker may answer for, one row per CertID hash algorithm."""
    return [
        IssuerRow(alg=alg, key_hash=key_hash, name_hash=issuer.name_hashes[alg], name=issuer.name)
        for (alg, key_hash), issuer in catalog.inventory.issuers.items()
    ]


class WorkerPool(Listener):
    """Subscribed to the door's events: a staple stored or dropped reaches every worker's copy, in
    batches. A new worker gets the full copy (the catalog's issuers, the cache's checked staples)."""

    def __init__(self, settings: PoolSettings, *, catalog: Catalog, cache: Cache, adopt: Adopt) -> None:
        self.settings = settings
        self.catalog = catalog
        self.cache = cache
        self.adopt = adopt
        self.stopping = False
        self.adopted = 0  # connections handed over by workers
        self.workers = [_Worker(self, i + 1) for i in range(settings.count)]
        self._pending: dict[CertKey, Staple | None] = {}
        self._restarts: set[asyncio.TimerHandle] = set()

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def restart_later(self, worker: _Worker, delay: float) -> None:
        def restart() -> None:
            self._restarts.discard(handle)
            if self.stopping:
                return
            try:
                worker.start()
            except OSError as exc:
                log.error("cannot start worker", worker=worker.index, error=str(exc))
                self.restart_later(worker, worker.restart_delay)
                worker.restart_delay = min(worker.restart_delay * 2, _RESTART_MAX)

        handle = asyncio.get_running_loop().call_later(delay, restart)
        self._restarts.add(handle)

    def stored(self, staple: Staple) -> None:
        self._changed(staple.key, staple)

    def dropped(self, key: CertKey) -> None:
        self._changed(key, None)

    def _changed(self, key: CertKey, staple: Staple | None) -> None:
        """Sent in batches once the current callback is done."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._send_pending)
        self._pending[key] = staple

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, {}
        # Encoded once for all workers.
        messages = list(encode_staples(s for s in pending.values() if s is not None))
        messages += encode_drops(k for k, s in pending.items() if s is None)
        for worker in self.workers:
            worker.send(messages)

    def issuers_changed(self) -> None:
        """The catalog was replaced (a reload, the full load): send every worker the issuers."""
        message = encode_issuers(issuer_rows(self.catalog))
        for worker in self.workers:
            worker.send([message])

    def tallies(self) -> dict[int, TallySnapshot]:
        """Each worker's request counters (by its number), over all its processes so far."""
        out = {}
        for worker in self.workers:
            total = TallySnapshot()
            total.add(worker.earlier)
            total.add(worker.tally)
            out[worker.index] = total
        return out

    def stop_soon(self) -> None:
        """The service is stopping: a worker that exits from now on is not started again."""
        self.stopping = True

    async def stop(self) -> None:
        self.stopping = True
        for handle in self._restarts:
            handle.cancel()
        self._restarts.clear()
        await asyncio.gather(*(w.stop(self.settings.shutdown_timeout) for w in self.workers))
