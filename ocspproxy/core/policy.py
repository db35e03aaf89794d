"""Accept and refresh policies: pure functions, the clock and randomness injected."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ocspproxy.core.staple import CertStatus, Staple

__all__ = ["Decision", "RefreshPolicy", "Verdict", "accept"]


class Verdict(StrEnum):
    STORE = "store"  # replace (or first) staple
    ALERT = "alert"  # store, and shout: a good certificate is now revoked
    SAME = "same"  # identical bytes: nothing to write
    KEEP = "keep"  # keep the current staple


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str

    @property
    def stores(self) -> bool:
        return self.verdict in (Verdict.STORE, Verdict.ALERT)


def accept(current: Staple | None, candidate: Staple, now: datetime) -> Decision:
    """Decide whether a *validated* candidate replaces the current staple.

    Errors and invalid responses never get here: they are rejected by validation, so a valid staple
    can never be replaced by one.
    """
    if current is None or not current.servable(now):
        return Decision(Verdict.STORE, "nothing servable stored")
    if candidate.der == current.der:
        return Decision(Verdict.SAME, "unchanged")
    turned_revoked = current.status is CertStatus.GOOD and candidate.status is CertStatus.REVOKED
    if turned_revoked and not current.newer_than(candidate):  # a tie goes to revoked
        return Decision(Verdict.ALERT, "certificate revoked")
    if not candidate.newer_than(current):
        return Decision(Verdict.KEEP, "older than the stored response")
    if current.status is CertStatus.GOOD and candidate.status is CertStatus.UNKNOWN:
        return Decision(Verdict.KEEP, "unknown does not replace good")
    return Decision(Verdict.STORE, "newer")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshPolicy:
    """When to fetch again.

    A staple is due at ``thisUpdate + fraction * validity`` plus up to ``jitter * validity``, and
    never later than ``1 - margin`` of the way to nextUpdate, so several retries still fit before it
    expires. Whatever the validity, the CA is asked again at most ``max_interval`` after the last
    fetch (less up to ``jitter`` of it), so a revocation reaches the staple within that bound, as
    with mod_ssl's and HAProxy's hourly fetches. Failures back off exponentially (full jitter
    between half and all of the step), capped at ``retry_max`` and at a quarter of the time left
    while a servable staple is held, at ``retry_unservable`` while none is (a CA coming back after a
    long outage is noticed within about that), and never below ``retry_min``. The same rule serves
    1-minute test responses and 10-day CA responses.
    """

    fraction: float = 0.5
    jitter: float = 0.1
    margin: float = 0.2
    max_interval: float = 3600.0
    retry_initial: float = 5.0
    retry_max: float = 600.0
    retry_unservable: float = 60.0
    retry_min: float = 1.0

    def due(self, staple: Staple, rng: random.Random) -> datetime:
        """When to fetch again after this staple; a time already past means now."""
        validity = staple.next_update - staple.this_update
        start = staple.this_update + validity * self.fraction
        due = start + validity * (self.jitter * rng.random())
        latest = staple.this_update + validity * (1 - self.margin)
        return min(due, latest)

    def interval(self, rng: random.Random) -> float:
        """Seconds from a fetch to the latest next one: ``max_interval`` less up to ``jitter`` of
        it, so that certificates fetched together drift apart instead of moving as one burst."""
        return self.max_interval * (1 - self.jitter * rng.random())

    def retry_delay(
        self, failures: int, staple: Staple | None, now: datetime, rng: random.Random
    ) -> timedelta:
        step = min(self.retry_max, self.retry_initial * 2 ** max(0, failures - 1))
        if staple is not None and staple.servable(now):
            step = min(step, (staple.next_update - now).total_seconds() / 4)
        else:
            step = min(step, self.retry_unservable)
        delay = step * (0.5 + 0.5 * rng.random())
        return timedelta(seconds=max(self.retry_min, delay))
