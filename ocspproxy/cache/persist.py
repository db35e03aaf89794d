"""Writing accepted staples to the store without losing one when it fails.

One write at a time per key (an older staple is never written over a newer one). A write that fails
keeps its staple aside; once a later write succeeds (the store recovered), those are written. The
store's state is logged once per change (failing, recovered), as seen by the most recently started
write, however many writes fail.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable
from datetime import datetime

import structlog

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.store.base import Store, StoreError

__all__ = ["Persister"]

log = structlog.get_logger("ocspproxy")


class Persister:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock
        self._broken = False
        self.failures = 0  # writes the store refused, ever (a metric)
        self._seq = itertools.count()
        self._state_seq = -1  # the most recently started write whose outcome is known
        self._unsaved: dict[CertKey, Staple] = {}
        self._locks: weakref.WeakValueDictionary[CertKey, asyncio.Lock] = weakref.WeakValueDictionary()
        self._flush: asyncio.Task[None] | None = None

    @property
    def unsaved(self) -> int:
        return len(self._unsaved)

    async def save(self, staple: Staple, *, pending: bool = False) -> bool:
        """Write staple; True once it is there. With pending, only if it is still the one waiting
        for the store (not superseded meanwhile)."""
        key = staple.key
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            if pending and self._unsaved.get(key) is not staple:
                return True
            seq = next(self._seq)
            try:
                await asyncio.to_thread(self.store.save, staple)
            except StoreError as exc:
                self.failures += 1
                self._unsaved[key] = staple
                self._note(seq, exc)
                return False
            self._unsaved.pop(key, None)  # what was waiting for this key is older than what was written
        if self._note(seq, None) and self._unsaved and self._flush is None:
            self._flush = asyncio.create_task(self._write_unsaved())
        return True

    def _note(self, seq: int, error: StoreError | None) -> bool:
        """Note a write's outcome; log a change of state once. True when the store has just recovered."""
        if seq < self._state_seq:
            return False  # a write started before the latest known outcome: says nothing newer
        self._state_seq = seq
        if error is not None:
            if not self._broken:
                log.error("store failing; serving from memory", error=str(error))
                self._broken = True
            return False
        if not self._broken:
            return False
        log.info("store recovered", unsaved=len(self._unsaved))
        self._broken = False
        return True

    async def _write_unsaved(self) -> None:
        """After a recovery, write the staples accepted while the store was failing."""
        try:
            for key, staple in list(self._unsaved.items()):
                if not staple.servable(self.clock()):
                    if self._unsaved.get(key) is staple:
                        del self._unsaved[key]  # never servable again: nothing to keep
                    continue
                if not await self.save(staple, pending=True):
                    return  # failing again; the next recovery starts over
        finally:
            self._flush = None

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            await asyncio.gather(self._flush, return_exceptions=True)
