"""Fetching a staple: one fetch per key at a time (single-flight), the Lease asked first (in a fleet:
fetch, wait for the instance that is fetching, or take the answer it fetched a moment ago), the
answer through the door, and a short memory of failures so that requests do not ask a failing CA
again and again. The scheduler and requests both come here."""

from __future__ import annotations

import asyncio
import time

import structlog
from cachetools import TTLCache

from ocspproxy.cache.door import Door, Ingested, Origin, Result
from ocspproxy.cache.events import Fetched
from ocspproxy.core.ocsp import CertKey
from ocspproxy.upstream.base import Job, Lease, Source, SourceError, SourceHeld, Turn

__all__ = ["Refresher"]

log = structlog.get_logger("ocspproxy")

_WAIT_STEP = 0.2  # seconds between looks while another instance is asking the CA


class Refresher:
    def __init__(
        self, *, door: Door, source: Source, lease: Lease, negative_ttl: float, lease_ttl: float = 30.0
    ) -> None:
        self.door = door
        self.source = source
        self.lease = lease
        self.lease_ttl = lease_ttl
        self._inflight: dict[CertKey, asyncio.Task[Ingested]] = {}
        # Keys whose last fetch failed: requests get tryLater at once instead of asking the CA again.
        self._failing: TTLCache[CertKey, str] = TTLCache(
            maxsize=100_000, ttl=negative_ttl, timer=time.monotonic
        )

    def fetching(self, key: CertKey) -> bool:
        return key in self._inflight

    def failing(self, key: CertKey) -> str | None:
        return self._failing.get(key)

    def refresh(self, key: CertKey, job: Job, *, keep_unknown: bool = True) -> asyncio.Task[Ingested]:
        """Start (or join) the single fetch for key; the task outlives any one waiter. See
        ``Door.ingest`` for keep_unknown."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(key, job, keep_unknown))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return task

    async def _refresh(self, key: CertKey, job: Job, keep_unknown: bool) -> Ingested:
        started = time.monotonic()
        fields: dict[str, object] = {"url": job.url, "serial": f"{key.serial:x}", "alg": key.alg}
        turn = await self._turn(key)
        outcome: Ingested | None = None
        try:
            if turn.answer is not None:
                # Another instance asked the CA a moment ago: its answer, through the door like any.
                outcome = await self.door.ingest(
                    key, turn.answer, Origin.SHARED, keep_unknown=keep_unknown, configured=job.configured
                )
                fields["source"] = "shared"
                if outcome.failed:
                    log.warning("shared staple rejected; asking the CA", key=str(key), reason=outcome.reason)
                    outcome = None
            if outcome is None:
                outcome = await self._fetch(key, job, keep_unknown)
        finally:
            if turn.fetch or turn.answer is not None:
                usable = outcome is not None and not outcome.failed and outcome.result is not Result.PASSED
                await self.lease.release(key, outcome.staple if usable and outcome is not None else None)
        candidate = outcome.candidate
        if candidate is not None:
            fields.update(
                cert_status=str(candidate.status),
                this_update=candidate.this_update.isoformat(),
                next_update=candidate.next_update.isoformat(),
                validity_s=int(candidate.validity_seconds),
            )
        seconds = time.monotonic() - started
        fields["duration_ms"] = round(seconds * 1000, 1)
        result, failed, now = str(outcome.result), outcome.failed, self.door.clock()
        shared = fields.get("source") == "shared"
        fetch = Fetched(key, job.url, result, outcome.reason, seconds, now, failed, shared)
        if outcome.failed:
            self._failing[key] = outcome.reason
            self.door.events.failed(key, outcome.reason)
            # A held fetch asked nobody; the pause was logged once, when it began (Breaker).
            level = log.debug if outcome.result is Result.HELD else log.warning
            level("upstream", result=str(outcome.result), reason=outcome.reason, **fields)
        else:
            self._failing.pop(key, None)
            log.info("upstream", result=str(outcome.result), reason=outcome.reason, **fields)
        self.door.events.fetched(fetch)
        return outcome

    async def _turn(self, key: CertKey) -> Turn:
        """The lease's word; while another instance is asking, look again (a holder that dies frees
        the lease after its ttl). After twice the ttl of waiting, ask anyway."""
        deadline = time.monotonic() + 2 * self.lease_ttl
        while True:
            turn = await self.lease.acquire(key, self.lease_ttl)
            if not turn.wait:
                return turn
            left = deadline - time.monotonic()
            if left <= 0:
                return Turn()  # neither the lease nor an answer: fetch without the lease
            await asyncio.sleep(min(turn.wait, _WAIT_STEP, left))

    async def _fetch(self, key: CertKey, job: Job, keep_unknown: bool) -> Ingested:
        try:
            der = await self.source.fetch(key, job)
        except SourceHeld as exc:
            servable = self.door.cache.servable(key)
            return Ingested(Result.HELD, str(exc), servable, held_by=exc.where, held_for=exc.wait)
        except SourceError as exc:
            return Ingested(Result.FAILED, str(exc), self.door.cache.servable(key))
        return await self.door.ingest(
            key, der, Origin.CA, keep_unknown=keep_unknown, configured=job.configured
        )

    async def close(self) -> None:
        """Cancel the fetches still in flight (shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
