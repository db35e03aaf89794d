"""The service's side of ``bundle import``: bundles handed over in the state directory's spool
(``incoming/``) are taken through the door — validated again, accepted, persisted, served — then
removed. Also the cadence warning, and the want file written for a cron job.

The spool is looked at once the full load is done (so what was imported while the service was
stopped is served right after its start), whenever inotify says it changed, and every ``poll``
seconds. A bundle is removed only after every entry has been through the door: a service stopped
half way takes it again at its next start (the same answers change nothing). A spooled file that is
no bundle is renamed ``*.bad`` and reported once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from ocspproxy.bundle.format import BUNDLE, BundleError, Member, key_of_member, open_archive
from ocspproxy.bundle.importer import spooled
from ocspproxy.bundle.want import wanted, write_want
from ocspproxy.cache.door import Door, Origin, Result
from ocspproxy.certs.catalog import Catalog
from ocspproxy.certs.watch import DirectoryWatch
from ocspproxy.core.ocsp import CertKey
from ocspproxy.steps import without_cycle_collection
from ocspproxy.store.atomic import TMP_PREFIX, sync_directory
from ocspproxy.store.directory import SPOOL_NAME

__all__ = ["Inbox"]

log = structlog.get_logger("ocspproxy")

_AT_ONCE = 8  # entries through the door at a time (their writes overlap in worker threads)
_CADENCE_EVERY = 3600.0


class Inbox:
    def __init__(
        self,
        state_dir: Path,
        door: Door,
        catalog: Catalog,
        clock: Callable[[], datetime],
        warn_margin: float,
        *,
        want_file: Path | None = None,
        poll: float = 2.0,
    ) -> None:
        self.spool = state_dir / SPOOL_NAME
        self.door = door
        self.catalog = catalog
        self.clock = clock
        self.warn_margin = timedelta(seconds=warn_margin)
        self.want_file = want_file
        self.poll = poll
        self.imported: set[CertKey] = set()  # keys a bundle brought in: the cadence check's
        self._want: asyncio.Task[None] | None = None
        self._want_again = False

    async def run(self) -> None:
        """Take what is spooled, then keep watching (cancelled at shutdown)."""
        if self.spool.is_dir():  # fed by bundles: its staples are watched for expiry from the start
            self.imported.update(self.catalog.inventory.targets)
        _remove_leftovers(self.spool)
        watch = DirectoryWatch.open()
        changed = asyncio.Event()
        if watch is not None:
            asyncio.get_running_loop().add_reader(watch.fd, _notify, watch, changed)
        cadence = asyncio.create_task(self._cadence())
        try:
            while True:
                if watch is not None:
                    watch.watch([p for p in (self.spool.parent, self.spool) if p.is_dir()])
                try:
                    await self.drain()
                except Exception as exc:  # a bug or a disk error must not stop the next imports
                    log.error("taking spooled bundles failed; trying again", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await changed.wait()
                changed.clear()
        finally:
            cadence.cancel()
            if watch is not None:
                asyncio.get_running_loop().remove_reader(watch.fd)
                watch.close()

    async def drain(self) -> int:
        """Take every spooled bundle through the door, oldest first. Returns how many."""
        paths = await asyncio.to_thread(spooled, self.spool)
        for path in paths:
            await self._take(path)
        return len(paths)

    async def _take(self, path: Path) -> None:
        # 100,000 new staples and nothing to free: the cyclic collector would walk every object of
        # the process again and again, stalling hits for a second each time (as at start-up).
        with without_cycle_collection():
            await self._take_all(path)

    async def _take_all(self, path: Path) -> None:
        started = time.monotonic()
        try:
            # Ours (written by `bundle import`): each entry's key is in its file's name, and the door
            # checks every response in full anyway.
            archive = await asyncio.to_thread(open_archive, path, BUNDLE, entries=False)
        except BundleError as exc:
            log.error("spooled bundle unusable; set aside", path=str(path), error=str(exc))
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".bad"))
            return
        counts = dict.fromkeys(Result, 0)
        earliest: datetime | None = None
        try:
            members = archive.members()
            while chunk := await asyncio.to_thread(lambda: list(itertools.islice(members, 256))):
                for part in range(0, len(chunk), _AT_ONCE):
                    done = await asyncio.gather(*(self._ingest(m) for m in chunk[part : part + _AT_ONCE]))
                    for result, next_update in done:
                        counts[result] += 1
                        if next_update is not None and (earliest is None or next_update < earliest):
                            earliest = next_update
                    await asyncio.sleep(0.001)  # requests queued meanwhile go first
        finally:
            await asyncio.to_thread(archive.close)
        await asyncio.to_thread(_remove, path)
        log.info(
            "bundle imported",
            path=path.name,
            **{str(result): n for result, n in counts.items() if n},
            earliest_next_update=earliest.isoformat() if earliest else None,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        self._warn_if_due(earliest, when="imported")

    async def _ingest(self, member: Member) -> tuple[Result, datetime | None]:
        key = key_of_member(member.name) if member.name.startswith("responses/") else None
        if member.data is None or key is None:
            log.warning(
                "spooled bundle entry unreadable",
                file=member.name,
                reason=member.problem or "not a response",
            )
            return Result.REJECTED, None
        outcome = await self.door.ingest(
            key, member.data, Origin.BUNDLE, configured=self.catalog.configured(key)
        )
        if outcome.failed:
            log.warning("bundle entry rejected", key=str(key), reason=outcome.reason)
            return outcome.result, None
        self.imported.add(key)
        staple = outcome.staple
        return outcome.result, staple.next_update if staple is not None else None

    def _warn_if_due(self, earliest: datetime | None, *, when: str, count: int | None = None) -> None:
        if earliest is None or not self.warn_margin:
            return
        left = earliest - self.clock()
        if left < self.warn_margin:
            log.warning(
                "bundle staples expire soon; carry a new bundle in",
                earliest_next_update=earliest.isoformat(),
                hours_left=round(left.total_seconds() / 3600, 1),
                warn_margin_h=round(self.warn_margin.total_seconds() / 3600, 1),
                seen=when,
                **({"within_margin": count} if count is not None else {}),
            )

    async def _cadence(self) -> None:
        """Every hour: the earliest nextUpdate among the staples bundles brought in."""
        while True:
            await asyncio.sleep(min(_CADENCE_EVERY, max(1.0, self.warn_margin.total_seconds() / 4)))
            now = self.clock()
            times = [s.next_update for k in self.imported if (s := self.door.cache.servable(k)) is not None]
            soon = sum(1 for t in times if t - now < self.warn_margin)
            self._warn_if_due(min(times, default=None), when="held", count=soon)

    def write_want_soon(self, reason: str) -> None:
        """Write the want file (``[bundle] want_file``) in a worker thread; asked again while one is
        being written, it is written once more afterwards."""
        if self.want_file is None:
            return
        if self._want is not None and not self._want.done():
            self._want_again = True
            return
        self._want = asyncio.create_task(self._write_want(reason))

    async def _write_want(self, reason: str) -> None:
        assert self.want_file is not None
        while True:
            self._want_again = False
            inventory = self.catalog.inventory
            try:
                entries = await asyncio.to_thread(wanted, inventory)
                await asyncio.to_thread(write_want, self.want_file, entries, self.clock())
                log.info(
                    "want file written", path=str(self.want_file), certificates=len(entries), reason=reason
                )
            except OSError as exc:
                log.error(
                    "cannot write the want file", path=str(self.want_file), error=exc.strerror or str(exc)
                )
            if not self._want_again:
                return


def _notify(watch: DirectoryWatch, changed: asyncio.Event) -> None:
    if watch.drain():
        changed.set()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        sync_directory(path.parent)


def _remove_leftovers(spool: Path, older_than: float = 3600.0) -> None:
    """Temporary files of an import that was interrupted (an import going on now is younger)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(spool):
            path = spool / name
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if time.time() - path.lstat().st_mtime > older_than:
                        path.unlink()
