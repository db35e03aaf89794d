"""Answers one CertID: from memory when servable, else one bounded wait on the single upstream fetch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ocspproxy.inventory import Inventory, Issuer
from ocspproxy.ocsp import CertId, CertKey
from ocspproxy.ratelimit import TokenBucket
from ocspproxy.scheduler import Scheduler
from ocspproxy.staple import CertStatus, Staple
from ocspproxy.staples import Refreshed, Staples

__all__ = ["Answer", "Outcome", "Responder"]


class Outcome(StrEnum):
    HIT = "hit"  # servable staple in memory
    MISS = "miss"  # fetched, validated and stored while the client waited
    EXPIRED = "expired"  # the stored staple passed nextUpdate and no new one could be had
    FAILING = "failing"  # upstream failed moments ago; not asked again yet
    FAILED = "failed"  # upstream failed or answered something invalid just now
    SLOW = "slow"  # upstream did not answer within the budget; the fetch goes on
    LIMITED = "limited"  # too many on-demand fetches for this issuer's unconfigured certificates
    STARTING = "starting"  # still loading certificates and stored staples past the budget
    UNAUTHORIZED = "unauthorized"  # issuer not known to us
    NO_UPSTREAM = "no_upstream"  # issuer known, but no OCSP URL for it
    MALFORMED = "malformed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    staple: Staple | None = None
    issuer: str | None = None
    detail: str | None = None


class Responder:
    def __init__(
        self,
        *,
        staples: Staples,
        scheduler: Scheduler,
        inventory: Callable[[], Inventory],
        budget: float,
        max_tracked_requests: int,
        fetch_rate: float = 5.0,
        fetch_burst: float = 20.0,
        loaded: asyncio.Event | None = None,
    ) -> None:
        self.staples = staples
        # Set once every certificate and stored staple is loaded. Before, hits are answered from
        # what is known already; anything else (an issuer not known yet, no staple held) waits.
        self.loaded = loaded
        self.scheduler = scheduler
        self.inventory = inventory
        self.budget = budget
        self.max_tracked_requests = max_tracked_requests
        self._requested: set[CertKey] = set()  # keys tracked because a client asked, not configured
        self._fetch_rate = fetch_rate
        self._fetch_burst = fetch_burst
        # One bucket per known issuer: a scanner walking serials cannot make us hammer its CA.
        self._buckets: dict[bytes, TokenBucket] = {}

    def hit(self, cert_id: CertId) -> Answer | None:
        """The answer when a servable staple is held (no waiting), else None."""
        issuer = self.inventory().issuer_for(cert_id)
        if issuer is None:
            return None
        staple = self.staples.servable(cert_id.key)
        return None if staple is None else Answer(Outcome.HIT, staple, issuer.name)

    async def answer(self, cert_id: CertId) -> Answer:
        hit = self.hit(cert_id)
        if hit is not None:
            return hit
        deadline = asyncio.get_running_loop().time() + self.budget
        if self.loaded is not None and not self.loaded.is_set():
            # Not unauthorized, not fetched: the full inventory and store may know better.
            try:
                async with asyncio.timeout_at(deadline):
                    await self.loaded.wait()
            except TimeoutError:
                return Answer(Outcome.STARTING, detail=f"still loading after {self.budget:g}s")
            hit = self.hit(cert_id)
            if hit is not None:
                return hit
        inv = self.inventory()
        issuer = inv.issuer_for(cert_id)
        if issuer is None:
            return Answer(Outcome.UNAUTHORIZED, detail="issuer not known")
        key = cert_id.key
        url = inv.upstream_for(key, issuer)
        if url is None:
            return Answer(Outcome.NO_UPSTREAM, issuer=issuer.name, detail="no OCSP URL for this certificate")
        expired = self.staples.current(key) is not None
        failing = self.staples.failing(key)
        if failing is not None:
            return Answer(Outcome.EXPIRED if expired else Outcome.FAILING, issuer=issuer.name, detail=failing)
        configured = key in inv.targets or key in self.scheduler
        # Joining a fetch already under way costs the CA nothing: only new fetches spend tokens.
        if not configured and not self.staples.fetching(key) and not self._bucket(issuer).take():
            return Answer(
                Outcome.LIMITED, issuer=issuer.name, detail="on-demand fetch rate for this issuer exceeded"
            )
        task = self.staples.refresh(
            key,
            issuer_cert=issuer.cert,
            name_hash=cert_id.issuer_name_hash,
            url=url,
            keep_unknown=configured,
            configured=key in inv.targets,
        )
        task.add_done_callback(lambda t: self._join(key, t))
        try:
            async with asyncio.timeout_at(deadline):
                refreshed = await asyncio.shield(task)  # the fetch outlives this request
        except TimeoutError:
            return Answer(Outcome.SLOW, issuer=issuer.name, detail=f"no answer within {self.budget:g}s")
        if refreshed.staple is not None:
            return Answer(Outcome.MISS, refreshed.staple, issuer.name)
        return Answer(
            Outcome.EXPIRED if expired else Outcome.FAILED, issuer=issuer.name, detail=refreshed.reason
        )

    def _bucket(self, issuer: Issuer) -> TokenBucket:
        # By key, not by name: a CA's old and new key (a rollover) often share one name.
        key_hash = issuer.key_hashes["sha1"]
        bucket = self._buckets.get(key_hash)
        if bucket is None:
            bucket = self._buckets[key_hash] = TokenBucket(rate=self._fetch_rate, burst=self._fetch_burst)
        return bucket

    def _join(self, key: CertKey, task: asyncio.Task[Refreshed]) -> None:
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
