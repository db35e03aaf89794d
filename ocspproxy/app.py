"""The service: its pieces wired together (``App.__init__``, nothing else happens there) and its
lifecycle as methods — ``start`` (listen), ``load`` (every certificate and stored staple), ``reload``,
``shutdown``; ``run`` does them in order. docs/architecture.md draws the pieces."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from ocspproxy.admin.history import History
from ocspproxy.admin.server import AdminServer
from ocspproxy.admin.view import ServiceView
from ocspproxy.bundle.inbox import Inbox
from ocspproxy.cache.door import Door
from ocspproxy.cache.events import Events
from ocspproxy.cache.refresher import Refresher
from ocspproxy.cache.scheduler import Scheduler
from ocspproxy.cache.warmstart import WarmStart
from ocspproxy.certs import sources as certificate_files
from ocspproxy.certs.build import early_inventory
from ocspproxy.certs.catalog import Catalog
from ocspproxy.certs.index import CertIndex, read_index, write_index
from ocspproxy.certs.inventory import Inventory
from ocspproxy.certs.sources import certificate_sources, read_inventory
from ocspproxy.certs.watcher import FileWatcher
from ocspproxy.config import Config, ConfigError, proxy_route
from ocspproxy.serve.edge import Edge, GuardedServer
from ocspproxy.serve.fastpath import FastPath
from ocspproxy.serve.limits import Limits
from ocspproxy.serve.responder import Responder
from ocspproxy.serve.tally import Tally
from ocspproxy.shared.fleet import Fleet
from ocspproxy.steps import run_in_slices, without_cycle_collection
from ocspproxy.store import FileStore, Store, StoreError
from ocspproxy.systemd import notify
from ocspproxy.upstream.base import LocalLease
from ocspproxy.upstream.http import Fetcher, HttpSource
from ocspproxy.workers.pool import PoolSettings, WorkerPool

__all__ = ["App", "utcnow"]

log = structlog.get_logger("ocspproxy")

_CHECKPOINT_EVERY = 600.0  # seconds between snapshot writes while staples change


def utcnow() -> datetime:
    return datetime.now(UTC)


class App:
    def __init__(
        self, config: Config, *, reread: Callable[[], Config] | None = None, store: Store | None = None
    ) -> None:
        self.config = config
        self._reread = reread  # reads the configuration again (file + the same flags) on reload
        # The store first: it creates the state directory, where the certificate index is kept.
        # Never fails: an unusable directory is logged, and tried again at each write.
        self.store: Store = store if store is not None else FileStore(config.state_dir)
        # What the configuration names is read now (a broken Apache config stops the start); the
        # certificate files themselves after the listener opens (``load``). Until then the catalog
        # holds the issuers known without them.
        self.sources = certificate_sources(config)
        self._index = read_index(config.state_dir) if self._state_usable else CertIndex()
        issuers, overrides = config.issuers, dict(config.issuer_urls)
        self.catalog = Catalog(early_inventory(self.sources.certs, issuers, overrides, self._index))
        self.events = Events()
        self.door = Door(
            store=self.store,
            catalog=self.catalog,
            events=self.events,
            rules=config.rules,
            clock=utcnow,
            memory_max=config.memory_max_entries,
        )
        self.cache = self.door.cache
        self.fetcher = Fetcher(config.upstream, proxy_route(config))
        # Many instances on one Redis (shared_store); the main process alone talks to it.
        self.fleet = Fleet.of(config.shared, self.door, config.refresh, utcnow) if config.shared else None
        if self.fleet is not None:
            self.events.subscribe(self.fleet)
        self.refresher = Refresher(
            door=self.door,
            source=HttpSource(self.fetcher),
            lease=self.fleet.lease if self.fleet is not None else LocalLease(),
            negative_ttl=config.negative_ttl,
            lease_ttl=config.shared.lease_ttl if config.shared is not None else 30.0,
        )
        self.scheduler = Scheduler(
            cache=self.cache,
            refresher=self.refresher,
            catalog=self.catalog,
            policy=config.refresh,
            clock=utcnow,
        )
        self.events.subscribe(self.scheduler)
        self.warm = WarmStart(store=self.store, door=self.door)
        self.inbox = Inbox(config.state_dir, self.door, self.catalog, utcnow, config.bundle_warn_margin,
                           want_file=config.bundle_want_file)  # fmt: skip
        self.loaded = asyncio.Event()  # set once every certificate and stored staple is loaded
        self.responder = Responder(
            door=self.door,
            refresher=self.refresher,
            scheduler=self.scheduler,
            catalog=self.catalog,
            warm=self.warm,
            loaded=self.loaded,
            budget=config.answer_budget,
            max_tracked_requests=config.max_tracked_requests,
            fetch_rate=config.fetch_rate_per_issuer,
            fetch_burst=config.fetch_burst_per_issuer,
        )
        self.limits = Limits.from_config(config)
        # Counted only with an admin listener to report them (metrics off: nothing counted).
        self.tally = Tally() if config.admin_listen is not None else None
        self.history = History(self.catalog.configured)  # the admin listener's fetch history
        self.server = GuardedServer(Edge(self.responder, self.limits, self.tally))
        self.admin: AdminServer | None = None
        self.watcher: FileWatcher | None = None  # made in the event loop, by load
        self.pool: WorkerPool | None = None
        self.ready = asyncio.Event()  # set once the listener is open
        self.address: tuple[str, int] | None = None
        self._listener: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._load_failed = False

    @property
    def inventory(self) -> Inventory:
        return self.catalog.inventory

    @property
    def _state_usable(self) -> bool:
        """False when the state directory was reported unusable: no index is read or written there
        (it would only repeat what the store said, once)."""
        return not isinstance(self.store, FileStore) or self.store.usable

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        """Start, serve until told to stop (SIGTERM, SIGINT, ``stop``), shut down. Exit status."""
        if not await self.start(handle_signals=handle_signals):
            return 1
        await self._stop.wait()
        await self.shutdown()
        return 1 if self._load_failed else 0

    async def start(self, *, handle_signals: bool = True) -> bool:
        """Open the listener (and the workers' sockets), then load in the background. False when the
        address cannot be had."""
        loop = asyncio.get_running_loop()
        with without_cycle_collection():
            stored = self.warm.open()
        await self.fetcher.start()
        server = self.server
        try:
            # Every connection starts on the fast path, which hands all but plain hits to aiohttp.
            self._listener = await loop.create_server(
                lambda: FastPath(server),
                self.config.listen_host,
                self.config.listen_port,
                reuse_address=True,
                reuse_port=self.config.workers > 1,  # the workers' sockets join this port
                backlog=1024,
            )
        except OSError as exc:
            await self.fetcher.close()
            address = f"{self.config.listen_host}:{self.config.listen_port}"
            log.error("cannot listen", address=address, error=str(exc))
            return False
        sockets = self._listener.sockets
        self.address = sockets[0].getsockname()[:2]
        if self.config.workers > 1:
            self.pool = self._start_workers([(s.family, s.getsockname()) for s in sockets])
        if self.tally is not None and self.config.admin_listen is not None:
            self.events.subscribe(self.history)
            self.admin = AdminServer(ServiceView.of(self, self.tally, self.history), self.config.admin_listen)
            await self.admin.start()  # (one that cannot listen is logged: the OCSP port serves on)
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
            loop.add_signal_handler(signal.SIGUSR1, lambda: self.inbox.write_want_soon("SIGUSR1"))
        load = asyncio.create_task(self.load(fresh=not stored))
        load.add_done_callback(self._load_done)
        self._tasks = [
            asyncio.create_task(self.scheduler.run()),
            asyncio.create_task(self._checkpoints()),
            load,
        ]
        notify("READY=1")
        self.ready.set()
        issuers = len({id(i) for i in self.inventory.issuers.values()})
        log.info(
            "listening", address=f"{self.address[0]}:{self.address[1]}", issuers=issuers, snapshot=stored
        )
        return True

    async def load(self, *, fresh: bool = False) -> None:
        """After the listener opened: read every certificate file, then hold the stored staples,
        check their signatures and schedule refreshes. A slice at a time in the event loop:
        requests are answered in between (see ``Responder``). In a fleet, an instance with nothing
        stored (``fresh``) first holds the fleet's staples, served while its certificates are read;
        one with staples of its own takes what is newer, after its own."""
        fleet = self.fleet
        with without_cycle_collection():
            if fleet is not None and fresh:
                await fleet.start()
            config = self.config
            steps = certificate_files.inventory_steps(config, self.sources.certs, self._index)
            inventory = await run_in_slices(steps)
            if self._state_usable:
                await asyncio.to_thread(write_index, config.state_dir, self._index)
            self._index = CertIndex()  # its rows are not needed again: a reload reads the written one
            self._replace(inventory)
            loaded, skipped = await run_in_slices(self.warm.load_steps())
            log.info("store loaded", loaded=loaded, skipped=skipped, state_dir=str(config.state_dir))
            self.warm.alert_revoked(inventory)
            self.watcher = FileWatcher(interval=config.watch_interval)
            self.watcher.follow(files=self._watched_files(), patterns=config.certs, seen=inventory.seen)
            if fleet is not None:
                await (fleet.catch_up() if fresh else fleet.start())
        self.loaded.set()
        self._tasks += [
            asyncio.create_task(self._track_soon()),
            asyncio.create_task(self._watch(self.watcher)),
            asyncio.create_task(self._check_stored()),
            asyncio.create_task(self.inbox.run()),  # bundles imported meanwhile, then as they come
        ]

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
        self.config, later = self.config.reloaded(config)
        if later:
            log.warning("configuration changes that take effect after a restart", keys=later)
        for key, target in self.inventory.targets.items():
            if target.path in inventory.unreadable and key not in inventory.targets:
                log.warning("certificate file unreadable; keeping its previous certificate", path=target.path)
                inventory.add_target(target)
                inventory.add_issuer(target.issuer)
        self.sources = sources
        self._replace(inventory)
        self.responder.forget_requested(lambda k: inventory.issuer_for_key(k) is not None)
        for key in self.scheduler.tracked():
            if key not in inventory.targets and not self.responder.requested(key):
                self.scheduler.untrack(key)  # a replaced or removed certificate
        self.scheduler.track_all(self.catalog.stapled())
        notify("READY=1")

    async def shutdown(self) -> None:
        log.info("shutting down")
        if self.pool is not None:
            self.pool.stop_soon()
        notify("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pool is not None:
            await self.pool.stop()
        if self._listener is not None:
            self._listener.close()
        if self.admin is not None:
            await self.admin.close()
        self.server.pre_shutdown()
        await self.server.shutdown(self.config.shutdown_timeout)
        await self.refresher.close()
        if self.fleet is not None:
            await self.fleet.close()
        await self.door.close()
        await self._checkpoint()  # waits for one still being written, then writes what is held now
        await self.fetcher.close()
        if self.watcher is not None:
            self.watcher.close()

    def _replace(self, inventory: Inventory) -> None:
        changed = set(inventory.targets) != set(self.catalog.inventory.targets)
        self.catalog.replace(inventory)
        certificate_files.report(self.sources, inventory)
        if changed:
            self.inbox.write_want_soon("certificates changed")
        if self.pool is not None:
            self.pool.issuers_changed()

    def _load_done(self, task: asyncio.Task[None]) -> None:
        """The service is useless without its certificates: a load that failed stops it (exit 1)."""
        if task.cancelled() or task.exception() is None:
            return
        self._load_failed = True
        log.error("loading certificates and stored staples failed", error=repr(task.exception()))
        self._stop.set()

    async def _track_soon(self, batch: int = 5000) -> None:
        """At start-up, once the listener is open: stored staples are served meanwhile, and
        scheduling 100,000 refreshes would hold it closed for a second. A batch at a time, so
        requests are answered in between; a reload meanwhile tracks what it needs itself."""
        keys = self.catalog.stapled()
        for start in range(0, len(keys), batch):
            targets = self.inventory.targets  # a reload may have replaced the inventory
            self.scheduler.track_all(key for key in keys[start : start + batch] if key in targets)
            await asyncio.sleep(0)

    async def _check_stored(self) -> None:
        await self.warm.check_all()
        await self._checkpoint()

    async def _checkpoints(self) -> None:
        """Let the store write what speeds up the next start, every so often while staples change,
        so that a crash costs little."""
        while True:
            await asyncio.sleep(_CHECKPOINT_EVERY)
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Never raises: what cannot be written costs speed only."""
        try:
            await asyncio.to_thread(self.store.checkpoint, utcnow())
        except StoreError as exc:
            log.warning("cannot write the staples snapshot", error=str(exc))

    def _watched_files(self) -> list[str]:
        """Certificate files read, and Apache's configuration files."""
        return [*self.inventory.files, *(str(p) for p in self.sources.apache_files)]

    async def _watch(self, watcher: FileWatcher) -> None:
        """Re-read the certificates whenever their files change."""
        while True:
            await watcher.changed()
            await self.reload("certificate files changed")
            await watcher.refollow(files=self._watched_files(), patterns=self.config.certs)

    def _start_workers(self, addresses: list[tuple[int, tuple[str, int]]]) -> WorkerPool:
        c, every = self.config, 1.0 if self.tally is not None else 0.0  # (the workers' counters)
        settings = PoolSettings(c.workers - 1, tuple(addresses), self.limits, c.log_level, c.log_format,
                                c.shutdown_timeout, report_every=every)  # fmt: skip
        pool = WorkerPool(settings, catalog=self.catalog, cache=self.cache, adopt=self.server.adopt)
        self.events.subscribe(pool)
        pool.start()
        return pool
