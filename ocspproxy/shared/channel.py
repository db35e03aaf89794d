"""The fleet's channel: each instance announces ``<instance> <key>`` for every staple it writes to
Redis; the others read that entry and take it through the door. Announcements are a push (a staple
accepted anywhere is served everywhere within about a second), never the only way: a subscription
lost (Redis restarted, failed over, unreachable) is taken again, backing off, and followed by a
sync, since whatever was announced meanwhile was missed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from redis.asyncio import Redis

from ocspproxy.core.ocsp import CertKey, parse_key
from ocspproxy.shared.link import Backoff, Link, cancelled, classify

__all__ = ["Announcements"]


class Announcements:
    def __init__(
        self,
        *,
        client: Redis,
        link: Link,
        channel: str,
        instance: str,
        heard: Callable[[CertKey | None], None],
        lost: Callable[[], None],
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.client = client
        self.link = link
        self.channel = channel
        self.instance = instance
        self.heard = heard  # a key another instance wrote (None: an announcement naming no key)
        self.lost = lost  # called when a lost subscription is back: announcements were missed
        self.backoff = backoff

    async def follow(self) -> None:
        backoff = self.backoff()
        first = True
        while True:
            pubsub = self.client.pubsub()
            try:
                async with asyncio.timeout(self.link.timeout * 2):
                    await pubsub.subscribe(self.channel)
                backoff.reset()
                if not first:
                    self.lost()
                first = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._read(message.get("data"))
            except Exception as exc:  # a lost subscription is taken again, whatever broke it
                cancelled(exc)
                self.link.note(classify(exc), exc)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.link.timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff.next())

    def _read(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        instance, _, text = data.decode("ascii", "replace").partition(" ")
        if instance == self.instance:
            return  # our own
        try:
            key = parse_key(text)
        except ValueError:
            self.heard(None)
            return
        self.heard(key)
