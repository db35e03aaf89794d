"""One door in: every origin of a staple meets the same validation and the same accept policy, and
nothing else writes to memory. Listeners out: told after the fact, never in the way."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ocspproxy.cache.door import Door, Ingested, Origin, Result
from ocspproxy.cache.events import Events, Listener
from ocspproxy.cache.memory import Cache
from ocspproxy.cache.refresher import Refresher
from ocspproxy.certs.catalog import Catalog
from ocspproxy.certs.inventory import Inventory, Issuer
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.core.validate import Rules
from ocspproxy.store import FileStore, Stored
from ocspproxy.upstream.base import FETCH, Job, LocalLease, SourceError, Turn
from tests.pki import TestCA, now

ROOT = Path(__file__).resolve().parent.parent
CA = TestCA(ocsp_url="http://ocsp.test/")
SERIAL = 0x5EED
KEY = CA.cert_id(SERIAL).key
T0 = now()


class Told(Listener):
    def __init__(self) -> None:
        self.staples: list[Staple] = []
        self.drops: list[CertKey] = []
        self.failures: list[tuple[CertKey, str]] = []

    def stored(self, staple: Staple) -> None:
        self.staples.append(staple)

    def dropped(self, key: CertKey) -> None:
        self.drops.append(key)

    def failed(self, key: CertKey, reason: str) -> None:
        self.failures.append((key, reason))


def make_door(tmp_path: Path, events: Events | None = None) -> Door:
    inventory = Inventory()
    inventory.add_issuer(Issuer.of(CA.cert))
    return Door(
        store=FileStore(tmp_path / "state"),
        catalog=Catalog(inventory),
        events=events or Events(),
        rules=Rules(),
        clock=now,
        memory_max=100,
    )


def served(door: Door, key: CertKey = KEY) -> Staple | None:
    """What a request for key gets: the held staple, its signature checked first if it was not."""
    held = door.cache.current(key)
    checked = None if held is None else door.confirm(held)
    return checked if checked is not None and checked.servable(now()) else None


# The same answers, whatever their origin.
CANDIDATES: dict[str, Callable[[], bytes]] = {
    "forged": lambda: CA.respond(SERIAL, signer="rogue", by_name=True, this_update=T0),
    "expired": lambda: CA.respond(
        SERIAL, this_update=T0 - dt.timedelta(hours=3), validity=dt.timedelta(hours=1)
    ),
    "older": lambda: CA.respond(SERIAL, this_update=T0 - dt.timedelta(minutes=30)),
    "revoked": lambda: CA.respond(SERIAL, status="revoked", this_update=T0),
    "for another certificate": lambda: CA.respond(SERIAL + 1, this_update=T0),
}
# What is served afterwards: the good staple held before, or the candidate.
EXPECTED = {
    "forged": "good",
    "expired": "good",
    "older": "good",
    "revoked": "candidate",
    "for another certificate": "good",
}


async def through_ca(door: Door, der: bytes) -> None:
    await door.ingest(KEY, der, Origin.CA)


async def through_a_bundle(door: Door, der: bytes) -> None:
    """``bundle import`` hands its entries to the service, which takes them through the door."""
    await door.ingest(KEY, der, Origin.BUNDLE)


async def through_store(door: Door, der: bytes) -> None:
    door.admit(Stored(KEY, der))


async def through_store_with_a_forged_hint(door: Door, der: bytes) -> None:
    """The store's own copy of the fields (the file store's snapshot) says whatever it says."""
    hint = Staple(
        key=KEY,
        der=der,
        status=CertStatus.GOOD,
        this_update=T0,
        next_update=T0 + dt.timedelta(days=30),
        produced_at=T0,
        verified=False,
    )
    door.admit(Stored(KEY, der, hint))


async def through_the_fleet(door: Door, der: bytes) -> None:
    """Another instance's answer, pushed (one entry) through the shared store."""
    await door.ingest(KEY, der, Origin.SHARED)


async def through_the_fleet_in_bulk(door: Door, der: bytes) -> None:
    """The shared store read at start-up: like our own store's entries, signature checked later."""
    door.admit(Stored(KEY, der), Origin.SHARED)


ORIGINS: dict[str, Callable[[Door, bytes], Awaitable[None]]] = {
    "a CA's answer": through_ca,
    "an imported bundle": through_a_bundle,
    "the store": through_store,
    "the store, with its own copy of the fields": through_store_with_a_forged_hint,
    "the shared store": through_the_fleet,
    "the shared store, read in bulk": through_the_fleet_in_bulk,
}
WRITTEN_WHEN_ACCEPTED = {
    "a CA's answer", "an imported bundle", "the shared store", "the shared store, read in bulk",
}  # fmt: skip


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("case", CANDIDATES)
async def test_every_origin_meets_the_same_checks_and_policy(origin: str, case: str, tmp_path: Path) -> None:
    door = make_door(tmp_path)
    good = CA.respond(SERIAL, this_update=T0 - dt.timedelta(minutes=10))
    assert (await door.ingest(KEY, good, Origin.CA)).result is Result.STORED
    candidate = CANDIDATES[case]()
    await ORIGINS[origin](door, candidate)
    staple = served(door)
    assert staple is not None and staple.verified
    assert staple.der == (good if EXPECTED[case] == "good" else candidate), f"{case} through {origin}"
    assert door.cache.servable(KEY) == staple
    await door.drain()
    file = door.store.load(KEY)
    if EXPECTED[case] == "good" or origin not in WRITTEN_WHEN_ACCEPTED:
        assert file is not None and file.der == good, "nothing invalid or older written over it"
    else:
        assert file is not None and file.der == candidate, "on disk before it is served"


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("case", CANDIDATES)
async def test_with_nothing_held_only_what_is_valid_is_ever_served(
    origin: str, case: str, tmp_path: Path
) -> None:
    """At start-up (nothing held) a stored entry's signature is checked later, but before it is
    served: the outcome is the same as for a CA's answer."""
    door = make_door(tmp_path)
    candidate = CANDIDATES[case]()
    await ORIGINS[origin](door, candidate)
    valid = case in ("older", "revoked")
    staple = served(door)
    assert (staple is not None and staple.der == candidate) is valid, f"{case} through {origin}"
    await door.drain()
    file = door.store.load(KEY)
    if not valid:
        assert door.cache.servable(KEY) is None
        assert door.cache.current(KEY) is None or not door.cache.current(KEY).verified  # type: ignore[union-attr]
        assert origin not in WRITTEN_WHEN_ACCEPTED or file is None, "nothing invalid written"
    elif origin in WRITTEN_WHEN_ACCEPTED:
        assert file is not None and file.der == candidate, "written to our store once checked"


async def test_a_bulk_entry_from_the_fleet_is_written_to_our_store_only_once_checked(
    tmp_path: Path,
) -> None:
    door = make_door(tmp_path)
    held = door.admit(Stored(KEY, CA.respond(SERIAL)), Origin.SHARED)
    assert held is not None and not held.verified
    await door.drain()
    assert door.store.load(KEY) is None and door.unwritten == 1
    checked = door.confirm(held)
    assert checked is not None
    await door.drain()
    stored = door.store.load(KEY)
    assert stored is not None and stored.der == checked.der and door.unwritten == 0
    # An expired entry from the fleet removes nothing from our store.
    expired = CA.respond(SERIAL, this_update=T0 - dt.timedelta(hours=3), validity=dt.timedelta(hours=1))
    other = make_door(tmp_path)
    assert other.admit(Stored(KEY, expired), Origin.SHARED) is None
    assert other.store.load(KEY) is not None


async def test_an_entry_of_our_store_identical_to_one_taken_from_the_fleet_is_not_written_again(
    tmp_path: Path,
) -> None:
    door = make_door(tmp_path)
    der = CA.respond(SERIAL)
    held = door.admit(Stored(KEY, der), Origin.SHARED)
    assert held is not None and door.unwritten == 1
    assert door.admit(Stored(KEY, der)) is held, "the same bytes: nothing new"
    assert door.unwritten == 0, "our store holds them already"


async def test_a_forged_bulk_entry_from_the_fleet_never_touches_our_store(tmp_path: Path) -> None:
    door = make_door(tmp_path)
    good = CA.respond(SERIAL, this_update=T0 - dt.timedelta(minutes=10))
    assert (await door.ingest(KEY, good, Origin.CA)).result is Result.STORED
    fresh = make_door(tmp_path / "fresh")
    forged = CANDIDATES["forged"]()
    held = fresh.admit(Stored(KEY, forged), Origin.SHARED)
    assert held is not None and fresh.confirm(held) is None
    await fresh.drain()
    assert fresh.store.load(KEY) is None and fresh.unwritten == 0


async def test_an_unverified_staple_is_never_served_or_published(tmp_path: Path) -> None:
    events = Events()
    told = Told()
    events.subscribe(told)
    door = make_door(tmp_path, events)
    held = door.admit(Stored(KEY, CA.respond(SERIAL)))
    assert held is not None and not held.verified
    assert door.cache.servable(KEY) is None
    await asyncio.sleep(0)
    assert told.staples == []
    checked = door.confirm(held)
    assert checked is not None and checked.verified and door.cache.servable(KEY) == checked
    await asyncio.sleep(0)
    assert told.staples == [checked]


def test_only_the_door_writes_to_memory() -> None:
    """The memory is made and written in cache/door.py alone; Cache offers reads only."""
    assert not [name for name in vars(Cache) if name in ("put", "hold", "__setitem__", "__delitem__")]
    assert not hasattr(Door, "put")
    writers = []
    for path in sorted((ROOT / "ocspproxy").rglob("*.py")):
        text = path.read_text()
        if path.name != "door.py" and re.search(r"new_held\(|_held\[.*\]\s*=|del .*_held\[", text):
            writers.append(path.relative_to(ROOT))
    assert writers == [Path("ocspproxy/cache/memory.py")], writers  # (memory.py defines new_held)


# --- listeners -------------------------------------------------------------------------------------


class Slow(Listener):
    def stored(self, staple: Staple) -> None:
        time.sleep(0.3)


class Broken(Listener):
    def stored(self, staple: Staple) -> None:
        raise RuntimeError("listener bug")

    def dropped(self, key: CertKey) -> None:
        raise RuntimeError("listener bug")


async def test_listeners_are_told_after_the_door_returns_and_one_failing_stops_nobody(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = Events()
    first, last = Told(), Told()
    for listener in (first, Broken(), Slow(), last):
        events.subscribe(listener)
    door = make_door(tmp_path, events)
    started = time.monotonic()
    ingested = await door.ingest(KEY, CA.respond(SERIAL), Origin.CA)
    assert time.monotonic() - started < 0.2, "the write path does not wait for a listener"
    assert first.staples == [] and last.staples == [], "told after the fact"
    await asyncio.sleep(0.4)
    assert first.staples == [ingested.staple] and last.staples == [ingested.staple]
    assert capsys.readouterr().err.count('"event": "listener failed"') == 1


async def test_subscribe_twice_is_told_once_and_unsubscribe_stops_it(tmp_path: Path) -> None:
    events = Events()
    told = Told()
    events.subscribe(told)
    events.subscribe(told)
    door = make_door(tmp_path, events)
    await door.ingest(KEY, CA.respond(SERIAL), Origin.CA)
    await asyncio.sleep(0)
    assert len(told.staples) == 1
    events.unsubscribe(told)
    await door.ingest(KEY, CA.respond(SERIAL, status="revoked"), Origin.CA)
    await asyncio.sleep(0)
    assert len(told.staples) == 1


async def test_a_staple_failing_its_deferred_check_is_dropped_and_published(tmp_path: Path) -> None:
    events = Events()
    told = Told()
    events.subscribe(told)
    door = make_door(tmp_path, events)
    forged = CA.respond(SERIAL, signer="rogue", by_name=True)
    held = door.admit(Stored(KEY, forged))
    assert held is not None and door.confirm(held) is None
    await asyncio.sleep(0)
    assert told.drops == [KEY] and door.cache.current(KEY) is None


# --- the Source and Lease seams --------------------------------------------------------------------


class ListSource:
    """A Source that answers from a list (or fails), counting what it was asked."""

    def __init__(self, answers: list[bytes | SourceError]) -> None:
        self.answers = answers
        self.asked: list[tuple[CertKey, Job]] = []

    async def fetch(self, key: CertKey, job: Job) -> bytes:
        self.asked.append((key, job))
        answer = self.answers.pop(0)
        if isinstance(answer, SourceError):
            raise answer
        return answer


class ScriptedLease(LocalLease):
    """A Lease that gives the turns it is told to (then FETCH), recording what it was asked."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self.acquired: list[tuple[CertKey, float]] = []
        self.released: list[tuple[CertKey, Staple | None]] = []

    async def acquire(self, key: CertKey, ttl: float) -> Turn:
        self.acquired.append((key, ttl))
        return self.turns.pop(0) if self.turns else FETCH

    async def release(self, key: CertKey, answered: Staple | None) -> None:
        self.released.append((key, answered))


JOB = Job(issuer_cert=CA.cert, name_hash=CA.cert_id(SERIAL).issuer_name_hash, url="http://ocsp.test/")


async def test_the_refresher_takes_the_lease_asks_the_source_and_goes_through_the_door(
    tmp_path: Path,
) -> None:
    events = Events()
    told = Told()
    events.subscribe(told)
    door = make_door(tmp_path, events)
    source = ListSource([CA.respond(SERIAL), SourceError("CA down")])
    lease = ScriptedLease()
    refresher = Refresher(door=door, source=source, lease=lease, negative_ttl=60.0)
    first: Ingested = await refresher.refresh(KEY, JOB)
    assert first.result is Result.STORED and door.cache.servable(KEY) == first.staple
    assert lease.acquired == [(KEY, refresher.lease_ttl)]
    assert lease.released == [(KEY, first.staple)], "released with the staple the CA's answer left held"
    second = await refresher.refresh(KEY, JOB)
    assert second.result is Result.FAILED and second.reason == "CA down"
    assert second.staple == first.staple, "the held staple stays served"
    assert refresher.failing(KEY) == "CA down"
    await asyncio.sleep(0)
    assert told.failures == [(KEY, "CA down")]
    assert lease.released[1] == (KEY, None), "released after a failure too, with no answer"


async def test_an_answer_another_instance_fetched_is_taken_through_the_door_not_asked_again(
    tmp_path: Path,
) -> None:
    door = make_door(tmp_path)
    source = ListSource([])
    fleet = CA.respond(SERIAL)
    refresher = Refresher(door=door, source=source, lease=ScriptedLease(Turn(answer=fleet)), negative_ttl=0)
    outcome = await refresher.refresh(KEY, JOB)
    assert outcome.result is Result.STORED and source.asked == []
    staple = door.cache.servable(KEY)
    assert staple is not None and staple.der == fleet and staple.verified
    await door.drain()
    assert door.store.load(KEY) is not None, "written to our own store too"


async def test_a_forged_answer_from_the_fleet_is_refused_and_the_ca_asked(tmp_path: Path) -> None:
    door = make_door(tmp_path)
    good = CA.respond(SERIAL)
    source = ListSource([good])
    forged = CANDIDATES["forged"]()
    lease = ScriptedLease(Turn(answer=forged))
    refresher = Refresher(door=door, source=source, lease=lease, negative_ttl=0)
    outcome = await refresher.refresh(KEY, JOB)
    assert outcome.result is Result.STORED and len(source.asked) == 1
    staple = door.cache.servable(KEY)
    assert staple is not None and staple.der == good
    assert lease.released == [(KEY, staple)], "the lease learns what its answer came to"


async def test_while_another_instance_fetches_the_refresher_waits_for_its_answer(tmp_path: Path) -> None:
    door = make_door(tmp_path)
    source = ListSource([])
    fleet = CA.respond(SERIAL)
    lease = ScriptedLease(Turn(wait=0.01), Turn(wait=0.01), Turn(answer=fleet))
    refresher = Refresher(door=door, source=source, lease=lease, negative_ttl=0)
    outcome = await refresher.refresh(KEY, JOB)
    assert outcome.result is Result.STORED and source.asked == [] and len(lease.acquired) == 3
    assert lease.released == [(KEY, outcome.staple)]


async def test_a_lease_held_too_long_does_not_stop_the_fetch(tmp_path: Path) -> None:
    door = make_door(tmp_path)
    source = ListSource([CA.respond(SERIAL)])
    lease = ScriptedLease(*[Turn(wait=0.05)] * 1000)
    refresher = Refresher(door=door, source=source, lease=lease, negative_ttl=0, lease_ttl=0.1)
    outcome = await refresher.refresh(KEY, JOB)
    assert outcome.result is Result.STORED and len(source.asked) == 1
    assert 2 <= len(lease.acquired) <= 10 and lease.released == []
