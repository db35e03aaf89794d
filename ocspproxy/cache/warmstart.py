"""Stored staples at start-up: before the full load a stored staple of a known issuer can be served
at once (``early``); the full load then holds every servable one, a few at a time between requests
(``load_steps``); their deferred signature checks run in the background (``check_all``). Each entry
goes through the door (``Door.admit``), like anything else."""

from __future__ import annotations

import asyncio
import itertools

import structlog

from ocspproxy.cache.door import Door
from ocspproxy.certs.inventory import Inventory
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.steps import Steps
from ocspproxy.store.base import Store, StoreError

__all__ = ["WarmStart"]

log = structlog.get_logger("ocspproxy")


class WarmStart:
    def __init__(self, *, store: Store, door: Door) -> None:
        self.store = store
        self.door = door
        self.loading = False  # from open until load_steps is done

    def open(self) -> int:
        """Before the listener opens: get the store ready (the file store reads its snapshot).
        Returns how many staples it expects."""
        self.loading = True
        return self.store.prepare()

    def early(self, key: CertKey) -> Staple | None:
        """Before the full load: key's stored staple, checked in full, if its issuer is known already;
        None otherwise (the full load decides, and reports what is wrong with it)."""
        if not self.loading or self.door.catalog.issuer_for_key(key) is None:
            return None
        for _ in range(2):  # an entry from the store's own copy that fails: once more, the original
            try:
                stored = self.store.load(key)
            except StoreError:
                return None
            if stored is None:
                return None
            staple = self.door.admit(stored)
            checked = None if staple is None else self.door.confirm(staple)
            if checked is not None or stored.hint is None:
                return checked
        return None

    def load_steps(self, batch: int = 128) -> Steps[tuple[int, int]]:
        """Hold every servable stored staple, a batch at a time (once the catalog knows every issuer).
        Returns (loaded, skipped). Each entry is validated again as if fetched now, but for its
        signature (``Door.admit``): a damaged, foreign or expired entry is reported and skipped,
        never fatal; expired ones are removed."""
        counts = [0, 0]

        def report(path: str, exc: Exception) -> None:
            counts[1] += 1
            log.warning("stored staple unreadable; skipped", path=path, error=str(exc))

        entries = self.store.load_all(report)
        yield
        while chunk := list(itertools.islice(entries, batch)):
            with self.door.cache.batch():  # one clock reading for the whole batch
                for stored in chunk:
                    counts[0 if self.door.admit(stored) is not None else 1] += 1
            yield
        self.loading = False
        return counts[0], counts[1]

    def alert_revoked(self, inventory: Inventory) -> None:
        """A stored revoked staple of a configured certificate: the same line as when it was fetched,
        once per start, so a restart does not hide that Apache serves a revoked certificate."""
        cache = self.door.cache
        with cache.batch():
            for key, target in inventory.targets.items():
                staple = cache.held_until(key)
                if staple is not None and staple.status is CertStatus.REVOKED:
                    log.critical(
                        "certificate revoked",
                        serial=f"{key.serial:x}",
                        path=target.path,
                        subject=target.subject,
                        revoked_at=staple.revocation_time.isoformat() if staple.revocation_time else None,
                        stored=True,
                    )

    async def check_all(self, batch: int = 256) -> None:
        """Check the signature of every staple held unchecked, a batch at a time between requests;
        then let the store write what speeds up the next start."""
        checked = 0
        while looked := self.door.confirm_some(batch):
            checked += looked
            await asyncio.sleep(0)
        log.info("stored staples verified", checked=checked, held=len(self.door.cache))
