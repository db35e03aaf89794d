"""The one path that writes staples: fetch -> validate -> accept -> store + memory.

The request path and the scheduler both call ``Staples.refresh``; concurrent calls for one CertKey share
a single upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog
from cachetools import TLRUCache, TTLCache
from cryptography import x509

from ocspproxy.ocsp import CertKey, build_request
from ocspproxy.policy import Verdict, accept
from ocspproxy.snapshot import Snapshot, SnapshotError, encode
from ocspproxy.staple import CertStatus, Staple
from ocspproxy.steps import Steps, run_steps
from ocspproxy.store import SnapshotStore, Stamp, Store, StoreError
from ocspproxy.upstream import Fetcher, UpstreamError
from ocspproxy.validate import (
    WITHOUT_NEXT_UPDATE,
    ExpiredResponse,
    InvalidResponse,
    check_times,
    validate_response,
)

__all__ = ["Clock", "FetchResult", "Refreshed", "Staples"]

Clock = Callable[[], datetime]
log = structlog.get_logger("ocspproxy")

# Expired staples stay in memory this long so requests can be told apart as "expired"; never served.
_EXPIRED_GRACE = timedelta(hours=1)


class FetchResult(StrEnum):
    STORED = "stored"
    REVOKED = "revoked"  # stored, and alerted: a certificate turned (or was found) revoked
    SAME = "same"
    KEPT = "kept"  # valid, but the policy kept the stored staple
    REJECTED = "rejected"  # invalid response
    FAILED = "failed"  # no usable answer
    PASSED = "passed"  # valid, handed to the waiting client, not kept


@dataclass(frozen=True, slots=True)
class Refreshed:
    result: FetchResult
    reason: str
    staple: Staple | None  # the servable staple after this fetch, if any


class Staples:
    def __init__(
        self,
        *,
        store: Store,
        fetcher: Fetcher,
        clock: Clock,
        skew: timedelta,
        negative_ttl: float,
        memory_max: int,
        without_next_update: timedelta = WITHOUT_NEXT_UPDATE,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.clock = clock
        self.skew = skew
        self.without_next_update = without_next_update
        self._memory: TLRUCache[CertKey, Staple] = TLRUCache(
            maxsize=memory_max,
            ttu=lambda _k, staple, _now: (staple.next_update + _EXPIRED_GRACE).timestamp(),
            timer=lambda: clock().timestamp(),
        )
        # Keys whose last fetch failed: requests get tryLater at once instead of asking the CA again.
        self._failing: TTLCache[CertKey, str] = TTLCache(
            maxsize=100_000, ttl=negative_ttl, timer=time.monotonic
        )
        self._inflight: dict[CertKey, asyncio.Task[Refreshed]] = {}
        self._unverified: set[CertKey] = set()  # loaded at start-up, signature not yet checked
        self._issuer_of: Callable[[CertKey], x509.Certificate | None] | None = None
        self.dropped: Callable[[CertKey], None] | None = None  # told when a stored staple fails its check
        # Told of every signature-checked staple now held for a key, and of a staple dropped (None):
        # worker processes serve hits from a copy of exactly these.
        self.changed: Callable[[CertKey, Staple | None], None] | None = None
        # The store's state, as found by the most recently started write that has finished.
        self._store_broken = False
        self._write_seq = itertools.count()
        self._state_seq = -1
        # Accepted staples the store failed to write; written once it recovers.
        self._unsaved: dict[CertKey, Staple] = {}
        # One write at a time per key, so an older staple is never written over a newer one.
        self._write_locks: weakref.WeakValueDictionary[CertKey, asyncio.Lock] = weakref.WeakValueDictionary()
        self._flush_task: asyncio.Task[None] | None = None
        # For the snapshot (stores that keep one): per key, the stamp of the stored file and the
        # staple whose bytes it holds. Set only here in the event loop once a write has returned
        # (or at load), so a pair never mixes one file's stamp with another staple's bytes.
        self._stamps: dict[CertKey, tuple[Stamp, Staple]] = {}
        self._stamps_changed = False
        self._snapshot_lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None  # the snapshot write in its thread
        # The snapshot read at start-up, until the full load has taken what the store holds
        # (open_snapshot, load_steps); no snapshot is written before that.
        self._pending = Snapshot()
        self._snapshot_size = 0
        self._from_snapshot = 0  # staples taken from it
        self._loading = False  # from open_snapshot until load_steps is done

    def __len__(self) -> int:
        return len(self._memory)

    async def close(self) -> None:
        """Cancel fetches still in flight and write the snapshot (shutdown)."""
        tasks: list[asyncio.Task[Refreshed] | asyncio.Task[None]] = list(self._inflight.values())
        if self._flush_task is not None:
            tasks.append(self._flush_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writing = self._writing
        if writing is not None and not writing.done():
            # The task that started it was cancelled; its thread goes on. Let it finish (two
            # writers could leave the older snapshot last), then write what is held now.
            await asyncio.gather(writing, return_exceptions=True)
            self._stamps_changed = True
        await self.save_snapshot()

    def current(self, key: CertKey) -> Staple | None:
        """The staple held for key, servable or recently expired; always signature-checked."""
        staple = self._memory.get(key)
        if staple is None and self._loading:
            staple = self._early(key)
        if staple is not None and not staple.verified:
            staple = self._verify_stored(staple)
        return staple

    def servable(self, key: CertKey) -> Staple | None:
        staple = self.current(key)
        return staple if staple is not None and staple.servable(self.clock()) else None

    def held_until(self, key: CertKey, now: datetime | None = None) -> Staple | None:
        """For scheduling only: the servable staple held, signature checked or not (no work)."""
        staple = self._memory.get(key)
        return staple if staple is not None and staple.servable(now or self.clock()) else None

    def batch(self) -> contextlib.AbstractContextManager[float]:
        """Within it, the memory cache reads the clock once: for start-up work on every key."""
        return self._memory.timer

    def _verify_stored(self, staple: Staple) -> Staple | None:
        """Check the signature of a staple loaded at start-up; drop it if that fails."""
        self._unverified.discard(staple.key)
        issuer = self._issuer_of(staple.key) if self._issuer_of else None
        try:
            if issuer is None:
                raise InvalidResponse("its issuer is no longer configured")
            checked = validate_response(
                staple.der,
                key=staple.key,
                issuer=issuer,
                now=self.clock(),
                skew=self.skew,
                without_next_update=self.without_next_update,
            )
        except InvalidResponse as exc:
            log.warning("stored staple invalid; dropped", key=str(staple.key), reason=str(exc))
            self._memory.pop(staple.key, None)
            self._pending.discard(staple.key)  # not taken from the snapshot again by the load
            if self._stamped(staple):
                del self._stamps[staple.key]  # its file is read and checked again next time
                self._stamps_changed = True
            if self.changed is not None:
                self.changed(staple.key, None)
            if self.dropped is not None:
                self.dropped(staple.key)
            return None
        if self._stamped(staple):
            # The same bytes: keep one object, not two, per staple.
            self._stamps[staple.key] = (self._stamps[staple.key][0], checked)
        self.put(checked)
        return checked

    def _stamped(self, staple: Staple) -> bool:
        entry = self._stamps.get(staple.key)
        return entry is not None and entry[1] is staple

    async def verify_stored(self, batch: int = 256) -> None:
        """Check every staple loaded unverified, a batch at a time between requests."""
        checked = 0
        while self._unverified:
            for key in list(itertools.islice(self._unverified, batch)):
                staple = self._memory.get(key)
                if staple is None or staple.verified:
                    self._unverified.discard(key)
                else:
                    self._verify_stored(staple)
                checked += 1
            await asyncio.sleep(0)
        log.info("stored staples verified", checked=checked, held=len(self._memory))
        await self.save_snapshot()

    async def keep_snapshot(self, every: float = 600.0) -> None:
        """Write the snapshot every so often while staples change, so that a crash costs little."""
        while True:
            await asyncio.sleep(every)
            await self.save_snapshot()

    async def save_snapshot(self) -> None:
        """Write the snapshot of the stored staples when they changed since the last one (stores
        that keep one). Never raises: a snapshot that cannot be written costs speed only."""
        store = self.store
        if not isinstance(store, SnapshotStore) or not self._stamps_changed or self._loading:
            return  # (until the full load at start-up is done, the snapshot stays as it is)
        async with self._snapshot_lock:
            if not self._stamps_changed:
                return
            self._stamps_changed = False
            now = self.clock()
            # Taken at one moment in the event loop: consistent pairs only, whatever writes are in
            # flight (a file written meanwhile gets another stamp and is read at the next start).
            entries = [entry for entry in self._stamps.values() if entry[1].servable(now)]
            self._writing = asyncio.ensure_future(
                asyncio.to_thread(lambda: store.write_snapshot(encode(entries)))
            )
            try:
                await asyncio.shield(self._writing)
            except StoreError as exc:
                self._stamps_changed = True
                log.warning("cannot write the staples snapshot", error=str(exc))
                return
            log.info("staples snapshot written", staples=len(entries))

    def fetching(self, key: CertKey) -> bool:
        return key in self._inflight

    def failing(self, key: CertKey) -> str | None:
        return self._failing.get(key)

    def put(self, staple: Staple) -> None:
        """Hold a validated staple in memory (start-up load and accepted fetches)."""
        self._memory[staple.key] = staple
        if staple.verified and self.changed is not None:
            self.changed(staple.key, staple)

    def verified(self) -> list[Staple]:
        """Every signature-checked staple held that is still servable."""
        now = self.clock()
        # .get per key: an entry may expire between the cache's iteration and the lookup.
        held = (self._memory.get(key) for key in list(self._memory))
        return [s for s in held if s is not None and s.verified and s.servable(now)]

    def refresh(
        self,
        key: CertKey,
        *,
        issuer_cert: x509.Certificate,
        name_hash: bytes,
        url: str,
        keep_unknown: bool = True,
        configured: bool = False,
    ) -> asyncio.Task[Refreshed]:
        """Start (or join) the single upstream fetch for key; the task outlives any one waiter.

        With keep_unknown false, an ``unknown`` answer is handed back but neither stored nor held:
        a scanner asking for random serials must not fill the disk or memory. A revoked staple
        stored for a configured certificate is logged at level critical, whatever was held before.
        """
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(
                self._refresh(key, issuer_cert, name_hash, url, keep_unknown, configured)
            )
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return task

    async def _refresh(
        self,
        key: CertKey,
        issuer_cert: x509.Certificate,
        name_hash: bytes,
        url: str,
        keep_unknown: bool,
        configured: bool,
    ) -> Refreshed:
        started = time.monotonic()
        fields: dict[str, object] = {"url": url, "serial": f"{key.serial:x}", "alg": key.alg}
        try:
            der = await self.fetcher.fetch(url, build_request(key, name_hash))
            candidate = validate_response(
                der,
                key=key,
                issuer=issuer_cert,
                now=self.clock(),
                skew=self.skew,
                without_next_update=self.without_next_update,
            )
        except UpstreamError as exc:
            outcome = Refreshed(FetchResult.FAILED, str(exc), self.servable(key))
        except InvalidResponse as exc:
            outcome = Refreshed(FetchResult.REJECTED, str(exc), self.servable(key))
        else:
            fields.update(
                cert_status=str(candidate.status),
                this_update=candidate.this_update.isoformat(),
                next_update=candidate.next_update.isoformat(),
                validity_s=int(candidate.validity_seconds),
            )
            if candidate.status is CertStatus.UNKNOWN and not keep_unknown:
                outcome = Refreshed(FetchResult.PASSED, "unknown to the CA; handed on, not kept", candidate)
            else:
                outcome = await self._accept(candidate, configured=configured)
        fields["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        if outcome.result in (FetchResult.FAILED, FetchResult.REJECTED):
            self._failing[key] = outcome.reason
            log.warning("upstream", result=str(outcome.result), reason=outcome.reason, **fields)
        else:
            self._failing.pop(key, None)
            log.info("upstream", result=str(outcome.result), reason=outcome.reason, **fields)
        return outcome

    async def _accept(self, candidate: Staple, *, configured: bool = False) -> Refreshed:
        now = self.clock()
        current = self.current(candidate.key)
        decision = accept(current, candidate, now)
        if not decision.stores:
            result = FetchResult.SAME if decision.verdict is Verdict.SAME else FetchResult.KEPT
            return Refreshed(result, decision.reason, self.servable(candidate.key))
        # good -> revoked always; for a configured certificate also a first (or after unknown, or
        # after an expired one) revoked answer: Apache is serving a revoked certificate.
        alert = decision.verdict is Verdict.ALERT or (
            configured
            and candidate.status is CertStatus.REVOKED
            and (current is None or current.status is not CertStatus.REVOKED)
        )
        if alert:
            log.critical(
                "certificate revoked",
                serial=f"{candidate.key.serial:x}",
                revoked_at=candidate.revocation_time.isoformat() if candidate.revocation_time else None,
                before=str(current.status) if current is not None else None,
            )
        # On disk first, then served: a staple ever served survives a crash (a revoked one is not
        # followed by the older good one after a restart). A failing store does not stop serving it.
        await self._save(candidate)
        self.put(candidate)
        result = FetchResult.REVOKED if alert else FetchResult.STORED
        return Refreshed(result, decision.reason, candidate)

    async def _save(self, staple: Staple, *, pending: bool = False) -> bool:
        """Write staple to the store; True once it is there. A failure keeps it to write on recovery.

        The store's state is logged once per change (failing, recovered), as seen by the most recently
        started write, however many writes fail. With pending, write it only if it is still the one
        waiting for the store (not superseded meanwhile).
        """
        key = staple.key
        lock = self._write_locks.get(key)
        if lock is None:
            lock = self._write_locks[key] = asyncio.Lock()
        async with lock:
            if pending and self._unsaved.get(key) is not staple:
                return True
            seq = next(self._write_seq)
            try:
                stamp = await asyncio.to_thread(self.store.save, key, staple.der)
            except StoreError as exc:
                self._unsaved[key] = staple
                self._store_state(seq, exc)
                return False
            self._unsaved.pop(key, None)  # what was waiting for this key is older than what was written
            if stamp is None:
                self._stamps.pop(key, None)  # the file changed; how it looks now is not known
            else:
                self._stamps[key] = (stamp, staple)
            self._stamps_changed = True
        if self._store_state(seq, None) and self._unsaved and self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush())
        return True

    def _store_state(self, seq: int, error: StoreError | None) -> bool:
        """Note a write's outcome; log a change of state once. True when the store has just recovered."""
        if seq < self._state_seq:
            return False  # a write started before the latest known outcome: says nothing newer
        self._state_seq = seq
        if error is not None:
            if not self._store_broken:
                log.error("store failing; serving from memory", error=str(error))
                self._store_broken = True
            return False
        if not self._store_broken:
            return False
        log.info("store recovered", unsaved=len(self._unsaved))
        self._store_broken = False
        return True

    async def _flush(self) -> None:
        """After a recovery, write the staples accepted while the store was failing."""
        try:
            for key, staple in list(self._unsaved.items()):
                if not staple.servable(self.clock()):
                    if self._unsaved.get(key) is staple:
                        del self._unsaved[key]  # never servable again: nothing to keep
                    continue
                if not await self._save(staple, pending=True):
                    return  # failing again; the next recovery starts over
        finally:
            self._flush_task = None

    def open_snapshot(self, issuer_of: Callable[[CertKey], x509.Certificate | None]) -> int:
        """Start-up, before the listener opens: read the snapshot (stores that keep one). Returns
        how many staples it holds.

        Until ``load_steps`` has run, a stored staple can be served at once when its issuer is known
        already (``issuer_of`` may know only some issuers yet): ``current`` takes it from the
        snapshot once its file is seen unchanged (one ``lstat``), else reads its file, and checks it
        in full (times, signature) before it is served. Anything else waits for the full load.
        """
        self._issuer_of = issuer_of
        self._loading = True
        if isinstance(self.store, SnapshotStore):
            self._pending = self._read_snapshot(self.store)
        self._snapshot_size = len(self._pending)
        return self._snapshot_size

    def load_steps(self, batch: int = 128) -> Steps[tuple[int, int]]:
        """Hold every servable stored staple, a few at a time (after ``open_snapshot``, once
        ``issuer_of`` knows every issuer). Returns (loaded, skipped). See ``load``."""
        counts = [0, 0]

        def report(path: str, exc: Exception) -> None:
            counts[1] += 1
            log.warning("stored staple unreadable; skipped", path=path, error=str(exc))

        store = self.store
        entries: Iterator[tuple[CertKey, Stamp | None, bytes | None]]
        if isinstance(store, SnapshotStore):
            snapshot = self._pending
            known = {key: stamp for key in snapshot if (stamp := snapshot.stamp(key)) is not None}
            yield
            entries = store.load_all_stamped(report, known)
        else:
            entries = ((key, None, der) for key, der in store.load_all(report))
        while chunk := list(itertools.islice(entries, batch)):
            self._merge(chunk, counts)
            yield
        return self._merged(counts)

    def load(self, issuer_of: Callable[[CertKey], x509.Certificate | None]) -> tuple[int, int]:
        """``open_snapshot`` and ``load_steps`` at once. Returns (loaded, skipped).

        Each file is validated again as if fetched now: a damaged, foreign or expired file is reported
        and skipped, never fatal. Expired files are removed: they can never be served again. The
        signature check, most of the cost, is deferred: a staple is checked before it is first
        served or compared, and ``verify_stored`` checks the rest in the background, so 100,000
        stored staples do not hold the listener closed for a minute.

        With a store that keeps a snapshot, a file unchanged since the snapshot is not read: its
        staple comes from the snapshot (DER and parsed fields), its times are checked here and the
        rest, like any stored staple, before it is first served.
        """
        self.open_snapshot(issuer_of)
        return run_steps(self.load_steps())

    def _merge(self, entries: list[tuple[CertKey, Stamp | None, bytes | None]], counts: list[int]) -> None:
        """Hold the servable staples of entries; counts is [loaded, skipped], updated."""
        issuer_of = self._issuer_of
        assert issuer_of is not None, "open_snapshot first"
        now = self.clock()
        with self._memory.timer:  # one clock reading for the whole batch, not one per staple
            for key, stamp, der in entries:
                if key in self._memory:
                    counts[0] += 1  # taken from the snapshot already, to answer a request
                    continue
                issuer = issuer_of(key)
                if issuer is None:
                    counts[1] += 1
                    log.warning("stored staple for an issuer no longer configured; skipped", key=str(key))
                    continue
                held = self._pending.staple(key) if der is None else None
                if der is None and held is None:
                    # Its snapshot entry was taken to answer a request and failed its check: the
                    # file (unchanged, so not read so far) decides.
                    der = self._read_again(key)
                    if der is None:
                        counts[1] += 1
                        continue
                try:
                    if held is not None:
                        staple = held
                        check_times(staple.this_update, staple.next_update, now=now, skew=self.skew)
                        self._from_snapshot += 1
                    else:
                        assert der is not None
                        staple = validate_response(
                            der,
                            key=key,
                            issuer=issuer,
                            now=now,
                            skew=self.skew,
                            without_next_update=self.without_next_update,
                            check_signature=False,
                        )
                except ExpiredResponse as exc:
                    counts[1] += 1
                    log.info("stored staple expired; removed", key=str(key), reason=str(exc))
                    try:
                        self.store.delete(key)
                    except StoreError as err:
                        log.warning("cannot remove expired staple", key=str(key), error=str(err))
                    continue
                except InvalidResponse as exc:
                    counts[1] += 1
                    log.warning("stored staple invalid; skipped", key=str(key), reason=str(exc))
                    continue
                self.put(staple)
                self._unverified.add(key)
                if stamp is not None:
                    self._stamps[key] = (stamp, staple)
                counts[0] += 1

    def _read_again(self, key: CertKey) -> bytes | None:
        try:
            return self.store.load(key)
        except StoreError as exc:
            log.warning("stored staple unreadable; skipped", key=str(key), error=str(exc))
            return None

    def _merged(self, counts: list[int]) -> tuple[int, int]:
        """After the last batch: the snapshot is no longer needed; it is written again when it
        does not describe exactly what was loaded."""
        size, used = self._snapshot_size, self._from_snapshot
        # (or changed already: a snapshot entry taken early that failed its check)
        self._stamps_changed |= used != size or len(self._stamps) != size
        if size:
            log.info("staples snapshot used", staples=used, of=size)
        self._pending.close()
        self._loading = False
        return counts[0], counts[1]

    def _early(self, key: CertKey) -> Staple | None:
        """Before the full load: key's stored staple if its issuer is known already, from the
        snapshot when its file is unchanged since (signature checked by the caller), else read from
        its file and checked in full. None otherwise: the full load decides."""
        issuer = self._issuer_of(key) if self._issuer_of is not None else None
        if issuer is None:
            return None
        store, now = self.store, self.clock()
        stamp: Stamp | None = None
        try:
            if isinstance(store, SnapshotStore):
                stamp = self._pending.stamp(key)
                if (
                    stamp is not None
                    and store.stamp(key) == stamp
                    and (held := self._pending.staple(key)) is not None
                ):
                    staple = held
                    check_times(staple.this_update, staple.next_update, now=now, skew=self.skew)
                    self._from_snapshot += 1
                    self._stamps[key] = (stamp, staple)
                    self._unverified.add(key)
                    self.put(staple)
                    return staple
                # Written since the snapshot (a crash before it was written again, a file
                # carried in), or no snapshot at all: one file read.
                found = store.load_stamped(key)
                der, stamp = found if found is not None else (None, None)
            else:
                der = store.load(key)
            if der is None:
                return None
            staple = validate_response(
                der,
                key=key,
                issuer=issuer,
                now=now,
                skew=self.skew,
                without_next_update=self.without_next_update,
            )
        except (StoreError, InvalidResponse):
            return None  # the full load reports it (and removes it if expired)
        if stamp is not None:
            self._stamps[key] = (stamp, staple)
        self.put(staple)
        return staple

    @staticmethod
    def _read_snapshot(store: SnapshotStore) -> Snapshot:
        """The snapshot; an empty one when it is missing or unusable (start-up reads the files)."""
        try:
            return Snapshot(store.read_snapshot())
        except (StoreError, SnapshotError) as exc:
            log.warning("staples snapshot unusable; reading every stored staple", error=str(exc))
            return Snapshot()
