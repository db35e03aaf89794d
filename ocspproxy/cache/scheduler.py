"""Pre-fetch: keeps every tracked CertKey's staple fresh, sleeping until the next one is due.

A heap holds one due time per key (monotonic seconds, for sleeping). Due times are computed from wall
time (validity is wall time) and re-checked when they fire: if the staple was refreshed meanwhile (by a
request), the key is simply rescheduled. No loop walks every certificate.

A key is due at the earlier of its staple's refresh time (``RefreshPolicy.due``) and ``max_interval``
after its last fetch (``RefreshPolicy.interval``); keys first tracked together (start-up) get that
latest time spread over one interval, so a restart does not ask the CA about every certificate at
once. A fetch that fails while the staple is not yet due is tried again at the next of those times;
once it is due (or nothing servable is held), failures back off (``RefreshPolicy.retry_delay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from ocspproxy.cache.door import Ingested, Result
from ocspproxy.cache.events import Listener
from ocspproxy.cache.memory import Cache, Clock
from ocspproxy.cache.parking import Parking
from ocspproxy.cache.refresher import Refresher
from ocspproxy.certs.catalog import Catalog
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import RefreshPolicy

__all__ = ["Scheduler"]

log = structlog.get_logger("ocspproxy")

# Longest single sleep: bounds how late a wall-clock jump is noticed.
_MAX_SLEEP = 60.0
# A change of (wall - monotonic) beyond this is a clock jump: due times are recomputed.
_JUMP = 5.0


@dataclass(slots=True)
class _Entry:
    seq: int
    failures: int = 0  # consecutive fetches the CA did not answer validly
    retries: int = 0  # consecutive fetches that left the staple due (or none held): the back-off
    due: float = 0.0  # monotonic
    latest: float = 0.0  # monotonic: fetch again no later than this (max_interval since the last)


class Scheduler(Listener):
    """Subscribed to the door's events: a staple dropped (it failed its deferred check) is fetched
    again at once."""

    def __init__(
        self,
        *,
        cache: Cache,
        refresher: Refresher,
        catalog: Catalog,
        policy: RefreshPolicy,
        clock: Clock,
        rng: random.Random | None = None,
        max_concurrent: int = 32,
        max_sleep: float = _MAX_SLEEP,
        jump_spread: float = 30.0,
    ) -> None:
        self.cache = cache
        self.refresher = refresher
        self.catalog = catalog
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self._heap: list[tuple[float, int, CertKey]] = []
        self._entries: dict[CertKey, _Entry] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_sleep = max_sleep
        self.jump_spread = jump_spread  # keys made due by a jump are spread over this many seconds
        self._offset: float | None = None
        self.parking = Parking()

    def __contains__(self, key: CertKey) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, key: CertKey) -> None:
        """Keep key fresh from now on; a key already tracked keeps its schedule."""
        if key in self._entries:
            return
        entry = self._entries[key] = _Entry(seq=-1)
        entry.latest = asyncio.get_running_loop().time() + self._first_interval()
        self._schedule(key, self._delay_from_staple(key) or 0.0)

    def track_all(self, keys: Iterable[CertKey]) -> None:
        """``track`` for many keys (start-up, reload), with one clock reading for all of them."""
        now = self.clock()
        mono = asyncio.get_running_loop().time()
        added = False
        with self.cache.batch():
            for key in keys:
                if key in self._entries:
                    continue
                entry = self._entries[key] = _Entry(seq=next(self._seq))
                entry.latest = mono + self._first_interval()
                entry.due = mono + (self._delay_from_staple(key, now, mono) or 0.0)
                self._heap.append((entry.due, entry.seq, key))
                added = True
        if added:
            heapq.heapify(self._heap)
            self._wake.set()

    def untrack(self, key: CertKey) -> None:
        self._entries.pop(key, None)  # its heap item goes stale and is dropped when it surfaces
        self._unpark(self.parking.release(key))

    def tracked(self) -> list[CertKey]:
        return list(self._entries)

    def next_due(self, key: CertKey) -> datetime | None:
        """Wall-clock time at which key is next fetched, or None when it is not tracked. (Due times
        are kept in monotonic time; this reads both clocks, in the event loop.)"""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry.due - asyncio.get_running_loop().time()
        return self.clock() + timedelta(seconds=max(0.0, left))

    async def fetch_now(self, key: CertKey) -> Ingested | None:
        """Fetch key now, whatever its due time (``ocspproxy refresh``): through the refresher, so
        single flight and the per-upstream cap apply; a tracked key is then scheduled from the
        outcome as after any fetch. None when its issuer or CA is not known (any more)."""
        job = self.catalog.job_for(key)
        if job is None:
            return None
        outcome = await self.refresher.refresh(key, job)
        entry = self._entries.get(key)
        if entry is not None:
            self._settle(key, entry, outcome)
        return outcome

    def _first_interval(self) -> float:
        """Latest first fetch of a newly tracked key whose staple is held: anywhere within one
        interval, so that 100,000 keys tracked at start-up are not asked about in one burst."""
        return self.rng.random() * self.policy.max_interval

    def _delay_from_staple(
        self, key: CertKey, now: datetime | None = None, mono: float | None = None
    ) -> float | None:
        """Seconds until the current staple is due (by its validity, or ``max_interval`` since the
        last fetch), or None when nothing servable is held."""
        if now is None:
            now = self.clock()
        staple = self.cache.held_until(key, now)
        if staple is None:
            return None
        by_validity = (self.policy.due(staple, self.rng) - now).total_seconds()
        entry = self._entries.get(key)
        if entry is not None:
            if mono is None:
                mono = asyncio.get_running_loop().time()
            by_validity = min(by_validity, entry.latest - mono)
        return max(0.0, by_validity)

    def _unpark(self, keys: list[CertKey]) -> None:
        """Keys parked behind a scout whose upstream answers again: spread over jump_spread."""
        for key in keys:
            self._schedule(key, self.rng.uniform(0, self.jump_spread))

    def dropped(self, key: CertKey) -> None:
        """Fetch key soon: the staple it was scheduled by turned out unusable."""
        if key in self._entries:
            self._schedule(key, 0.0)

    def _schedule(self, key: CertKey, delay: float) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.seq = next(self._seq)
        entry.due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._heap, (entry.due, entry.seq, key))
        self._wake.set()

    def _check_clock(self, now_mono: float) -> None:
        """Sleeping uses monotonic time, validity wall time: when the wall clock jumps, recompute
        every staple-driven due time (back-off timers are monotonic and stay)."""
        offset = self.clock().timestamp() - now_mono
        previous, self._offset = self._offset, offset
        if previous is None or abs(offset - previous) <= _JUMP:
            return
        log.warning("wall clock jumped; rescheduling refreshes", seconds=round(offset - previous, 1))
        self._heap = []
        for key, entry in self._entries.items():
            if key in self.parking:
                continue  # waits for its scout, not for a time
            if entry.retries:
                delay = max(0.0, entry.due - now_mono)
            else:
                delay = self._delay_from_staple(key) or 0.0
                if delay == 0.0:  # made due by the jump: spread them, no storm
                    delay = self.rng.uniform(0, self.jump_spread)
            self._schedule(key, delay)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._check_clock(loop.time())
                if not self._heap:
                    await self._sleep(self.max_sleep)
                    continue
                due, seq, key = self._heap[0]
                entry = self._entries.get(key)
                if entry is None or entry.seq != seq:
                    heapq.heappop(self._heap)
                    continue
                delay = due - loop.time()
                if delay > 0:
                    await self._sleep(min(delay, self.max_sleep))
                    continue
                heapq.heappop(self._heap)
                await self._slots.acquire()
                task = asyncio.create_task(self._fire(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in self._tasks:
                task.cancel()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races
        # with the event, and shutdown would then hang.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _fire(self, key: CertKey) -> None:
        try:
            await self._refresh(key)
        except Exception:
            log.exception("refresh failed unexpectedly", key=str(key))
            self._schedule(key, self.policy.retry_max)
        finally:
            self._slots.release()

    async def _refresh(self, key: CertKey) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        delay = self._delay_from_staple(key)
        if delay is not None and delay > 0:  # refreshed meanwhile: a request, the fleet, a bundle
            self._unpark(self.parking.release(key))
            self._schedule(key, delay)
            return
        job = self.catalog.job_for(key)
        if job is None:
            log.info("no longer known; not refreshed", key=str(key))
            self.untrack(key)
            return
        outcome = await self.refresher.refresh(key, job)
        self._settle(key, entry, outcome)

    def _settle(self, key: CertKey, entry: _Entry, outcome: Ingested) -> None:
        """Schedule key's next fetch from the outcome of the one just made."""
        entry.failures = entry.failures + 1 if outcome.failed else 0
        entry.latest = asyncio.get_running_loop().time() + self.policy.interval(self.rng)
        delay = self._delay_from_staple(key)
        if outcome.result not in (Result.FAILED, Result.HELD) or (delay is not None and delay > 0):
            # Answered (a scout's upstream answers again), or its staple was refreshed meanwhile.
            self._unpark(self.parking.release(key))
        if delay is not None and delay > 0:
            # The staple is not due yet (a max_interval check, or a newer staple stored): next
            # time as usual, whether or not the CA answered this once.
            entry.retries = 0
            self._schedule(key, delay)
            return
        if outcome.held_by is not None:
            # Its upstream is paused: one scout per upstream waits for the pause's end, the rest
            # wait for the scout (cache/parking.py), instead of failing over and over.
            if not self.parking.held(key, outcome.held_by):
                self._schedule(key, outcome.held_for * (1 + 0.1 * self.rng.random()))
            return
        # Due, or nothing servable: the CA failed, or still hands out the response we hold.
        entry.retries += 1
        retry = self.policy.retry_delay(entry.retries, self.cache.servable(key), self.clock(), self.rng)
        self._schedule(key, retry.total_seconds())
