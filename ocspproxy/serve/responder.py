"""Answers one CertID: from memory when servable, else one bounded wait on the single upstream fetch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from ocspproxy.cache.door import Door, Ingested
from ocspproxy.cache.refresher import Refresher
from ocspproxy.cache.scheduler import Scheduler
from ocspproxy.cache.warmstart import WarmStart
from ocspproxy.certs.catalog import Catalog
from ocspproxy.certs.inventory import Issuer
from ocspproxy.core.ocsp import CertId, CertKey
from ocspproxy.core.staple import CertStatus
from ocspproxy.serve.answer import Answer, Outcome
from ocspproxy.serve.hits import HitTable
from ocspproxy.serve.ratelimit import TokenBucket

__all__ = ["Responder"]


class Responder:
    def __init__(
        self,
        *,
        door: Door,
        refresher: Refresher,
        scheduler: Scheduler,
        catalog: Catalog,
        warm: WarmStart,
        loaded: asyncio.Event,
        budget: float,
        max_tracked_requests: int,
        fetch_rate: float,
        fetch_burst: float,
    ) -> None:
        self.door = door
        self.cache = door.cache
        self.refresher = refresher
        self.scheduler = scheduler
        self.catalog = catalog
        self.hits = HitTable(catalog, door.cache)
        self.warm = warm
        # Set once every certificate and stored staple is loaded. Before, stored staples of known
        # issuers are answered at once (warm.early); anything else waits for the full load.
        self.loaded = loaded
        self.budget = budget
        self.max_tracked_requests = max_tracked_requests
        self._requested: set[CertKey] = set()  # keys tracked because a client asked, not configured
        self._fetch_rate = fetch_rate
        self._fetch_burst = fetch_burst
        # One bucket per known issuer: a scanner walking serials cannot make us hammer its CA.
        self._buckets: dict[bytes, TokenBucket] = {}

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.cache.clock

    async def answer(self, cert_id: CertId) -> Answer:
        hit = self.hits.hit(cert_id) or self._held(cert_id)
        if hit is not None:
            return hit
        deadline = asyncio.get_running_loop().time() + self.budget
        if not self.loaded.is_set():
            # Not unauthorized, not fetched: the full inventory and store may know better.
            try:
                async with asyncio.timeout_at(deadline):
                    await self.loaded.wait()
            except TimeoutError:
                return Answer(Outcome.STARTING, detail=f"still loading after {self.budget:g}s")
            hit = self.hits.hit(cert_id) or self._held(cert_id)
            if hit is not None:
                return hit
        issuer = self.catalog.issuer_for(cert_id)
        if issuer is None:
            return Answer(Outcome.UNAUTHORIZED, detail="issuer not known")
        key = cert_id.key
        job = self.catalog.job_for(key)
        if job is None:
            return Answer(Outcome.NO_UPSTREAM, issuer=issuer.name, detail="no OCSP URL for this certificate")
        expired = self.cache.current(key) is not None
        failing = self.refresher.failing(key)
        if failing is not None:
            return Answer(Outcome.EXPIRED if expired else Outcome.FAILING, issuer=issuer.name, detail=failing)
        configured = job.configured or key in self.scheduler
        # Joining a fetch already under way costs the CA nothing: only new fetches spend tokens.
        if not configured and not self.refresher.fetching(key) and not self._bucket(issuer).take():
            return Answer(
                Outcome.LIMITED, issuer=issuer.name, detail="on-demand fetch rate for this issuer exceeded"
            )
        task = self.refresher.refresh(key, job, keep_unknown=configured)
        task.add_done_callback(lambda t: self._join(key, t))
        try:
            async with asyncio.timeout_at(deadline):
                ingested = await asyncio.shield(task)  # the fetch outlives this request
        except TimeoutError:
            return Answer(Outcome.SLOW, issuer=issuer.name, detail=f"no answer within {self.budget:g}s")
        if ingested.staple is not None:
            return Answer(Outcome.MISS, ingested.staple, issuer.name)
        return Answer(
            Outcome.EXPIRED if expired else Outcome.FAILED, issuer=issuer.name, detail=ingested.reason
        )

    def _held(self, cert_id: CertId) -> Answer | None:
        """A staple held but not signature-checked yet (loaded at start-up), or, before the full
        load, one still in the store: checked in full now, and served if it passes."""
        issuer = self.catalog.issuer_for(cert_id)
        if issuer is None:
            return None
        key = cert_id.key
        staple = self.cache.current(key)
        if staple is not None and not staple.verified:
            staple = self.door.confirm(staple)
        elif staple is None and self.warm.loading:
            staple = self.warm.early(key)
        if staple is None or not staple.servable(self.clock()):
            return None
        return Answer(Outcome.HIT, staple, issuer.name)

    def _bucket(self, issuer: Issuer) -> TokenBucket:
        # By key, not by name: a CA's old and new key (a rollover) often share one name.
        key_hash = issuer.key_hashes["sha1"]
        bucket = self._buckets.get(key_hash)
        if bucket is None:
            bucket = self._buckets[key_hash] = TokenBucket(rate=self._fetch_rate, burst=self._fetch_burst)
        return bucket

    def _join(self, key: CertKey, task: asyncio.Task[Ingested]) -> None:
        """A requested CertID with a real status joins the pre-fetch set (bounded)."""
        if task.cancelled() or task.exception() is not None or key in self.scheduler:
            return
        staple = task.result().staple
        if staple is None or staple.status is CertStatus.UNKNOWN:
            return  # random serials get "unknown": keep scanners from growing the set
        if len(self._requested) >= self.max_tracked_requests:
            return
        self._requested.add(key)
        self.scheduler.track(key)

    def requested(self, key: CertKey) -> bool:
        return key in self._requested

    def forget_requested(self, keep: Callable[[CertKey], bool]) -> None:
        """After a reload: drop requested keys whose issuer is gone."""
        for key in [k for k in self._requested if not keep(k)]:
            self._requested.discard(key)
            self.scheduler.untrack(key)
