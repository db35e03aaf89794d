"""One door in: the only way a staple enters memory, whatever its origin.

Every answer — fetched from a CA, read from our store at start-up, and every later source (a shared
store, an imported bundle, a local signer) — goes through the same steps:

1. validate in full against the issuer *we* know for its key (``Catalog``): status, exactly the
   CertID asked, signer, signature, times (``Rules``); an origin never brings its own issuer;
2. accept or keep, against what is held (``core.policy.accept``: newer only; revoked beats good;
   unknown never replaces good; identical bytes change nothing);
3. persist, when the origin calls for it (not what came from the store itself): on disk before it
   is served, so a staple ever served survives a crash;
4. hold it in memory and publish it to the listeners (``Events``).

One exception, for start-up speed and only for entries read in bulk (our own store's, the shared
store's) when nothing is held for their key (``admit``): the signature check is deferred. Such a
staple is held marked unverified; it is never served, compared, published or written to our store
before ``confirm`` has checked it in full (on the first request for it, or in the background), and
it is dropped (with a ``dropped`` event) if that fails.
Nothing else writes to the memory this module makes (``Cache`` is a read-only view of it).
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import structlog

from ocspproxy.cache.events import Events
from ocspproxy.cache.memory import Cache, new_held
from ocspproxy.cache.persist import Persister
from ocspproxy.certs.catalog import Catalog
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import Verdict, accept
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.core.validate import ExpiredResponse, InvalidResponse, Rules
from ocspproxy.store.base import Store, Stored, StoreError

__all__ = ["Door", "Ingested", "Origin", "Result"]

log = structlog.get_logger("ocspproxy")


class Origin(StrEnum):
    CA = "ca"  # an answer from a Source: the certificate's CA responder
    STORE = "store"  # our own store (it is there already: not written again)
    SHARED = "shared"  # the fleet's shared store (another instance's answer; not trusted either)
    BUNDLE = "bundle"  # carried in by `ocspproxy bundle import` (ocspproxy/bundle/inbox.py)

    @property
    def persists(self) -> bool:
        return self is not Origin.STORE


class Result(StrEnum):
    STORED = "stored"
    REVOKED = "revoked"  # stored, and alerted: a certificate turned (or was found) revoked
    SAME = "same"  # identical bytes: nothing to do
    KEPT = "kept"  # valid, but the policy kept the staple held
    REJECTED = "rejected"  # invalid
    PASSED = "passed"  # valid, handed to the waiting client, not kept
    FAILED = "failed"  # no answer at all (the Source failed; set by the refresher)
    HELD = "held"  # no answer: the Source was not asked, its upstream keeps failing (refresher)


@dataclass(frozen=True, slots=True)
class Ingested:
    result: Result
    reason: str
    staple: Staple | None  # the servable staple for the key after this, if any
    candidate: Staple | None = None  # the validated answer, kept or not
    held_by: str | None = None  # HELD: the upstream given a pause; its next fetch after held_for s
    held_for: float = 0.0

    @property
    def failed(self) -> bool:
        return self.result in (Result.FAILED, Result.REJECTED, Result.HELD)


class Door:
    def __init__(
        self,
        *,
        store: Store,
        catalog: Catalog,
        events: Events,
        rules: Rules,
        clock: Callable[[], datetime],
        memory_max: int,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.events = events
        self.rules = rules
        self.clock = clock
        self._held = new_held(clock=clock, maxsize=memory_max)
        self.cache = Cache(self._held, clock)
        self.persister = Persister(store, clock)
        self._unverified: set[CertKey] = set()
        self._unpersisted: set[CertKey] = set()  # admitted from elsewhere: written once checked
        self._to_write: dict[CertKey, Staple] = {}
        self._writer: asyncio.Task[None] | None = None
        # One ingest at a time per key: the decision and the write belong together.
        self._locks: weakref.WeakValueDictionary[CertKey, asyncio.Lock] = weakref.WeakValueDictionary()

    async def ingest(
        self, key: CertKey, der: bytes, origin: Origin, *, keep_unknown: bool = True, configured: bool = False
    ) -> Ingested:
        """Validate der as the answer for key, then accept, persist, hold and publish it. With
        keep_unknown false an ``unknown`` answer is handed back but not kept (a scanner asking for
        random serials must not fill the disk or memory). A revoked staple of a configured
        certificate is logged at level critical, whatever was held before."""
        issuer = self.catalog.issuer_for_key(key)
        if issuer is None:
            return Ingested(Result.REJECTED, "issuer not known", self.cache.servable(key))
        try:
            candidate = self.rules.validate(der, key=key, issuer=issuer.cert, now=self.clock())
        except InvalidResponse as exc:
            return Ingested(Result.REJECTED, str(exc), self.cache.servable(key))
        if candidate.status is CertStatus.UNKNOWN and not keep_unknown:
            return Ingested(Result.PASSED, "unknown to the CA; handed on, not kept", candidate, candidate)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            current = self._checked(key)
            decision = accept(current, candidate, self.clock())
            if not decision.stores:
                result = Result.SAME if decision.verdict is Verdict.SAME else Result.KEPT
                return Ingested(result, decision.reason, self.cache.servable(key), candidate)
            alert = _alert(current, candidate, decision.verdict, configured=configured)
            self._unpersisted.discard(key)
            self._to_write.pop(key, None)
            if origin.persists:
                # On disk first, then served: a revoked one is never followed by the older good one
                # after a restart. A failing store does not stop serving it (kept to write later).
                await self.persister.save(candidate)
            self._hold(candidate)
        return Ingested(Result.REVOKED if alert else Result.STORED, decision.reason, candidate, candidate)

    def admit(self, stored: Stored, origin: Origin = Origin.STORE) -> Staple | None:
        """An entry read in bulk (our store at start-up or read again; the shared store): held, and
        returned, unless it is invalid, expired (then removed from our store) or older than what is
        held. With nothing held for its key its signature check is deferred (see the module's
        docstring); an entry from elsewhere than our store is written to it once checked."""
        key = stored.key
        issuer = self.catalog.issuer_for_key(key)
        held = self._held.get(key)
        if issuer is None:
            if origin is Origin.STORE:
                log.warning("stored staple for an issuer no longer configured; skipped", key=str(key))
            return None
        if held is not None and held.der == stored.der:
            if origin is Origin.STORE:  # in our store already: not written again
                self._unpersisted.discard(key)
                self._to_write.pop(key, None)
                self.store.remember(held)
            return held  # nothing new
        now = self.clock()
        try:
            if held is not None:
                candidate = self.rules.validate(stored.der, key=key, issuer=issuer.cert, now=now)
            elif stored.hint is not None:
                candidate = stored.hint  # parsed by the store from these bytes; times checked now
                self.rules.check_times(candidate.this_update, candidate.next_update, now=now)
            else:
                candidate = self.rules.validate(
                    stored.der, key=key, issuer=issuer.cert, now=now, check_signature=False
                )
        except ExpiredResponse as exc:
            if held is not None or origin is not Origin.STORE:
                return held  # the entry may be what was read before a newer one was written: keep it
            log.info("stored staple expired; removed", key=str(key), reason=str(exc))
            try:
                self.store.delete(key)
            except StoreError as err:
                log.warning("cannot remove expired staple", key=str(key), error=str(err))
            return None
        except InvalidResponse as exc:
            log.warning(f"{_WHAT[origin]} invalid; skipped", key=str(key), reason=str(exc))
            return held
        if origin is Origin.STORE and stored.hint is None:
            self.store.remember(candidate)  # (a hint is the store's own object, paired already)
        if held is not None:
            held = self._checked(key)
            if not accept(held, candidate, now).stores:
                return held
        self._hold(candidate)
        if origin.persists:
            self._unpersisted.add(key)  # written once its signature is checked (``confirm``)
            if candidate.verified:
                self._persist(candidate)
        return candidate

    def confirm(self, staple: Staple) -> Staple | None:
        """The held staple, signature checked (it was loaded unchecked); None when that fails: then
        it is dropped from memory and ``dropped`` is published."""
        if staple.verified:
            return staple
        key = staple.key
        self._unverified.discard(key)
        issuer = self.catalog.issuer_for_key(key)
        try:
            if issuer is None:
                raise InvalidResponse("its issuer is no longer configured")
            checked = self.rules.validate(staple.der, key=key, issuer=issuer.cert, now=self.clock())
        except InvalidResponse as exc:
            log.warning("held staple invalid; dropped", key=str(key), reason=str(exc))
            if key in self._unpersisted:
                self._unpersisted.discard(key)  # it came from the shared store, not ours
            else:
                self.store.distrust(key)
            if self._held.get(key) is staple:
                del self._held[key]
                self.events.dropped(key)
            return None
        if key not in self._unpersisted:
            self.store.remember(checked)  # the store keeps this object, not a second one
        if self._held.get(key) is staple:
            self._hold(checked)
            self._persist(checked)
        return checked

    def confirm_some(self, count: int) -> int:
        """Check up to count of the staples held unchecked; returns how many were looked at (0:
        none is left)."""
        keys = list(itertools.islice(self._unverified, count))
        for key in keys:
            staple = self._held.get(key)
            if staple is None or staple.verified:
                self._unverified.discard(key)
            else:
                self.confirm(staple)
        return len(keys)

    def _checked(self, key: CertKey) -> Staple | None:
        """What is held for key, its signature checked first if it was not."""
        held = self._held.get(key)
        return self.confirm(held) if held is not None and not held.verified else held

    def _persist(self, staple: Staple) -> None:
        """Queue a checked staple admitted from elsewhere than our store for writing to it; one
        writer in the background, so that 100,000 staples read from the fleet at start-up are
        written one after another, not all at once."""
        if staple.key not in self._unpersisted:
            return
        self._unpersisted.discard(staple.key)
        self._to_write[staple.key] = staple
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        try:
            while self._to_write:
                key = next(iter(self._to_write))
                staple = self._to_write.pop(key)
                if self._held.get(key) is staple:  # not replaced meanwhile (that one was written)
                    await self.persister.save(staple)
        finally:
            self._writer = None

    async def drain(self) -> None:
        """Wait until the queued staples are written (tests, benchmarks)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    @property
    def unwritten(self) -> int:
        """Staples admitted from the shared store not yet written to ours."""
        return len(self._to_write) + len(self._unpersisted)

    def _hold(self, staple: Staple) -> None:
        self._held[staple.key] = staple
        if staple.verified:
            self._unverified.discard(staple.key)
            self.events.stored(staple)
        else:
            self._unverified.add(staple.key)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.persister.close()


_WHAT = {"store": "stored staple", "shared": "shared staple", "ca": "staple"}


def _alert(current: Staple | None, candidate: Staple, verdict: Verdict, *, configured: bool) -> bool:
    """good -> revoked always; for a configured certificate also a first revoked answer (or one
    after unknown, or after an expired one): Apache is serving a revoked certificate. Logged."""
    alert = verdict is Verdict.ALERT or (
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
    return alert
