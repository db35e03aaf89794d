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

One exception, for start-up speed and only for entries of our own store when nothing is held for
their key (``admit``): the signature check is deferred. Such a staple is held marked unverified;
it is never served, compared or published before ``confirm`` has checked it in full (on the first
request for it, or in the background), and it is dropped (with a ``dropped`` event) if that fails.
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


@dataclass(frozen=True, slots=True)
class Ingested:
    result: Result
    reason: str
    staple: Staple | None  # the servable staple for the key after this, if any
    candidate: Staple | None = None  # the validated answer, kept or not

    @property
    def failed(self) -> bool:
        return self.result in (Result.FAILED, Result.REJECTED)


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
            if origin.persists:
                # On disk first, then served: a revoked one is never followed by the older good one
                # after a restart. A failing store does not stop serving it (kept to write later).
                await self.persister.save(candidate)
            self._hold(candidate)
        return Ingested(Result.REVOKED if alert else Result.STORED, decision.reason, candidate, candidate)

    def admit(self, stored: Stored) -> Staple | None:
        """An entry of our own store (start-up, or read again): held, and returned, unless it is
        invalid, expired (then removed from the store) or older than what is held. With nothing
        held for its key its signature check is deferred (see the module's docstring)."""
        key = stored.key
        issuer = self.catalog.issuer_for_key(key)
        if issuer is None:
            log.warning("stored staple for an issuer no longer configured; skipped", key=str(key))
            return None
        held = self._held.get(key)
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
            if held is not None:
                return held  # the entry may be what was read before a newer one was written: keep it
            log.info("stored staple expired; removed", key=str(key), reason=str(exc))
            try:
                self.store.delete(key)
            except StoreError as err:
                log.warning("cannot remove expired staple", key=str(key), error=str(err))
            return None
        except InvalidResponse as exc:
            log.warning("stored staple invalid; skipped", key=str(key), reason=str(exc))
            return held
        if stored.hint is None:
            self.store.remember(candidate)  # (a hint is the store's own object, paired already)
        if held is not None:
            held = self._checked(key)
            if not accept(held, candidate, now).stores:
                return held
        self._hold(candidate)
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
            log.warning("stored staple invalid; dropped", key=str(key), reason=str(exc))
            self.store.distrust(key)
            if self._held.get(key) is staple:
                del self._held[key]
                self.events.dropped(key)
            return None
        self.store.remember(checked)  # the store keeps this object, not a second one
        if self._held.get(key) is staple:
            self._hold(checked)
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

    def _hold(self, staple: Staple) -> None:
        self._held[staple.key] = staple
        if staple.verified:
            self._unverified.discard(staple.key)
            self.events.stored(staple)
        else:
            self._unverified.add(staple.key)

    async def close(self) -> None:
        await self.persister.close()


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
