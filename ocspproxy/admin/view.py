"""What the admin listener reads of the running service, in one object the app hands it: the
catalog, the cache, the scheduler, the fetch history, the request counters of every process. Read
only, except ``refresh`` (``ocspproxy refresh``), which asks the scheduler to fetch now."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ocspproxy.admin.history import History
from ocspproxy.admin.rows import service_rows
from ocspproxy.admin.status import Row
from ocspproxy.cache.door import Ingested
from ocspproxy.cache.memory import Cache
from ocspproxy.cache.persist import Persister
from ocspproxy.cache.scheduler import Scheduler
from ocspproxy.certs.catalog import Catalog
from ocspproxy.config import Config
from ocspproxy.core.ocsp import CertKey
from ocspproxy.serve.tally import Tally, TallySnapshot
from ocspproxy.steps import run_in_slices

if TYPE_CHECKING:
    from ocspproxy.app import App

__all__ = ["ServiceView"]


@dataclass(kw_only=True)
class ServiceView:
    config: Callable[[], Config]  # the configuration in force (a reload replaces it)
    catalog: Catalog
    cache: Cache
    scheduler: Scheduler
    history: History
    persister: Persister
    tally: Tally
    refused: Callable[[], int]  # the main process's connections refused at the cap
    workers: Callable[[], dict[int, TallySnapshot]]  # each worker's counters ({} without workers)
    handoffs: Callable[[], int]  # connections the workers handed to the main process
    loaded: asyncio.Event  # every certificate and stored staple loaded
    clock: Callable[[], datetime]
    started: datetime

    @classmethod
    def of(cls, app: App, tally: Tally, history: History) -> ServiceView:
        def workers() -> dict[int, TallySnapshot]:
            return {} if app.pool is None else app.pool.tallies()

        def handoffs() -> int:
            return 0 if app.pool is None else app.pool.adopted

        return cls(
            config=lambda: app.config,
            catalog=app.catalog,
            cache=app.cache,
            scheduler=app.scheduler,
            history=history,
            persister=app.door.persister,
            tally=tally,
            refused=lambda: app.server.refused,
            workers=workers,
            handoffs=handoffs,
            loaded=app.loaded,
            clock=app.door.clock,
            started=app.door.clock(),
        )

    def tallies(self) -> dict[str, TallySnapshot]:
        """Every process's request counters, by process: ``main``, ``worker1``, ..."""
        out = {"main": self.tally.snapshot(self.refused())}
        for index, snapshot in sorted(self.workers().items()):
            out[f"worker{index}"] = snapshot
        return out

    async def rows(self) -> list[Row]:
        """Every configured certificate, most urgent first, built between requests."""
        self.history.forget_unconfigured()
        steps = service_rows(
            inventory=self.catalog.inventory,
            cache=self.cache,
            next_due=self.scheduler.next_due,
            history=self.history,
            now=self.clock(),
            config=self.config(),
        )
        return await run_in_slices(steps)

    def keys_for(self, files: list[str]) -> tuple[dict[str, CertKey], list[str]]:
        """The configured certificates named by their files (as configured, or the same file by
        another spelling), and the names that match none."""
        by_path: dict[str, CertKey] = {}
        for key, target in self.catalog.inventory.targets.items():
            by_path.setdefault(target.path, key)
            by_path.setdefault(os.path.realpath(target.path), key)
        found: dict[str, CertKey] = {}
        unknown: list[str] = []
        for name in files:
            match = by_path.get(name) or by_path.get(os.path.realpath(name))
            if match is None:
                unknown.append(name)
            else:
                found[name] = match
        return found, unknown

    def all_keys(self) -> dict[str, CertKey]:
        """Every configured certificate that has a CA to ask, by file."""
        return {t.path: k for k, t in self.catalog.inventory.targets.items() if t.url is not None}

    async def refresh(self, key: CertKey) -> Ingested | None:
        return await self.scheduler.fetch_now(key)
