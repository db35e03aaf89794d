"""Converging with the fleet: read what Redis holds that is newer than ours, write what we hold
that Redis lacks or holds older. At start-up (``bulk``) the entries read are admitted in batches
(``Door.admit``: their signature checked before they are served), so that a fresh instance holds
the fleet's 100,000 staples within seconds; later (after Redis was unusable, emptied, or the
channel lost) they are read and ingested one by one like announced ones.

Only the times (``tu``, ``pa``) are compared here, and they come from Redis: what they claim
decides only what is read or written, never what is served (the door decides that).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable

from redis.asyncio import Redis

from ocspproxy.cache.door import Door, Origin
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.shared.keys import Names, entry_fields
from ocspproxy.shared.link import Link
from ocspproxy.shared.scripts import DERS, TIMES
from ocspproxy.store.base import Stored

__all__ = ["Sync"]

_NEVER = (-1, -1)


class Sync:
    def __init__(
        self,
        *,
        client: Redis,
        link: Link,
        names: Names,
        door: Door,
        seen: Callable[[CertKey, bytes], None],
        pull: Callable[[Iterable[CertKey]], None],
        push: Callable[[Iterable[Staple]], None],
    ) -> None:
        self.client = client
        self.link = link
        self.names = names
        self.door = door
        self.seen = seen  # these bytes were read from Redis for a key
        self.pull = pull  # read these keys' entries and ingest them
        self.push = push  # write these staples
        self._times = client.register_script(TIMES)
        self._ders = client.register_script(DERS)
        self.foreign = 0  # entries of issuers we did not know (yet) at the last run

    async def run(self, *, bulk: bool) -> int:
        """Read what Redis holds that is newer than ours (at start-up, ``bulk``: admitted, the
        signature checked before it is served; later: ingested like an announcement), then write
        what we hold that Redis lacks or holds older. Returns how many entries were taken."""
        theirs: dict[CertKey, tuple[int, int]] = {}
        taken = 0
        self.foreign = 0
        cursor = 0
        while True:
            reply = await self.link.call(
                functools.partial(self.client.scan, cursor, match=self.names.entries, count=1000)
            )
            if reply is None:
                return taken  # the next recovery syncs again
            cursor, found = reply
            wanted = await self._compare(found, theirs)
            if wanted and bulk:
                taken += await self._admit(wanted)
            elif wanted:
                self.pull(wanted)
                taken += len(wanted)
            if cursor == 0:
                break
            await asyncio.sleep(0)
        self.push(s for s in self.door.cache.verified() if theirs.get(s.key, _NEVER) < entry_fields(s)[:2])
        return taken

    async def _compare(
        self, found: list[bytes | str], theirs: dict[CertKey, tuple[int, int]]
    ) -> list[CertKey]:
        """Record the times of the entries found; the keys of those newer than what we hold."""
        keys = []
        for name in found:
            with contextlib.suppress(ValueError):
                keys.append(self.names.key_of(name))
        if not keys:
            return []
        names = [self.names.entry(key) for key in keys]
        flat = await self.link.call(lambda: self._times(keys=names)) or []
        wanted = []
        catalog = self.door.catalog
        for i, key in enumerate(keys):
            try:
                times = (int(flat[2 * i]), int(flat[2 * i + 1]))
            except (IndexError, TypeError, ValueError):
                times = _NEVER  # no usable fields: ours replace it
            theirs[key] = times
            if catalog.issuer_for_key(key) is None:
                self.foreign += 1
                continue
            held = self.door.cache.current(key)
            if held is None or times > entry_fields(held)[:2]:
                wanted.append(key)
        return wanted

    async def _admit(self, keys: list[CertKey]) -> int:
        names = [self.names.entry(key) for key in keys]
        ders = await self.link.call(lambda: self._ders(keys=names)) or []
        taken = 0
        doubtful = []
        with self.door.cache.batch():
            for key, der in zip(keys, ders, strict=False):
                if isinstance(der, bytes) and der:
                    self.seen(key, der)
                    held = self.door.admit(Stored(key, der), Origin.SHARED)
                    if held is None or held.der != der:
                        doubtful.append(key)  # invalid, expired or older: the door says which
                    else:
                        taken += 1
        if doubtful:
            self.pull(doubtful)
        return taken
