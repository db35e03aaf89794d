"""The staples snapshot: unchanged staple files are only lstat-ed at start-up, never trusted unchecked."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocspproxy.cache.door import Door, Origin
from ocspproxy.cache.events import Events, Listener
from ocspproxy.cache.warmstart import WarmStart
from ocspproxy.certs.catalog import Catalog
from ocspproxy.certs.inventory import Inventory, Issuer
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.core.validate import Rules, validate_response
from ocspproxy.steps import run_steps
from ocspproxy.store import FileStore, snapshot
from ocspproxy.store import files as files_module
from ocspproxy.store.atomic import Stamp, write_atomically
from ocspproxy.store.directory import INDEX_NAME, SNAPSHOT_NAME
from tests.pki import TestCA, now

CA = TestCA(ocsp_url="http://ocsp.test/")
SKEW = dt.timedelta(seconds=300)


class Dropped(Listener):
    def __init__(self) -> None:
        self.keys: list[CertKey] = []

    def dropped(self, key: CertKey) -> None:
        self.keys.append(key)


class Rig:
    """The door and the start-up load over a file store, with CA's issuer known."""

    def __init__(self, store: FileStore, *, clock: dt.datetime | None = None) -> None:
        inventory = Inventory()
        inventory.add_issuer(Issuer.of(CA.cert))
        self.store = store
        self.events = Events()
        self.door = Door(
            store=store,
            catalog=Catalog(inventory),
            events=self.events,
            rules=Rules(skew=SKEW),
            clock=(lambda: clock) if clock is not None else now,
            memory_max=1000,
        )
        self.warm = WarmStart(store=store, door=self.door)

    def load(self) -> tuple[int, int]:
        self.warm.open()
        return run_steps(self.warm.load_steps())

    def served(self, key: CertKey) -> Staple | None:
        """What a request gets: the held staple, its signature checked first."""
        held = self.door.cache.current(key)
        return None if held is None else self.door.confirm(held)

    async def accepted(self, der: bytes, serial: int) -> None:
        """The one door: validated, accepted, on disk first, then in memory."""
        ingested = await self.door.ingest(CA.cert_id(serial).key, der, Origin.CA)
        assert ingested.result in ("stored", "revoked"), ingested.reason

    async def checkpoint(self) -> None:
        await asyncio.to_thread(self.store.checkpoint, now())

    async def close(self) -> None:
        await self.door.close()
        await self.checkpoint()


def valid(der: bytes, serial: int) -> Staple:
    return validate_response(der, key=CA.cert_id(serial).key, issuer=CA.cert, now=now(), skew=SKEW)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the staple files read."""
    seen: list[str] = []
    real = FileStore._read_entry

    def counting(path: Path) -> tuple[bytes, os.stat_result]:
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(FileStore, "_read_entry", staticmethod(counting))
    yield seen


async def a_state(tmp_path: Path, serials: list[int]) -> tuple[Path, dict[int, bytes]]:
    """A state directory with a good staple per serial and a snapshot of them."""
    state = tmp_path / "state"
    rig = Rig(FileStore(state))
    ders = {serial: CA.respond(serial) for serial in serials}
    for serial, der in ders.items():
        await rig.accepted(der, serial)
    await rig.close()  # writes the snapshot
    assert (state / SNAPSHOT_NAME).exists()
    return state, ders


async def test_a_snapshot_hit_builds_unverified_staples_checked_before_served(
    tmp_path: Path, reads: list[str]
) -> None:
    serials = [CA.leaf().serial for _ in range(3)]
    state, ders = await a_state(tmp_path, serials)
    reads.clear()
    rig = Rig(FileStore(state))
    assert rig.load() == (3, 0)
    assert reads == []  # only lstat-ed
    for serial in serials:
        key = CA.cert_id(serial).key
        held = rig.door.cache.held_until(key)
        assert held is not None and not held.verified
        assert rig.door.cache.servable(key) is None, "never served unchecked"
        served = rig.served(key)
        assert served is not None and served.verified and served.der == ders[serial]
        assert served == valid(ders[serial], serial)  # the same fields as parsing the file
        assert rig.door.cache.servable(key) == served
    # The same as a start-up without a snapshot.
    (state / SNAPSHOT_NAME).unlink()
    without = Rig(FileStore(state))
    assert without.load() == (3, 0)
    assert len(reads) == 3


async def test_a_tampered_snapshot_der_is_dropped_at_verification(tmp_path: Path, reads: list[str]) -> None:
    good, tampered = CA.leaf().serial, CA.leaf().serial
    state, ders = await a_state(tmp_path, [good, tampered])
    entries = snapshot.decode((state / SNAPSHOT_NAME).read_bytes())
    key = CA.cert_id(tampered).key
    stamp, staple = entries[key]
    der = bytearray(staple.der)
    der[-5] ^= 0x01  # inside the signature
    entries[key] = (stamp, dataclasses.replace(staple, der=bytes(der)))
    (state / SNAPSHOT_NAME).write_bytes(snapshot.encode(entries.values()))

    reads.clear()
    rig = Rig(FileStore(state))
    dropped = Dropped()
    rig.events.subscribe(dropped)
    assert rig.load() == (2, 0)
    assert reads == []  # both taken from the snapshot ...
    assert rig.served(key) is None  # ... and the tampered one never served
    await asyncio.sleep(0)  # listeners are told on the loop's next turn
    assert dropped.keys == [key]
    assert rig.door.cache.current(key) is None
    served = rig.served(CA.cert_id(good).key)
    assert served is not None and served.der == ders[good]


async def test_a_file_replaced_after_the_snapshot_wins(tmp_path: Path, reads: list[str]) -> None:
    serial = CA.leaf().serial
    state, _ = await a_state(tmp_path, [serial])
    # A newer staple (revoked) written after the snapshot, e.g. just before a crash.
    revoked = CA.respond(serial, status="revoked", this_update=now() - dt.timedelta(seconds=10))
    FileStore(state).save(valid(revoked, serial))
    reads.clear()
    rig = Rig(FileStore(state))
    assert rig.load() == (1, 0)
    assert len(reads) == 1
    served = rig.served(CA.cert_id(serial).key)
    assert served is not None and served.status is CertStatus.REVOKED and served.der == revoked


class PausingStore(FileStore):
    """Saves pause after the file is in place, before returning: a write in flight."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.written = threading.Event()
        self.release = threading.Event()

    def save(self, staple: Staple) -> None:
        super().save(staple)
        self.written.set()
        assert self.release.wait(10)


async def test_a_save_in_flight_during_the_snapshot_is_never_paired_with_the_old_staple(
    tmp_path: Path,
) -> None:
    serial = CA.leaf().serial
    key = CA.cert_id(serial).key
    state, ders = await a_state(tmp_path, [serial])
    other = CA.leaf().serial
    FileStore(state).save(valid(CA.respond(other), other))  # a file the snapshot does not know
    store = PausingStore(state)
    rig = Rig(store)
    assert rig.load() == (2, 0)  # so a snapshot is due

    revoked = CA.respond(serial, status="revoked", this_update=now() - dt.timedelta(seconds=10))
    saving = asyncio.create_task(rig.accepted(revoked, serial))
    assert await asyncio.to_thread(store.written.wait, 10)
    await rig.checkpoint()  # the revoked file is on disk; its save has not returned
    store.release.set()
    await saving

    entries = snapshot.decode((state / SNAPSHOT_NAME).read_bytes())
    stamp, staple = entries[key]
    # Whichever staple the snapshot holds, it comes with the stamp of the file that held exactly it:
    # the good one with the old file's stamp, or the revoked one with the new file's.
    on_disk = Stamp.of(os.lstat(store.path_for(key)))
    assert staple.der in (ders[serial], revoked)
    assert (stamp == on_disk) == (staple.der == revoked)
    restarted = Rig(FileStore(state))  # a crash now: the snapshot is not written again
    assert restarted.load() == (2, 0)
    served = restarted.served(key)
    assert served is not None and served.status is CertStatus.REVOKED


async def test_expired_snapshot_entries_are_removed(tmp_path: Path, reads: list[str]) -> None:
    short, long = CA.leaf().serial, CA.leaf().serial
    state = tmp_path / "state"
    rig = Rig(FileStore(state))
    await rig.accepted(CA.respond(short, validity=dt.timedelta(minutes=5)), short)
    await rig.accepted(CA.respond(long, validity=dt.timedelta(hours=5)), long)
    await rig.close()
    reads.clear()
    later = Rig(FileStore(state), clock=now() + dt.timedelta(minutes=10))
    assert later.load() == (1, 1)
    assert reads == []
    assert not FileStore(state).path_for(CA.cert_id(short).key).exists()
    assert later.door.cache.held_until(CA.cert_id(long).key) is not None


@pytest.mark.parametrize("damage", ["truncated", "flipped", "version", "garbage", "empty"])
async def test_an_unusable_snapshot_is_ignored(tmp_path: Path, reads: list[str], damage: str) -> None:
    serials = [CA.leaf().serial for _ in range(3)]
    state, ders = await a_state(tmp_path, serials)
    path = state / SNAPSHOT_NAME
    good = path.read_bytes()
    header, body = good.split(b"\n", 1)
    flipped = bytearray(good)
    flipped[-10] ^= 0x01
    path.write_bytes(
        {
            "truncated": good[: len(good) - 7],
            "flipped": bytes(flipped),
            "version": header.replace(b" 1 ", b" 9 ") + b"\n" + body,
            "garbage": os.urandom(300),
            "empty": b"",
        }[damage]
    )
    with pytest.raises(ValueError):
        snapshot.decode(path.read_bytes())
    reads.clear()
    rig = Rig(FileStore(state))
    assert rig.load() == (3, 0)
    assert len(reads) == 3  # every file read, as without a snapshot
    for serial in serials:
        served = rig.served(CA.cert_id(serial).key)
        assert served is not None and served.der == ders[serial]


async def test_the_snapshot_is_written_after_the_background_check_and_only_when_changed(
    tmp_path: Path,
) -> None:
    serial = CA.leaf().serial
    state, _ = await a_state(tmp_path, [serial])
    path = state / SNAPSHOT_NAME
    (state / SNAPSHOT_NAME).unlink()
    rig = Rig(FileStore(state))
    rig.load()
    await rig.warm.check_all()
    await rig.checkpoint()
    assert path.exists()
    written = path.stat().st_ino
    again = Rig(FileStore(state))
    again.load()
    await again.warm.check_all()
    await again.close()
    assert path.stat().st_ino == written  # all from the snapshot: nothing new to write


def test_state_files_do_not_upset_the_directory_checks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = FileStore(state)
    key = CA.cert_id(1).key
    staple = valid(CA.respond(1), 1)
    store.save(staple)
    store.checkpoint(now())
    (state / INDEX_NAME).write_bytes(b"index")
    (state / f".tmp-{SNAPSHOT_NAME}.0123abcd").write_bytes(b"torn")
    (state / f".tmp-{INDEX_NAME}.0123abcd").write_bytes(b"torn")
    state.chmod(0o755)
    errors: list[str] = []
    reopened = FileStore(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700  # tightened: nothing foreign there
    assert sorted(os.listdir(state)) == sorted([f"{key}.der", INDEX_NAME, SNAPSHOT_NAME])
    loaded = {s.key: s.der for s in reopened.load_all(lambda path, exc: errors.append(path))}
    assert loaded == {key: staple.der}
    assert errors == []
    assert stat.S_IMODE((state / SNAPSHOT_NAME).stat().st_mode) == 0o600


def test_a_saved_file_is_paired_with_the_stamp_of_the_written_file(tmp_path: Path, reads: list[str]) -> None:
    state = tmp_path / "state"
    store = FileStore(state)
    one = valid(CA.respond(1), 1)
    store.save(one)
    store.checkpoint(now())
    entries = snapshot.decode((state / SNAPSHOT_NAME).read_bytes())
    assert entries[one.key][0] == Stamp.of(os.lstat(store.path_for(one.key)))
    again = FileStore(state)
    again.prepare()
    assert [(s.key, s.hint is not None) for s in again.load_all(lambda p, e: None)] == [(one.key, True)]
    assert reads == []
    two = valid(CA.respond(1, this_update=now() - dt.timedelta(seconds=5)), 1)
    store.save(two)  # a new file, another stamp: read, not taken from the snapshot
    third = FileStore(state)
    third.prepare()
    assert [(s.der, s.hint) for s in third.load_all(lambda p, e: None)] == [(two.der, None)]
    assert reads == [store.path_for(one.key).name]


def test_times_come_back_to_the_microsecond() -> None:
    import random

    from ocspproxy.store.snapshot import _EPOCH, _US, _time, _us

    rng = random.Random(7)
    samples = [0, 1, (1 << 32) * 1_000_000 - 1, (1 << 32) * 1_000_000, -1, -(10**15)]
    samples += [rng.randrange(0, (1 << 32) * 1_000_000) for _ in range(20_000)]
    for us in samples:
        when = _time(us)
        assert when == _EPOCH + us * _US and _us(when) == us


async def test_a_snapshot_write_cut_short_by_shutdown_is_finished_then_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, later = CA.leaf().serial, CA.leaf().serial
    state = tmp_path / "state"
    rig = Rig(FileStore(state))
    await rig.accepted(CA.respond(first), first)
    real = write_atomically
    started = threading.Event()

    def slow(directory: Path, name: str, data: bytes) -> Stamp:
        if name == SNAPSHOT_NAME and not started.is_set():
            started.set()
            time.sleep(0.3)  # a slow disk, the first time
        return real(directory, name, data)

    monkeypatch.setattr(files_module, "write_atomically", slow)
    saving = asyncio.create_task(rig.checkpoint())
    await asyncio.to_thread(started.wait, 5)
    saving.cancel()  # shutdown cancels the task that writes it; its thread goes on
    await asyncio.gather(saving, return_exceptions=True)
    await rig.accepted(CA.respond(later), later)  # held after that write took its entries
    await rig.close()
    await asyncio.sleep(0.5)  # any write still going on has finished: the last one counts
    keys = set(snapshot.decode((state / SNAPSHOT_NAME).read_bytes()))
    assert keys == {CA.cert_id(first).key, CA.cert_id(later).key}
