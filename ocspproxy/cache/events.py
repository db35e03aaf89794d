"""Listeners out: who is told what happens to staples (worker processes, the scheduler, the admin
listener's metrics and status, a fleet's shared store; exports next).

Rules, for every listener:

- it is registered explicitly (``Events.subscribe``), any number of them; nothing is told by
  assigning a callback attribute;
- it is told after the fact, from the event loop's next turn: the door has held (or dropped) the
  staple and returned before any listener runs, so a listener never delays the write path or an
  answer waiting on it;
- its methods return at once: slow work (a network write) is queued by the listener itself;
- an exception a listener raises is logged (one line) and goes no further: other listeners and the
  service go on.

Events: ``stored`` — a signature-checked staple is now held for its key (fetched and accepted, or
loaded and checked); ``dropped`` — the staple held for a key turned out unusable and is gone (not
mere expiry); ``failed`` — a fetch for a key brought nothing usable (with why); ``fetched`` — every
fetch's outcome, good or bad (``Fetched``: the CA's URL, the result, why, how long it took), told
once the fetch is over, after ``stored`` or ``failed`` for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import structlog

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple

__all__ = ["Events", "Fetched", "Listener"]

log = structlog.get_logger("ocspproxy")


@dataclass(frozen=True, slots=True)
class Fetched:
    """One fetch for a key, over: ``result`` is the door's (``cache/door.Result``: stored, revoked,
    same, kept, passed, rejected) or ``failed`` when the source gave no answer; ``reason`` says why
    in the source's or validation's words; ``failed`` is True for rejected and failed."""

    key: CertKey
    url: str
    result: str
    reason: str
    seconds: float
    at: datetime
    failed: bool
    shared: bool = False  # a fleet member's answer, taken from the shared store, not the CA's


class Listener:
    """Subclass and override what you want told; the defaults ignore the event."""

    def stored(self, staple: Staple) -> None:
        return None

    def dropped(self, key: CertKey) -> None:
        return None

    def failed(self, key: CertKey, reason: str) -> None:
        return None

    def fetched(self, fetch: Fetched) -> None:
        return None


class Events:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def stored(self, staple: Staple) -> None:
        for listener in self._listeners:
            self._later(listener, listener.stored, staple)

    def dropped(self, key: CertKey) -> None:
        for listener in self._listeners:
            self._later(listener, listener.dropped, key)

    def failed(self, key: CertKey, reason: str) -> None:
        for listener in self._listeners:
            self._later(listener, listener.failed, key, reason)

    def fetched(self, fetch: Fetched) -> None:
        for listener in self._listeners:
            self._later(listener, listener.fetched, fetch)

    @staticmethod
    def _later(listener: Listener, method: object, *args: object) -> None:
        asyncio.get_running_loop().call_soon(_call, listener, method, args)


def _call(listener: Listener, method: object, args: tuple[object, ...]) -> None:
    try:
        method(*args)  # type: ignore[operator]
    except Exception as exc:
        log.error("listener failed", listener=type(listener).__name__, error=f"{type(exc).__name__}: {exc}")
