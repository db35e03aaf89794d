"""One instance's part in a fleet that shares a Redis (``shared_store``).

It plugs into the core's seams and nowhere else:

- a **Lease** for the refresher (``lease.SharedLease``): one instance asks the CA about a key, the
  others wait for its answer or take it from Redis — through the door, as untrusted as a CA's;
- a **Listener** on the door's events: every staple this instance accepts is written to Redis (by
  ``scripts.PUT``, which keeps the accept policy under concurrency) and announced on a channel;
- the **door** again for what others wrote: the channel names a key, its entry is read and ingested;
  at start-up every entry is read in bulk (``Door.admit``, signature checked before it is served).

Redis is shared knowledge, never the only copy and never waited on by a request: every call is
bounded (``Link``), and while Redis is down, full or read-only the instance goes on alone with its
own state directory. When it is usable again (or found emptied), the instance reads what is newer
there and writes what it holds that is newer than Redis's (``sync``): the fleet converges without
a restart. Only the main process talks to Redis (workers get staples from it as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any

import structlog
from redis.asyncio import Redis

from ocspproxy.cache.door import Door, Origin, Result
from ocspproxy.cache.events import Listener
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import RefreshPolicy
from ocspproxy.core.staple import Staple
from ocspproxy.log import Repeats
from ocspproxy.shared.channel import Announcements
from ocspproxy.shared.client import connect
from ocspproxy.shared.keys import Names, entry_fields, millis
from ocspproxy.shared.lease import SharedLease
from ocspproxy.shared.link import Backoff, Link, keep_running
from ocspproxy.shared.scripts import DROP, PUT
from ocspproxy.shared.settings import SharedSettings
from ocspproxy.shared.sync import Sync

__all__ = ["Fleet"]

log = structlog.get_logger("ocspproxy")

_BATCH = 500  # keys per pipeline: Redis answers a batch in one round trip
_NEVER = (-1, -1)


class Fleet(Listener):
    def __init__(
        self,
        settings: SharedSettings,
        *,
        door: Door,
        policy: RefreshPolicy,
        clock: Callable[[], datetime],
        password: str | None = None,
        client: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.door = door
        self.policy = policy
        self.clock = clock
        self.names = Names(settings.prefix)
        self.instance = secrets.token_hex(6)  # tells our own announcements from the others'
        self.client = client if client is not None else connect(settings, password)
        self.link = Link(where=settings.describe(), timeout=settings.timeout, on_usable=self._want_sync)
        client, link, names, me = self.client, self.link, self.names, self.instance
        self.lease = SharedLease(client=client, link=link, names=names, instance=me, cache=door.cache,
                                 policy=policy, clock=clock, seen=self._seen, judge=self._judge)  # fmt: skip
        every = settings.probe_interval  # (reconnects back off from a tenth of it to six times it)
        backoff = lambda: Backoff(first=every / 10, cap=every * 6)  # noqa: E731
        self.announcements = Announcements(
            client=client, link=link, channel=names.channel, instance=me,
            backoff=backoff, heard=self._heard, lost=self._want_sync,
        )  # fmt: skip
        self.sync = Sync(client=client, link=link, names=names, door=door, seen=self._seen,
                         pull=self._pull_keys, push=self._push)  # fmt: skip
        self._put = self.client.register_script(PUT)
        self._drop = self.client.register_script(DROP)
        self._known: dict[CertKey, int] = {}  # hash of the bytes last read from or written to Redis
        self._bad: dict[CertKey, str] = {}  # SHA-1 (hex) of bytes found invalid under the key in Redis
        self._questioned: dict[CertKey, int] = {}  # hash of our staple Redis refused: read back once
        self._outbox: dict[CertKey, Staple] = {}
        self._pulls: dict[CertKey, None] = {}  # keys others wrote, to read (ordered, no duplicates)
        self._to_write = asyncio.Event()
        self._to_pull = asyncio.Event()
        self._to_sync = asyncio.Event()
        self._rejections = Repeats()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    @classmethod
    def of(
        cls, settings: SharedSettings, door: Door, policy: RefreshPolicy, clock: Callable[[], datetime]
    ) -> Fleet:
        """With the password from where the settings say (the configuration's check read it)."""
        return cls(settings, door=door, policy=policy, clock=clock, password=settings.password())

    def _seen(self, key: CertKey, der: bytes) -> None:
        """These bytes are in Redis for key (read, or written by the lease): not written again."""
        self._known[key] = hash(der)
        self._outbox.pop(key, None)

    def _judge(self, key: CertKey, der: bytes, claimed: tuple[int, int], held: Staple | None) -> None:
        """An entry the lease handed out, and what we hold after it went through the door: older
        than its fields claimed (or nothing), it was bad or lied; newer, Redis wants ours."""
        mine = entry_fields(held)[:2] if held is not None else _NEVER
        if mine < claimed:
            self._refuse(key, der, "not the response its fields describe, or invalid")
        elif mine > claimed:
            self._push_held(key)

    # --- the Listener ------------------------------------------------------------------------

    def stored(self, staple: Staple) -> None:
        if self.link.writable and self._known.get(staple.key) != hash(staple.der):
            self._outbox[staple.key] = staple
            self._to_write.set()

    def dropped(self, key: CertKey) -> None:
        """A staple held unchecked failed its check (it may have come from Redis): read the
        entry again, through the door, which says what is wrong with it."""
        self._pulls[key] = None
        self._to_pull.set()

    # --- start, run, stop --------------------------------------------------------------------

    async def start(self) -> int:
        """Connect, then read the fleet's staples (for at most ``load_timeout``); then keep in step
        in the background. Returns how many staples were taken from Redis. Never raises."""
        await self._mark()
        # Subscribed before the load: nothing announced meanwhile is missed.
        self._tasks.append(self._keep("channel", self.announcements.follow))
        loaded = 0
        if self.link.readable:
            try:
                async with asyncio.timeout(self.settings.load_timeout):
                    loaded = await self.sync.run(bulk=True)
            except TimeoutError:
                log.warning(
                    "reading the fleet's staples took too long; going on", timeout=self.settings.load_timeout
                )
        self._to_sync.clear()  # that was the sync
        if self._pulls:
            self._to_pull.set()  # entries the bulk read could not take: the door says why
        for name, run in (
            ("probe", self._probe),
            ("write", self._write),
            ("read", self._pull),
            ("sync", self._syncs),
        ):
            self._tasks.append(self._keep(name, run))
        log.info(
            "fleet", store=self.link.where, state=str(self.link.state), loaded=loaded, instance=self.instance
        )
        return loaded

    async def catch_up(self) -> int:
        """Once every certificate is read, after a ``start`` before: take what it skipped because
        its issuer was not known yet (bulk again: the rest is held already and compared only)."""
        if not self.sync.foreign or not self.link.readable:
            return 0
        taken = await self.sync.run(bulk=True)
        if taken:
            log.info("fleet", loaded=taken, after="certificates loaded")
        return taken

    def _keep(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        return asyncio.create_task(keep_running(name, run, lambda: self._closing))

    async def close(self) -> None:
        self._closing = True
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.settings.timeout):
                await self.client.aclose()

    def _want_sync(self) -> None:
        self._to_sync.set()

    async def _mark(self) -> None:
        """Write the fleet's marker if it is missing: an emptied Redis (FLUSHALL, a new or empty
        replica promoted) is found out here, and everyone writes what they hold again."""
        created = await self.link.call(
            lambda: self.client.set(self.names.marker, self.instance, nx=True), probe=True
        )
        if created:
            log.info("shared store holds none of the fleet's staples; writing ours", store=self.link.where)
            self._want_sync()

    async def _probe(self) -> None:
        backoff = self.announcements.backoff()
        while True:
            for reason, count in self._rejections.summaries():
                log.warning("shared staples rejected", reason=reason, count=count)
            if self.link.writable:
                backoff.reset()
                await asyncio.sleep(self.settings.probe_interval)
            else:
                await asyncio.sleep(backoff.next())
            await self._mark()

    def _heard(self, key: CertKey | None) -> None:
        if key is None:
            self._rejections.note("an announcement that names no key")
            return
        self._pulls[key] = None
        self._to_pull.set()

    # --- writing and reading staples ---------------------------------------------------------

    async def _write(self) -> None:
        while True:
            await self._to_write.wait()
            self._to_write.clear()
            while self._outbox and self.link.writable:
                keys = list(itertools.islice(self._outbox, _BATCH))
                await self._put_batch([self._outbox.pop(key) for key in keys])

    async def _pull(self) -> None:
        while True:
            await self._to_pull.wait()
            self._to_pull.clear()
            while self._pulls and self.link.readable:
                keys = list(itertools.islice(self._pulls, _BATCH))
                for key in keys:
                    del self._pulls[key]
                await self._pull_batch(keys)

    async def _put_batch(self, staples: list[Staple]) -> None:
        if not self.link.writable:
            return  # the sync after the recovery writes what is newer
        now = self.clock()
        staples = [s for s in staples if s.servable(now)]
        pipe = self.client.pipeline(transaction=False)
        for staple in staples:
            key = staple.key
            args: list[Any] = [staple.der, *entry_fields(staple), millis(now), self.names.channel]
            args += [f"{self.instance} {key}", self._bad.pop(key, "")]
            await self._put(keys=[self.names.entry(key)], args=args, client=pipe)
        results = await self.link.call(pipe.execute)
        if results is None:
            return
        for staple, written in zip(staples, results, strict=True):
            mine = hash(staple.der)
            self._known[staple.key] = mine
            if written == 0 and self._questioned.get(staple.key) != mine:
                # Redis kept another staple: read it (it is newer, or it lies and gets replaced).
                self._questioned[staple.key] = mine
                self._pulls[staple.key] = None
                self._to_pull.set()

    async def _pull_batch(self, keys: list[CertKey]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self.names.entry(key), "der", "tu", "pa", "st")
        rows = await self.link.call(pipe.execute)
        if rows is None:
            return
        for key, row in zip(keys, rows, strict=True):
            await self._take(key, row)

    async def _take(self, key: CertKey, row: list[bytes | None]) -> None:
        """Another instance's entry, through the door. A bad one is replaced with ours if we
        hold one; one older than ours is overwritten by ours (the write script decides)."""
        der = row[0]
        catalog = self.door.catalog
        if catalog.issuer_for_key(key) is None:
            return  # not one of our issuers: some other part of the fleet's
        if der is None:
            self._push_held(key)  # removed (found bad, expired early): ours, if we hold one
            return
        self._known[key] = hash(der)
        outcome = await self.door.ingest(key, der, Origin.SHARED, configured=catalog.configured(key))
        candidate = outcome.candidate
        if candidate is not None:
            log.debug(
                "shared staple taken",
                serial=f"{key.serial:x}",
                result=str(outcome.result),
                this_update=candidate.this_update.isoformat(),
            )
        if outcome.result is Result.REJECTED:
            self._refuse(key, der, outcome.reason)
        elif candidate is not None and [str(v).encode() for v in entry_fields(candidate)[:3]] != row[1:]:
            self._refuse(key, der, "its fields do not match its response")
        elif outcome.result is Result.KEPT:
            self._push_held(key)

    def _refuse(self, key: CertKey, der: bytes, reason: str) -> None:
        """A bad entry: replaced with the staple we hold, or else removed (and announced, so
        that an instance which holds one writes it)."""
        if self._rejections.note(reason):
            log.warning("shared staple rejected", key=str(key), reason=reason)
        digest = hashlib.sha1(der).hexdigest()  # names bytes; secures nothing
        self._known.pop(key, None)
        if self.door.cache.servable(key) is not None:
            self._bad[key] = digest
            self._push_held(key)
        elif self.link.writable:
            message = f"{self.instance} {key}"
            task = asyncio.create_task(
                self.link.call(
                    lambda: self._drop(
                        keys=[self.names.entry(key)], args=[digest, self.names.channel, message]
                    ),
                )
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _push_held(self, key: CertKey) -> None:
        held = self.door.cache.servable(key)
        if held is not None:
            self._outbox[key] = held
            self._to_write.set()

    # --- converging ---------------------------------------------------------------------------

    async def _syncs(self) -> None:
        while True:
            await self._to_sync.wait()
            self._to_sync.clear()
            await self.sync.run(bulk=False)

    def _pull_keys(self, keys: Iterable[CertKey]) -> None:
        self._pulls.update(dict.fromkeys(keys))
        self._to_pull.set()

    def _push(self, staples: Iterable[Staple]) -> None:
        for staple in staples:
            self._outbox[staple.key] = staple
        if self._outbox:
            self._to_write.set()
