"""The fleet's Lease (``upstream.base.Lease``): one instance asks the CA about a key, the others
wait for it or take what it stored.

``ACQUIRE`` decides in one round trip: Redis holds a staple newer than ours, or the CA was asked a
moment ago (the done marker) — take that answer (unchecked: the refresher sends it through the
door); another instance holds the lease — wait (its remaining lifetime is the longest wait); else
the lease is ours for ``ttl``. ``RELEASE`` frees it (only with our token), writes our answer with
the accept policy, and sets the done marker for as long as the answer needs no refresh.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from ocspproxy.cache.memory import Cache
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import RefreshPolicy
from ocspproxy.core.staple import Staple
from ocspproxy.shared.keys import Names, entry_fields, millis
from ocspproxy.shared.link import Link
from ocspproxy.shared.scripts import ACQUIRE, RELEASE
from ocspproxy.upstream.base import FETCH, Turn

__all__ = ["SharedLease"]


class SharedLease:
    def __init__(
        self,
        *,
        client: Redis,
        link: Link,
        names: Names,
        instance: str,
        cache: Cache,
        policy: RefreshPolicy,
        clock: Callable[[], datetime],
        seen: Callable[[CertKey, bytes], None],
        judge: Callable[[CertKey, bytes, tuple[int, int], Staple | None], None],
    ) -> None:
        self.link = link
        self.names = names
        self.instance = instance
        self.cache = cache
        self.policy = policy
        self.clock = clock
        self.seen = seen  # told the bytes read from or written to Redis for a key
        self.judge = judge  # told what became of an answer taken from Redis (bytes, claimed times)
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._seq = itertools.count()
        self._tokens: dict[CertKey, str] = {}  # leases we hold
        self._given: dict[CertKey, tuple[bytes, tuple[int, int]]] = {}  # answers handed out

    def _names(self, key: CertKey) -> list[str]:
        return [self.names.lease(key), self.names.done(key), self.names.entry(key)]

    async def acquire(self, key: CertKey, ttl: float) -> Turn:
        await self.link.first_word()
        if not self.link.writable:
            return FETCH  # no lease to be had: asking the CA twice beats not asking
        now = self.clock()
        held = self.cache.current(key)
        have = entry_fields(held)[:2] if held is not None and held.servable(now) else (0, 0)
        token = f"{self.instance}-{next(self._seq)}"
        names = self._names(key)
        args: list[Any] = [token, max(1, int(ttl * 1000)), *have, millis(now)]
        reply = await self.link.call(lambda: self._acquire(keys=names, args=args))
        if not isinstance(reply, list) or not reply:
            return FETCH
        if reply[0] == 1 and isinstance(reply[1], bytes):
            self.seen(key, reply[1])
            try:
                claimed = (int(reply[2]), int(reply[3]))
            except (IndexError, TypeError, ValueError):
                claimed = (0, 0)
            self._given[key] = (reply[1], claimed)
            return Turn(answer=reply[1])
        if reply[0] == 2:
            return Turn(wait=max(0.01, int(reply[1]) / 1000))
        self._tokens[key] = token
        return FETCH

    async def release(self, key: CertKey, answered: Staple | None) -> None:
        given = self._given.pop(key, None)
        if given is not None:
            self.judge(key, given[0], given[1], answered)
        token = self._tokens.pop(key, None)
        if token is None:
            return
        names = self._names(key)
        args: list[Any] = [token, 0]
        now = self.clock()
        if answered is not None and answered.verified and answered.servable(now):
            quiet = self.quiet(answered, now)
            args = [token, int(quiet * 1000), answered.der, *entry_fields(answered), millis(now)]
            args += [self.names.channel, f"{self.instance} {key}"]
            self.seen(key, answered.der)
        await self.link.call(lambda: self._release(keys=names, args=args))

    def quiet(self, staple: Staple, now: datetime) -> float:
        """How long the others take this answer instead of asking the CA: until it is due for a
        refresh, and at most half the shortest ``max_interval`` (so that the fleet's periodic asks
        line up instead of adding up). Under a second: not worth saying."""
        validity = staple.next_update - staple.this_update
        until_due = (staple.this_update + validity * self.policy.fraction - now).total_seconds()
        quiet = min(until_due, (1 - self.policy.jitter) * self.policy.max_interval / 2)
        return quiet if quiet >= 1 else 0.0
