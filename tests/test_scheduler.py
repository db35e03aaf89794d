"""The scheduler under a fake wall clock: jumps forward and backward neither stall it nor start a storm."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta
from typing import cast

from ocspproxy.cache.door import Ingested, Result
from ocspproxy.cache.memory import Cache
from ocspproxy.cache.refresher import Refresher
from ocspproxy.cache.scheduler import Scheduler
from ocspproxy.certs.catalog import Catalog
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import RefreshPolicy
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.upstream.base import Job
from tests.pki import TestCA

VALIDITY = timedelta(hours=1)
CA = TestCA()


class WallClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class FakeStaples:
    """Stands in for the cache and the refresher: every refresh yields a fresh staple (one hour
    unless told otherwise) at the wall clock's now; with ``failing`` set, every refresh fails and
    nothing changes."""

    def __init__(self, clock: WallClock, validity: timedelta = VALIDITY) -> None:
        self.clock = clock
        self.validity = validity
        self.failing = False
        self.paused = 0.0  # > 0: every fetch is held (its upstream paused), this many seconds left
        self.held: dict[CertKey, Staple] = {}
        self.fetches: list[tuple[CertKey, datetime]] = []
        self.fetched_at: list[float] = []  # loop time of each fetch

    def servable(self, key: CertKey) -> Staple | None:
        staple = self.held.get(key)
        return staple if staple is not None and staple.servable(self.clock()) else None

    def held_until(self, key: CertKey, now: datetime | None = None) -> Staple | None:
        staple = self.held.get(key)
        return staple if staple is not None and staple.servable(now or self.clock()) else None

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def hold(self, key: CertKey, this_update: datetime) -> None:
        self.held[key] = Staple(
            key=key,
            der=this_update.isoformat().encode(),
            status=CertStatus.GOOD,
            this_update=this_update,
            next_update=this_update + self.validity,
            produced_at=this_update,
        )

    def refresh(self, key: CertKey, job: Job, **_: object) -> asyncio.Task[Ingested]:
        async def fetch() -> Ingested:
            self.fetches.append((key, self.clock()))
            self.fetched_at.append(asyncio.get_running_loop().time())
            if self.paused:
                servable = self.servable(key)
                return Ingested(Result.HELD, "paused", servable, held_by="ca", held_for=self.paused)
            if self.failing:
                return Ingested(Result.FAILED, "CA down", self.servable(key))
            self.hold(key, self.clock())
            return Ingested(Result.STORED, "newer", self.held[key])

        return asyncio.create_task(fetch())


class FakeCatalog:
    def job_for(self, key: CertKey) -> Job:
        return Job(issuer_cert=CA.cert, name_hash=b"", url="http://ca.test/")


def make(
    n: int, *, validity: timedelta = VALIDITY, policy: RefreshPolicy | None = None
) -> tuple[Scheduler, FakeStaples, WallClock, list[CertKey]]:
    clock = WallClock()
    staples = FakeStaples(clock, validity)
    keys = [CA.cert_id(serial).key for serial in range(1, n + 1)]
    for key in keys:
        staples.hold(key, clock())
    scheduler = Scheduler(
        cache=cast(Cache, staples),
        refresher=cast(Refresher, staples),
        catalog=cast(Catalog, FakeCatalog()),
        policy=policy or RefreshPolicy(),
        clock=clock,
        rng=random.Random(5),
        max_sleep=0.05,
        jump_spread=1.0,
    )
    return scheduler, staples, clock, keys


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_nothing_is_fetched_before_it_is_due() -> None:
    scheduler, staples, _, keys = make(50)
    for key in keys:
        scheduler.track(key)
    await run_for(scheduler, 0.3)
    assert staples.fetches == []


async def test_tracking_all_at_once_schedules_as_one_at_a_time() -> None:
    one, _, _, keys = make(50)
    for key in keys:
        one.track(key)
    all_at_once, staples, _, _ = make(50)
    all_at_once.track_all([*keys, keys[0]])
    assert len(all_at_once) == 50
    due_one = {k: due for due, _, k in one._heap}
    due_all = {k: due for due, _, k in all_at_once._heap}
    shift = due_all[keys[0]] - due_one[keys[0]]  # the two were made at different moments
    assert all(abs(due_all[k] - due_one[k] - shift) < 0.05 for k in keys), "same rng, same due times"

    none_held, staples, _, keys = make(5)
    staples.held.pop(keys[3])
    none_held.track_all(keys)
    await run_for(none_held, 0.3)
    assert [k for k, _ in staples.fetches] == [keys[3]], "nothing held: due at once, the rest not"


async def test_forward_jump_refreshes_everything_once_spread_out() -> None:
    scheduler, staples, clock, keys = make(50)
    for key in keys:
        scheduler.track(key)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.1)
    clock.now += timedelta(minutes=50)  # past every due time, staples still valid
    await asyncio.sleep(0.3)
    early = len(staples.fetches)
    await asyncio.sleep(1.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sorted(k for k, _ in staples.fetches) == sorted(keys), "each key fetched exactly once"
    assert early < len(keys), "spread over jump_spread, not all at once"


async def test_backward_jump_does_not_stall_refresh() -> None:
    scheduler, staples, clock, keys = make(10)
    for key in keys:
        scheduler.track(key)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.1)
    clock.now -= timedelta(days=1)  # staples now look a day younger
    await asyncio.sleep(0.2)
    assert staples.fetches == [], "no storm"
    clock.now += timedelta(days=1, minutes=45)  # corrected, and time has moved on past due
    await asyncio.sleep(1.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sorted(k for k, _ in staples.fetches) == sorted(keys)


async def test_long_validity_is_asked_again_within_max_interval() -> None:
    """7-day responses: ½ validity would mean 3.5 days without asking the CA (a revocation would
    take that long to arrive). max_interval bounds it; first fetches after start-up are spread."""
    policy = RefreshPolicy(max_interval=0.5)
    scheduler, staples, _, keys = make(40, validity=timedelta(days=7), policy=policy)
    start = asyncio.get_running_loop().time()
    scheduler.track_all(keys)
    await run_for(scheduler, 1.3)
    counts = {key: sum(1 for k, _ in staples.fetches if k == key) for key in keys}
    assert all(2 <= n <= 3 for n in counts.values()), counts
    first = sorted(at - start for at in staples.fetched_at)[: len(keys)]
    assert max(first) - min(first) > 0.25, "the first round is spread over the interval, not a burst"


async def test_failure_before_due_waits_for_the_next_interval_not_a_backoff() -> None:
    """A max_interval check that fails while the staple has days left: asked again at the next
    interval, not retried every few seconds against a CA that is down."""
    policy = RefreshPolicy(max_interval=100.0, retry_initial=1.0, retry_max=50.0)
    scheduler, staples, _, keys = make(1, validity=timedelta(days=7), policy=policy)
    scheduler.track(keys[0])
    staples.failing = True
    loop = asyncio.get_running_loop()
    for _ in range(3):
        scheduler._entries[keys[0]].latest = loop.time()  # max_interval since the last fetch is up
        await scheduler._refresh(keys[0])
        assert staples.fetches, "fetched"
        delay = scheduler._entries[keys[0]].due - loop.time()
        assert 90.0 - 0.1 <= delay <= 100.0, delay
    assert len(staples.fetches) == 3


async def test_due_and_failing_backs_off_exponentially() -> None:
    policy = RefreshPolicy(retry_initial=1.0, retry_max=64.0)
    scheduler, staples, clock, keys = make(1, validity=timedelta(days=10), policy=policy)
    staples.hold(keys[0], clock() - timedelta(days=6))  # due at 5 days: due now, 4 days left
    scheduler.track(keys[0])
    staples.failing = True
    loop = asyncio.get_running_loop()
    for n in range(1, 10):
        await scheduler._refresh(keys[0])
        delay = scheduler._entries[keys[0]].due - loop.time()
        step = min(64.0, 2.0 ** (n - 1))
        assert step / 2 - 0.01 <= delay <= step, (n, delay)


async def test_nothing_servable_retries_stay_within_retry_unservable() -> None:
    """A long outage: the staple has expired. Retries keep coming at most retry_unservable apart
    (not retry_max), so the CA's return is noticed within about that."""
    policy = RefreshPolicy(retry_initial=1.0, retry_max=600.0, retry_unservable=60.0)
    scheduler, staples, clock, keys = make(1, policy=policy)
    clock.now += timedelta(hours=2)  # the one-hour staple has expired
    scheduler.track(keys[0])
    staples.failing = True
    loop = asyncio.get_running_loop()
    delays = []
    for _ in range(15):
        await scheduler._refresh(keys[0])
        delays.append(scheduler._entries[keys[0]].due - loop.time())
    assert max(delays) <= 60.0
    assert min(delays[7:]) >= 30.0 - 0.01, "bounded below too: no hammering"


def held_and_due(n: int) -> tuple[Scheduler, FakeStaples, WallClock, list[CertKey]]:
    """n keys, each staple due (40 of its 60 minutes gone), their upstream paused."""
    policy = RefreshPolicy(retry_initial=0.05, retry_max=0.1, retry_min=0.01)
    scheduler, staples, clock, keys = make(n, policy=policy)
    for key in keys:
        staples.hold(key, clock() - timedelta(minutes=40))
    staples.paused = 0.2
    return scheduler, staples, clock, keys


async def test_keys_held_by_a_paused_upstream_wait_behind_one_scout() -> None:
    """Without parking each key would retry every 0.1 s: 20 keys, 1 s, about 200 fetches."""
    scheduler, staples, clock, keys = held_and_due(20)
    scheduler.track_all(keys)
    await run_for(scheduler, 1.0)
    assert 20 <= len(staples.fetches) <= 20 + 6, "each once, then the scout every 0.2-0.22 s"
    assert len(scheduler.parking) == 19
    staples.paused = 0.0  # the upstream answers again: the scout's answer lets the rest go
    clock.now += timedelta(seconds=1)
    await run_for(scheduler, 1.5)  # jump_spread is 1 s
    assert all(staples.held[key].this_update == clock() for key in keys)
    assert len(scheduler.parking) == 0


async def test_a_scout_found_refreshed_by_other_means_lets_the_rest_go() -> None:
    """The scout's staple was renewed meanwhile (by a request, the fleet, a bundle): its timer
    finds it not due, and the keys parked behind it are fetched, not left waiting for its next
    check an hour away."""
    scheduler, staples, clock, keys = held_and_due(10)
    scheduler.track_all(keys)
    await run_for(scheduler, 0.1)
    parked = set(scheduler.parking._parked_at)
    (scout,) = set(keys) - parked
    staples.hold(scout, clock())
    staples.paused = 0.0
    await run_for(scheduler, 1.5)
    assert all(staples.held[key].this_update == clock() for key in keys)
    assert [key for key, _ in staples.fetches].count(scout) == 1, "the scout itself not again"
