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
from cryptography import x509

from ocspproxy import snapshot
from ocspproxy.ocsp import CertKey
from ocspproxy.staple import CertStatus, Staple
from ocspproxy.staples import Staples
from ocspproxy.store import FileStore, Stamp
from ocspproxy.store.files import INDEX_NAME, SNAPSHOT_NAME
from ocspproxy.upstream import Fetcher, UpstreamSettings
from ocspproxy.validate import validate_response
from tests.pki import TestCA, now

CA = TestCA(ocsp_url="http://ocsp.test/")
SKEW = dt.timedelta(seconds=300)


def issuer_of(key: CertKey) -> x509.Certificate | None:
    return CA.cert if key == CA.cert_id(key.serial).key else None


def make_staples(store: FileStore, *, clock: dt.datetime | None = None) -> Staples:
    return Staples(
        store=store,
        fetcher=Fetcher(UpstreamSettings()),  # never started: nothing is fetched here
        clock=(lambda: clock) if clock is not None else now,
        skew=SKEW,
        negative_ttl=0.0,
        memory_max=1000,
    )


def valid(der: bytes, serial: int) -> Staple:
    return validate_response(der, key=CA.cert_id(serial).key, issuer=CA.cert, now=now(), skew=SKEW)


async def accepted(staples: Staples, der: bytes, serial: int) -> None:
    """The one write path: accept (on disk first, then in memory)."""
    await staples._accept(valid(der, serial))


def load(staples: Staples) -> tuple[int, int]:
    return staples.load(issuer_of)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the staple files read."""
    seen: list[str] = []
    real = FileStore._read

    def counting(path: Path) -> tuple[bytes, Stamp]:
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(FileStore, "_read", staticmethod(counting))
    yield seen


async def a_state(tmp_path: Path, serials: list[int]) -> tuple[Path, dict[int, bytes]]:
    """A state directory with a good staple per serial and a snapshot of them."""
    state = tmp_path / "state"
    staples = make_staples(FileStore(state))
    ders = {serial: CA.respond(serial) for serial in serials}
    for serial, der in ders.items():
        await accepted(staples, der, serial)
    await staples.close()  # writes the snapshot
    assert (state / SNAPSHOT_NAME).exists()
    return state, ders


async def test_a_snapshot_hit_builds_unverified_staples_checked_before_served(
    tmp_path: Path, reads: list[str]
) -> None:
    serials = [CA.leaf().serial for _ in range(3)]
    state, ders = await a_state(tmp_path, serials)
    reads.clear()
    staples = make_staples(FileStore(state))
    assert load(staples) == (3, 0)
    assert reads == []  # only lstat-ed
    for serial in serials:
        key = CA.cert_id(serial).key
        held = staples.held_until(key)
        assert held is not None and not held.verified
        served = staples.servable(key)
        assert served is not None and served.verified and served.der == ders[serial]
        assert served == valid(ders[serial], serial)  # the same fields as parsing the file
    # The same as a start-up without a snapshot.
    (state / SNAPSHOT_NAME).unlink()
    without = make_staples(FileStore(state))
    assert load(without) == (3, 0)
    assert len(reads) == 3


async def test_a_tampered_snapshot_der_is_dropped_at_verification(tmp_path: Path, reads: list[str]) -> None:
    good, tampered = CA.leaf().serial, CA.leaf().serial
    state, ders = await a_state(tmp_path, [good, tampered])
    store = FileStore(state)
    data = store.read_snapshot()
    assert data is not None
    entries = snapshot.decode(data)
    key = CA.cert_id(tampered).key
    stamp, staple = entries[key]
    der = bytearray(staple.der)
    der[-5] ^= 0x01  # inside the signature
    entries[key] = (stamp, dataclasses.replace(staple, der=bytes(der)))
    store.write_snapshot(snapshot.encode(entries.values()))

    reads.clear()
    staples = make_staples(store)
    dropped: list[CertKey] = []
    staples.dropped = dropped.append
    assert load(staples) == (2, 0)
    assert reads == []  # both taken from the snapshot ...
    assert staples.servable(key) is None  # ... and the tampered one never served
    assert dropped == [key]
    served = staples.servable(CA.cert_id(good).key)
    assert served is not None and served.der == ders[good]


async def test_a_file_replaced_after_the_snapshot_wins(tmp_path: Path, reads: list[str]) -> None:
    serial = CA.leaf().serial
    state, _ = await a_state(tmp_path, [serial])
    # A newer staple (revoked) written after the snapshot, e.g. just before a crash.
    revoked = CA.respond(serial, status="revoked", this_update=now() - dt.timedelta(seconds=10))
    FileStore(state).save(CA.cert_id(serial).key, revoked)
    reads.clear()
    staples = make_staples(FileStore(state))
    assert load(staples) == (1, 0)
    assert len(reads) == 1
    served = staples.servable(CA.cert_id(serial).key)
    assert served is not None and served.status is CertStatus.REVOKED and served.der == revoked


class PausingStore(FileStore):
    """Saves pause after the file is in place, before returning: a write in flight."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.written = threading.Event()
        self.release = threading.Event()

    def save(self, key: CertKey, der: bytes) -> Stamp:
        stamp = super().save(key, der)
        self.written.set()
        assert self.release.wait(10)
        return stamp


async def test_a_save_in_flight_during_the_snapshot_is_never_paired_with_the_old_staple(
    tmp_path: Path,
) -> None:
    serial = CA.leaf().serial
    key = CA.cert_id(serial).key
    state, ders = await a_state(tmp_path, [serial])
    store = PausingStore(state)
    staples = make_staples(store)
    assert load(staples) == (1, 0)
    staples._stamps_changed = True  # pretend something else changed: a snapshot is due

    revoked = CA.respond(serial, status="revoked", this_update=now() - dt.timedelta(seconds=10))
    saving = asyncio.create_task(accepted(staples, revoked, serial))
    assert await asyncio.to_thread(store.written.wait, 10)
    await staples.save_snapshot()  # the revoked file is on disk; its save has not returned
    store.release.set()
    await saving

    entries = snapshot.decode((state / SNAPSHOT_NAME).read_bytes())
    stamp, staple = entries[key]
    assert staple.der == ders[serial]  # the good staple, with the stamp of the file it was in ...
    assert stamp != Stamp.of(os.lstat(store.path_for(key)))  # ... which is no longer the one there
    restarted = make_staples(FileStore(state))  # a crash now: the snapshot is not written again
    assert load(restarted) == (1, 0)
    served = restarted.servable(key)
    assert served is not None and served.status is CertStatus.REVOKED


async def test_expired_snapshot_entries_are_removed(tmp_path: Path, reads: list[str]) -> None:
    short, long = CA.leaf().serial, CA.leaf().serial
    state = tmp_path / "state"
    staples = make_staples(FileStore(state))
    await accepted(staples, CA.respond(short, validity=dt.timedelta(minutes=5)), short)
    await accepted(staples, CA.respond(long, validity=dt.timedelta(hours=5)), long)
    await staples.close()
    reads.clear()
    later = make_staples(FileStore(state), clock=now() + dt.timedelta(minutes=10))
    assert load(later) == (1, 1)
    assert reads == []
    assert not FileStore(state).path_for(CA.cert_id(short).key).exists()
    assert later.held_until(CA.cert_id(long).key) is not None


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
    staples = make_staples(FileStore(state))
    assert load(staples) == (3, 0)
    assert len(reads) == 3  # every file read, as without a snapshot
    for serial in serials:
        served = staples.servable(CA.cert_id(serial).key)
        assert served is not None and served.der == ders[serial]


async def test_the_snapshot_is_written_after_the_background_check_and_only_when_changed(
    tmp_path: Path,
) -> None:
    serial = CA.leaf().serial
    state, _ = await a_state(tmp_path, [serial])
    path = state / SNAPSHOT_NAME
    (state / SNAPSHOT_NAME).unlink()
    staples = make_staples(FileStore(state))
    load(staples)
    await staples.verify_stored()
    assert path.exists()
    written = path.stat().st_ino
    again = make_staples(FileStore(state))
    load(again)
    await again.verify_stored()
    await again.close()
    assert path.stat().st_ino == written  # all from the snapshot: nothing new to write


def test_state_files_do_not_upset_the_directory_checks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = FileStore(state)
    key = CA.cert_id(1).key
    store.save(key, b"der")
    store.write_snapshot(b"snapshot")
    (state / INDEX_NAME).write_bytes(b"index")
    (state / f".tmp-{SNAPSHOT_NAME}.0123abcd").write_bytes(b"torn")
    (state / f".tmp-{INDEX_NAME}.0123abcd").write_bytes(b"torn")
    state.chmod(0o755)
    errors: list[str] = []
    reopened = FileStore(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700  # tightened: nothing foreign there
    assert sorted(os.listdir(state)) == sorted([f"{key}.der", INDEX_NAME, SNAPSHOT_NAME])
    assert dict(reopened.load_all(lambda path, exc: errors.append(path))) == {key: b"der"}
    assert errors == []
    assert stat.S_IMODE((state / SNAPSHOT_NAME).stat().st_mode) == 0o600


def test_a_saved_file_keeps_the_stamp_save_returned(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state")
    key = CA.cert_id(1).key
    stamp = store.save(key, b"one")
    assert Stamp.of(os.lstat(store.path_for(key))) == stamp
    assert list(store.load_all_stamped(lambda p, e: None, {key: stamp})) == [(key, stamp, None)]
    newer = store.save(key, b"two")
    assert newer != stamp
    assert list(store.load_all_stamped(lambda p, e: None, {key: stamp})) == [(key, newer, b"two")]


def test_times_come_back_to_the_microsecond() -> None:
    import random

    from ocspproxy.snapshot import _EPOCH, _US, _time, _us

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
    store = FileStore(state)
    staples = make_staples(store)
    await accepted(staples, CA.respond(first), first)
    real = store.write_snapshot
    started = threading.Event()

    def slow(data: bytes) -> None:
        if not started.is_set():
            started.set()
            time.sleep(0.3)  # a slow disk, the first time
        real(data)

    monkeypatch.setattr(store, "write_snapshot", slow)
    saving = asyncio.create_task(staples.save_snapshot())
    await asyncio.to_thread(started.wait, 5)
    saving.cancel()  # shutdown cancels the task that writes it; its thread goes on
    await asyncio.gather(saving, return_exceptions=True)
    await accepted(staples, CA.respond(later), later)  # held after that write took its entries
    await staples.close()
    await asyncio.sleep(0.5)  # any write still going on has finished: the last one counts
    keys = set(snapshot.decode((state / SNAPSHOT_NAME).read_bytes()))
    assert keys == {CA.cert_id(first).key, CA.cert_id(later).key}
