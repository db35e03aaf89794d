"""Staples held in memory: read by everyone, written only through the door (``Door`` makes the
mapping, keeps it, and hands readers this view of it)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

from cachetools import TLRUCache

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple

__all__ = ["Cache", "Clock", "Held", "new_held"]

Clock = Callable[[], datetime]
Held = TLRUCache[CertKey, Staple]

# Expired staples stay in memory this long so requests can be told apart as "expired"; never served.
_EXPIRED_GRACE = timedelta(hours=1)


def new_held(*, clock: Clock, maxsize: int) -> Held:
    """The mapping of held staples: each is forgotten an hour after its nextUpdate."""
    return TLRUCache(
        maxsize=maxsize,
        ttu=lambda _k, staple, _now: (staple.next_update + _EXPIRED_GRACE).timestamp(),
        timer=lambda: clock().timestamp(),
    )


class Cache:
    """What is held for a key. A staple loaded from the store is held before its signature is
    checked (``verified`` False): ``servable`` never returns such a staple; ``current`` and
    ``held_until`` do (for telling requests apart and for scheduling)."""

    def __init__(self, held: Held, clock: Clock) -> None:
        self._held = held
        self.clock = clock

    def __len__(self) -> int:
        return len(self._held)

    def current(self, key: CertKey) -> Staple | None:
        """The staple held for key, servable or recently expired, checked or not."""
        return self._held.get(key)

    def servable(self, key: CertKey) -> Staple | None:
        """The signature-checked staple to serve for key now, if any."""
        staple = self._held.get(key)
        if staple is None or not staple.verified or not staple.servable(self.clock()):
            return None
        return staple

    def held_until(self, key: CertKey, now: datetime | None = None) -> Staple | None:
        """For scheduling only: the servable staple held, signature checked or not."""
        staple = self._held.get(key)
        return staple if staple is not None and staple.servable(now or self.clock()) else None

    def verified(self) -> list[Staple]:
        """Every signature-checked staple held that is still servable."""
        now = self.clock()
        # .get per key: an entry may expire between the iteration and the lookup.
        held = (self._held.get(key) for key in list(self._held))
        return [s for s in held if s is not None and s.verified and s.servable(now)]

    def batch(self) -> contextlib.AbstractContextManager[float]:
        """Within it, the mapping reads the clock once: for work on every key at once."""
        return self._held.timer
