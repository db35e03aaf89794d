"""Keys whose upstream is given a pause (``upstream/breaker.py``) wait without fetching.

While a CA responder is paused every fetch for its certificates fails at once, without a
connection. With their staples due, 100,000 certificates retrying on their own back-off would keep
the event loop busy failing (measured: a whole core). So the scheduler parks them: for each paused
upstream one key, the scout, is tried again when the pause ends; the others wait, with no timer,
until the scout gets an answer or is found refreshed by other means (then they are spread over a
short while), or is no longer tracked. Stored staples stay served meanwhile, as for any failed
fetch.
"""

from __future__ import annotations

from ocspproxy.core.ocsp import CertKey

__all__ = ["Parking"]


class Parking:
    def __init__(self) -> None:
        self._scouts: dict[str, CertKey] = {}  # upstream -> the key tried when its pause ends
        self._scouting: dict[CertKey, str] = {}
        self._parked: dict[str, dict[CertKey, None]] = {}  # upstream -> keys waiting (ordered set)
        self._parked_at: dict[CertKey, str] = {}

    def __len__(self) -> int:
        return len(self._parked_at)

    def __contains__(self, key: CertKey) -> bool:
        """key is parked: it has no timer of its own."""
        return key in self._parked_at

    def held(self, key: CertKey, where: str) -> bool:
        """key's fetch was held by where's pause. True: key is parked (no timer); False: it is the
        scout, to be tried again when the pause ends."""
        moved: dict[CertKey, None] = {}
        previous = self._scouting.pop(key, None)
        if previous is not None and previous != where:
            # Its URL changed (a reload) while it was another upstream's scout: the keys parked
            # behind it wait for where's scout now, and try their own upstream when let go.
            del self._scouts[previous]
            moved = self._parked.pop(previous, {})
        scout = self._scouts.get(where)
        parked = scout is not None and scout != key
        if parked:
            self._parked.setdefault(where, {})[key] = None
            self._parked_at[key] = where
        else:
            self._scouts[where] = key
            self._scouting[key] = where
        for other in moved:
            self._parked.setdefault(where, {})[other] = None
            self._parked_at[other] = where
        return parked

    def release(self, key: CertKey) -> list[CertKey]:
        """key waits no longer: its upstream answered it, it was found refreshed by other means,
        or it is no longer tracked. Forgotten if parked; if it was a scout, the keys parked behind
        it, to be scheduled again (one of them becomes the scout if its fetch is held again)."""
        where = self._parked_at.pop(key, None)
        if where is not None:
            del self._parked[where][key]
        where = self._scouting.pop(key, None)
        if where is None:
            return []
        del self._scouts[where]
        keys = list(self._parked.pop(where, {}))
        for parked in keys:
            del self._parked_at[parked]
        return keys
