"""Wires the pieces together and owns the lifecycle: load, listen, refresh, reload, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import glob
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from cryptography import x509

from ocspproxy.apache import ApacheConfig, ApacheConfigError, read_apache_config
from ocspproxy.certindex import CertIndex, read_index, write_index
from ocspproxy.channel import IssuerRow
from ocspproxy.config import Config, ConfigError
from ocspproxy.fastpath import FastPath
from ocspproxy.inventory import CertSource, Inventory, build_steps, early_inventory
from ocspproxy.ocsp import CertKey
from ocspproxy.responder import Responder
from ocspproxy.scheduler import Job, Scheduler
from ocspproxy.server import Edge, GuardedServer, Limits
from ocspproxy.staple import CertStatus, Staple
from ocspproxy.staples import Staples
from ocspproxy.steps import Steps, run_in_slices, run_steps
from ocspproxy.store import FileStore
from ocspproxy.upstream import Fetcher
from ocspproxy.watch import DirectoryWatch
from ocspproxy.workers import PoolSettings, WorkerPool

__all__ = ["Daemon", "Sources", "certificate_sources", "read_inventory", "utcnow"]

log = structlog.get_logger("ocspproxy")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Sources(NamedTuple):
    """Where the certificates to keep stapled come from, as the configuration names them."""

    certs: list[CertSource]
    apache_files: tuple[Path, ...]  # Apache's configuration files read
    # The fields of a warning when the configuration names no certificate: what was read and why
    # nothing was found. None when it names some.
    unstapled: dict[str, Any] | None


def certificate_sources(config: Config) -> Sources:
    """The certificate files to keep stapled, from --cert and Apache's config, and the Apache files
    read. Raises ConfigError when Apache's configuration cannot be read at all."""
    sources = [CertSource(path=p) for p in config.certs]
    if config.apache_config is None:
        return Sources(sources, (), _unstapled(config, None))
    try:
        apache = read_apache_config(config.apache_config)
    except (ApacheConfigError, OSError) as exc:
        raise ConfigError("apache_config", str(exc)) from exc
    seen: set[Path] = set()
    for site in apache.sites:
        if site.certificate_file in seen:
            continue  # several vhosts may share one certificate
        seen.add(site.certificate_file)
        sources.append(
            CertSource(
                path=str(site.certificate_file),
                chain_file=site.chain_file,
                ca_file=site.ca_certificate_file,
                ca_path=site.ca_certificate_path,
                named_by="SSLCertificateFile",
            )
        )
    return Sources(sources, apache.files_read, _unstapled(config, apache))


def _unstapled(config: Config, apache: ApacheConfig | None) -> dict[str, Any] | None:
    """The warning when nothing names a certificate (a service with nothing to do says why), or
    when Apache's configuration, given, names none: then with the directives that look misspelt."""
    if apache is None:
        if config.certs:
            return None
        return {
            "event": "no certificates to keep stapled",
            "reason": "no --cert or certs, no --apache-config or apache_config given",
        }
    if apache.sites:
        return None
    event = (
        "no certificates from Apache's configuration" if config.certs else "no certificates to keep stapled"
    )
    fields: dict[str, Any] = {"event": event, "reason": apache.no_sites()}
    if apache.misspellings:
        fields["misspelt"] = [str(m) for m in apache.misspellings]
    return fields


def read_inventory(config: Config) -> tuple[Inventory, Sources]:
    """Certificates from --cert and from Apache's config. Returns the inventory and where they came
    from (the Apache files read among it).

    Unchanged certificate files are known from the index kept in the state directory (only stat-ed),
    which is updated afterwards; an index that cannot be read or written costs only speed.
    Raises ConfigError when Apache's configuration cannot be read at all.
    """
    sources = certificate_sources(config)
    index = read_index(config.state_dir)
    inventory = run_steps(_inventory_steps(config, sources.certs, index))
    write_index(config.state_dir, index)
    return inventory, sources


def _inventory_steps(config: Config, sources: list[CertSource], index: CertIndex) -> Steps[Inventory]:
    return build_steps(sources, config.issuers, dict(config.issuer_urls), index=index)


_STATS_PER_SECOND = 5000
_NOTIFIED_POLL = 300.0
_RELOADABLE = ("certs", "issuers", "apache_config", "issuer_urls")


def _apply_reloadable(current: Config, new: Config) -> Config:
    changed = [f.name for f in fields(Config) if getattr(current, f.name) != getattr(new, f.name)]
    later = [name for name in changed if name not in _RELOADABLE]
    if later:
        log.warning("configuration changes that take effect after a restart", keys=later)
    return replace(current, **{name: getattr(new, name) for name in _RELOADABLE})


def _stats(paths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(path, mtime_ns, size) of each file; -1, -1 for one that cannot be stat-ed."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((path, -1, -1))
    return out


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Start-up makes a million objects and frees almost none: the cyclic collector would walk
    them again and again for nothing (a third of start-up with 100,000 certificates)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _notify(state: str) -> None:
    """sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.connect(address)
        sock.sendall(state.encode())


def _close_on_error(task: asyncio.Future[Any], sock: socket.socket) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cannot take over a worker's connection", error=str(task.exception()))
        sock.close()


class Daemon:
    def __init__(self, config: Config, *, reread: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reread = reread  # reads the configuration again (file + the same flags) on reload
        # The store first: it creates the state directory, where the certificate index is kept.
        self._store = store = FileStore(config.state_dir)  # never fails: an unusable one is logged, retried
        # What the configuration names is read now (a broken Apache config stops the start); the
        # certificate files themselves after the listener opens (see run). Until then the
        # inventory holds the issuers known without them.
        self._sources, self._apache_files, self._unstapled = certificate_sources(config)
        # No index to read in a directory reported unusable (said once, by the store).
        self._index = read_index(config.state_dir) if store.usable else CertIndex()
        self.inventory = early_inventory(self._sources, config.issuers, dict(config.issuer_urls), self._index)
        self.fetcher = Fetcher(config.upstream)
        self.staples = Staples(
            store=store,
            fetcher=self.fetcher,
            clock=utcnow,
            skew=timedelta(seconds=config.skew),
            without_next_update=timedelta(seconds=config.validity_without_next_update),
            negative_ttl=config.negative_ttl,
            memory_max=config.memory_max_entries,
        )
        self.scheduler = Scheduler(
            staples=self.staples, resolve=self._resolve, policy=config.refresh, clock=utcnow
        )
        self.loaded = asyncio.Event()  # set once every certificate and stored staple is loaded
        self.responder = Responder(
            staples=self.staples,
            scheduler=self.scheduler,
            inventory=lambda: self.inventory,
            budget=config.answer_budget,
            max_tracked_requests=config.max_tracked_requests,
            fetch_rate=config.fetch_rate_per_issuer,
            fetch_burst=config.fetch_burst_per_issuer,
            loaded=self.loaded,
        )
        self.staples.dropped = self.scheduler.due_now
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()  # set once the listener is open
        self.address: tuple[str, int] | None = None
        self.pool: WorkerPool | None = None
        self._watch_snapshot: tuple[tuple[str, int, int], ...] = ()  # set by the full load
        self._tasks: list[asyncio.Task[Any]] = []
        self._load_failed = False

    def _resolve(self, key: CertKey) -> Job | None:
        issuer = self.inventory.issuer_for_key(key)
        if issuer is None:
            return None
        url = self.inventory.upstream_for(key, issuer)
        if url is None:
            return None
        return Job(
            issuer_cert=issuer.cert,
            name_hash=issuer.name_hashes[key.alg],
            url=url,
            configured=key in self.inventory.targets,
        )

    def _report(self, inventory: Inventory) -> None:
        """At start-up and on each reload (a watch pass reloads only when a file changed)."""
        if self._unstapled is not None:
            log.warning(**self._unstapled)
        for problem in inventory.problems:
            log.warning("inventory", problem=problem)
        log.info(
            "inventory loaded",
            certificates=len(inventory.targets),
            issuers=len({id(i) for i in inventory.issuers.values()}),
            problems=len(inventory.problems),
        )

    def _track_targets(self) -> None:
        self.scheduler.track_all(
            key for key, target in self.inventory.targets.items() if target.url is not None
        )

    async def _track_targets_soon(self, batch: int = 5000) -> None:
        """At start-up, once the listener is open: stored staples are served meanwhile, and
        scheduling 100,000 refreshes would hold it closed for a second. A batch at a time, so
        requests are answered in between; a reload meanwhile tracks what it needs itself."""
        keys = [key for key, target in self.inventory.targets.items() if target.url is not None]
        for start in range(0, len(keys), batch):
            targets = self.inventory.targets  # a reload may have replaced the inventory
            self.scheduler.track_all(key for key in keys[start : start + batch] if key in targets)
            await asyncio.sleep(0)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        with _without_cycle_collection():
            stored = self.staples.open_snapshot(self._issuer_cert)
        await self.fetcher.start()
        limits = Limits(
            max_request_bytes=self.config.max_request_bytes,
            max_connections=self.config.max_connections,
            request_timeout=self.config.request_timeout,
            connection_lifetime=self.config.connection_lifetime,
        )
        self.server = server = GuardedServer(Edge(self.responder, limits))
        try:
            # Every connection starts on the fast path, which hands all but plain hits to aiohttp.
            listener = await loop.create_server(
                lambda: FastPath(server),
                self.config.listen_host,
                self.config.listen_port,
                reuse_address=True,
                reuse_port=self.config.workers > 1,  # the workers' sockets join this port
                backlog=1024,
            )
        except OSError as exc:
            await self.fetcher.close()
            log.error(
                "cannot listen",
                address=f"{self.config.listen_host}:{self.config.listen_port}",
                error=str(exc),
            )
            return 1
        self.address = listener.sockets[0].getsockname()[:2]
        if self.config.workers > 1:
            self.pool = self._start_workers(limits, [(s.family, s.getsockname()) for s in listener.sockets])
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        tasks = self._tasks = [
            asyncio.create_task(self.scheduler.run()),
            asyncio.create_task(self.staples.keep_snapshot()),
        ]
        load = asyncio.create_task(self._load())
        load.add_done_callback(self._load_done)
        tasks.append(load)
        _notify("READY=1")
        self.ready.set()
        log.info(
            "listening",
            address=f"{self.address[0]}:{self.address[1]}",
            issuers=len({id(i) for i in self.inventory.issuers.values()}),
            snapshot=stored,
        )
        await self._stop.wait()
        log.info("shutting down")
        tasks = self._tasks  # with those the full load started
        if self.pool is not None:
            self.pool.stop_soon()
        _notify("STOPPING=1")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.pool is not None:
            await self.pool.stop()
        listener.close()
        server.pre_shutdown()
        await server.shutdown(self.config.shutdown_timeout)
        await self.staples.close()
        await self.fetcher.close()
        return 1 if self._load_failed else 0

    async def _load(self) -> None:
        """After the listener opened: read every certificate file, then hold the stored staples,
        check their signatures and schedule refreshes. A slice at a time in the event loop:
        requests are answered in between (see ``Responder``)."""
        with _without_cycle_collection():
            config = self.config
            inventory = await run_in_slices(_inventory_steps(config, self._sources, self._index))
            if self._store.usable:
                await asyncio.to_thread(write_index, config.state_dir, self._index)
            self._index = CertIndex()  # its rows are not needed again: a reload reads the written one
            self.inventory = inventory
            self._report(inventory)
            if self.pool is not None:
                self.pool.issuers(self._issuer_rows())
            loaded, skipped = await run_in_slices(self.staples.load_steps())
            log.info("store loaded", loaded=loaded, skipped=skipped, state_dir=str(config.state_dir))
            self._alert_revoked(inventory)
            self._watch_snapshot = self._first_snapshot()
        self.loaded.set()
        self._tasks += [
            asyncio.create_task(self._track_targets_soon()),
            asyncio.create_task(self._watch()),
            asyncio.create_task(self.staples.verify_stored()),
        ]

    def _alert_revoked(self, inventory: Inventory) -> None:
        """A stored revoked staple of a configured certificate: the same line as when it was fetched,
        once per start, so a restart does not hide that Apache serves a revoked certificate."""
        with self.staples.batch():
            for key, target in inventory.targets.items():
                staple = self.staples.held_until(key)
                if staple is not None and staple.status is CertStatus.REVOKED:
                    log.critical(
                        "certificate revoked",
                        serial=f"{key.serial:x}",
                        path=target.path,
                        subject=target.subject,
                        revoked_at=staple.revocation_time.isoformat() if staple.revocation_time else None,
                        stored=True,
                    )

    def _load_done(self, task: asyncio.Task[None]) -> None:
        """The service is useless without its certificates: a load that failed stops it (exit 1)."""
        if task.cancelled() or task.exception() is None:
            return
        self._load_failed = True
        log.error("loading certificates and stored staples failed", error=repr(task.exception()))
        self._stop.set()

    def _start_workers(self, limits: Limits, addresses: list[tuple[int, tuple[str, int]]]) -> WorkerPool:
        settings = PoolSettings(
            count=self.config.workers - 1,
            addresses=tuple(addresses),
            limits=limits,
            log_level=self.config.log_level,
            log_format=self.config.log_format,
            shutdown_timeout=self.config.shutdown_timeout,
        )
        pool = WorkerPool(settings, snapshot=self._worker_snapshot, adopt=self._adopt)
        self.staples.changed = pool.changed
        pool.start()
        return pool

    def _worker_snapshot(self) -> tuple[list[IssuerRow], list[Staple]]:
        return self._issuer_rows(), self.staples.verified()

    def _issuer_rows(self) -> list[IssuerRow]:
        return [
            IssuerRow(alg=alg, key_hash=key_hash, name_hash=issuer.name_hashes[alg], name=issuer.name)
            for (alg, key_hash), issuer in self.inventory.issuers.items()
        ]

    def _adopt(self, sock: socket.socket, data: bytes) -> None:
        """A connection a worker handed over: served here as if accepted here, starting with the bytes
        the worker read (fed before anything else is read from the socket)."""
        task = asyncio.ensure_future(
            asyncio.get_running_loop().connect_accepted_socket(
                lambda: FastPath(self.server, preload=data), sock
            )
        )
        task.add_done_callback(lambda t: _close_on_error(t, sock))

    def _issuer_cert(self, key: CertKey) -> x509.Certificate | None:
        issuer = self.inventory.issuer_for_key(key)
        return None if issuer is None else issuer.cert

    async def reload(self, reason: str) -> None:
        """Re-read the configuration and the certificates; on any error keep what works now.

        Certificate settings (certs, issuers, apache_config, [[issuer]]) apply at once; other keys
        take effect at the next restart. A configured certificate file that cannot be read keeps its
        previous certificate (a renewal half-way through must not drop a staple).
        """
        await self.loaded.wait()  # a reload compares with the full inventory
        try:
            config = await asyncio.to_thread(self._reread) if self._reread else self.config
            inventory, sources = await asyncio.to_thread(read_inventory, config)
        except ConfigError as exc:
            log.error("reload failed; keeping the previous configuration", reason=reason, error=str(exc))
            return
        self.config = _apply_reloadable(self.config, config)
        for key, target in self.inventory.targets.items():
            if target.path in inventory.unreadable and key not in inventory.targets:
                log.warning(
                    "certificate file unreadable; keeping its previous certificate", path=str(target.path)
                )
                inventory.targets[key] = target
                inventory.add_issuer(target.issuer)
        self.inventory, self._apache_files = inventory, sources.apache_files
        self._unstapled = sources.unstapled
        self._report(inventory)
        if self.pool is not None:
            self.pool.issuers(self._issuer_rows())
        self.responder.forget_requested(lambda k: inventory.issuer_for_key(k) is not None)
        for key in self.scheduler.tracked():
            if key not in inventory.targets and not self.responder.requested(key):
                self.scheduler.untrack(key)  # a replaced or removed certificate
        self._track_targets()
        _notify("READY=1")

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        """What the watched files look like now: certificate files, globs and Apache's config."""
        paths = {str(p) for p in self.inventory.files} | {str(p) for p in self._apache_files}
        for pattern in self.config.certs:
            if glob.has_magic(pattern):
                paths.update(glob.glob(pattern))  # a new file matching a glob is a change too
        return tuple(_stats(sorted(paths)))

    def _first_snapshot(self) -> tuple[tuple[str, int, int], ...]:
        """The watched files as the inventory saw them (it globbed and stat-ed each already), so a
        change made since it read them is noticed; Apache's files as they are now."""
        out = {path: (mtime, size) for path, mtime, size in _stats(str(p) for p in self._apache_files)}
        out.update(self.inventory.seen)
        return tuple((path, *out[path]) for path in sorted(out))

    def _watched_directories(self) -> set[Path]:
        """The directories holding the watched files, the real ones behind them, and where a new
        glob match would appear. In a worker thread: it looks at every file (a symbolic link's
        target may live elsewhere), which takes a while with 100,000 of them."""
        parents: set[str] = set()
        dirs: set[str] = set()
        for path, _, _ in self._watch_snapshot:
            parents.add(os.path.dirname(path) or ".")
            if os.path.islink(path):  # certbot's live/ links point into archive/
                dirs.add(os.path.dirname(os.path.realpath(path)))
        for parent in parents:
            dirs.add(parent)
            dirs.add(os.path.realpath(parent))
        for pattern in self.config.certs:
            dirs.add(os.path.dirname(pattern) or ".")  # where a new file matching a glob would appear
        return {Path(d) for d in dirs if not glob.has_magic(d)}

    async def _watch(self) -> None:
        """Re-read the certificates when their files change: told by inotify where available (a
        full comparison then runs only every _NOTIFIED_POLL seconds, as a safety net), else by
        comparing every file's state every watch_interval seconds."""
        loop = asyncio.get_running_loop()
        notifier = DirectoryWatch.open()
        changed = asyncio.Event()
        watched_for: tuple[tuple[str, int, int], ...] | None = None
        notified = False  # every watched directory has an inotify watch
        if notifier is not None:

            def on_events() -> None:
                if notifier.drain():
                    changed.set()

            loop.add_reader(notifier.fd, on_events)
        try:
            while True:
                # At most _STATS_PER_SECOND files looked at per second on average: with 100,000
                # certificates a pass every 5 s would cost several percent of a core while idle.
                poll = max(self.config.watch_interval, len(self._watch_snapshot) / _STATS_PER_SECOND)
                if notifier is not None and watched_for is not self._watch_snapshot:
                    # Resolving every path costs a syscall each: only when the file set changed.
                    watched_for = self._watch_snapshot
                    notified = notifier.watch(await asyncio.to_thread(self._watched_directories))
                    # A change made before the watches were in place raised no event: compare now.
                    changed.set()
                if notified:
                    poll = max(poll, _NOTIFIED_POLL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await changed.wait()
                if changed.is_set():
                    await asyncio.sleep(0.2)  # let a writer finish: several files, a rename
                    changed.clear()
                await self._compare_and_reload()
        finally:
            if notifier is not None:
                loop.remove_reader(notifier.fd)
                notifier.close()

    async def _compare_and_reload(self) -> None:
        snapshot = await asyncio.to_thread(self._snapshot)
        if snapshot != self._watch_snapshot:
            self._watch_snapshot = snapshot
            await self.reload("certificate files changed")
            self._watch_snapshot = await asyncio.to_thread(self._snapshot)
