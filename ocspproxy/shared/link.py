"""The fleet's view of its Redis: usable or not, and why — logged once per change, never per
operation. Every operation goes through ``Link.call``, which bounds it in time and turns a failure
into a state (and None) instead of an exception, so nothing of the service ever waits on Redis
beyond ``timeout`` or fails because of it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

import structlog
from redis.exceptions import (
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeout,
)

__all__ = ["Backoff", "Link", "State", "cancelled", "classify", "keep_running"]

log = structlog.get_logger("ocspproxy")
T = TypeVar("T")


class State(StrEnum):
    OK = "ok"
    UNREACHABLE = "unreachable"  # down, refusing, too slow: nothing is asked until a probe passes
    FULL = "full"  # maxmemory with noeviction: read, but nothing written, leases not taken
    READ_ONLY = "read-only"  # a replica (after a failover): as full
    FAILING = "failing"  # anything else Redis answers with (a wrong password, a missing permission)


_MESSAGES = {
    State.OK: "shared store reachable",
    State.UNREACHABLE: "shared store unreachable; going on alone",
    State.FULL: "shared store full (maxmemory); going on alone",
    State.READ_ONLY: "shared store read-only (a replica?); going on alone",
    State.FAILING: "shared store refuses the fleet's commands; going on alone",
}


def classify(exc: BaseException) -> State:
    if isinstance(exc, OutOfMemoryError) or (isinstance(exc, ResponseError) and str(exc).startswith("OOM")):
        return State.FULL
    if isinstance(exc, ReadOnlyError) or (isinstance(exc, ResponseError) and "READONLY" in str(exc)):
        return State.READ_ONLY
    if isinstance(exc, ResponseError):
        return State.FAILING
    return State.UNREACHABLE  # ConnectionError, TimeoutError, OSError, a lost connection


def cancelled(exc: BaseException) -> None:
    """Raise CancelledError if the current task is being cancelled: redis-py turns a cancellation
    that lands mid-connect into a ConnectionError, and swallowing that would keep a task that was
    told to stop (shutdown) running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def keep_running(name: str, run: Callable[[], Awaitable[None]], closing: Callable[[], bool]) -> None:
    """Run a fleet loop for good: one that ends (an error, a cancellation that is not a shutdown's)
    is logged and started again a second later, so that an instance never silently stops
    following or probing its Redis."""
    while True:
        try:
            await run()
            raise RuntimeError("returned")
        except BaseException as exc:
            if closing() or isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            log.error("fleet task stopped; started again", task=name, error=f"{type(exc).__name__}: {exc}")
            task = asyncio.current_task()
            while task is not None and task.cancelling():
                task.uncancel()
        await asyncio.sleep(1.0)


class Link:
    def __init__(self, *, where: str, timeout: float, on_usable: Callable[[], None] = lambda: None) -> None:
        self.where = where  # for the log: never the password
        self.timeout = timeout
        self.on_usable = on_usable  # called each time the state becomes OK: the fleet syncs then
        self.state = State.UNREACHABLE  # until the first write passes
        self._announced: State | None = None
        self.known = asyncio.Event()  # set once the first call has told usable or not

    async def first_word(self) -> None:
        """Until the first call has told whether Redis is usable (bounded): a fetch decided on
        before it would ask the CA for what Redis holds."""
        if not self.known.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout * 2):
                    await self.known.wait()

    @property
    def writable(self) -> bool:
        return self.state is State.OK

    @property
    def readable(self) -> bool:
        return self.state in (State.OK, State.FULL, State.READ_ONLY)

    async def call(self, op: Callable[[], Awaitable[T]], *, probe: bool = False) -> T | None:
        """op's result, or None when it failed (the state says why). Only the probe (a plain
        write) makes the state OK when it succeeds: a read, or a script that ends up writing
        nothing, succeeds on a read-only replica or a full Redis too."""
        try:
            # Twice the socket timeout: a reply that trickles in never holds a caller longer.
            async with asyncio.timeout(self.timeout * 2):
                result = await op()
        except (RedisError, OSError, TimeoutError, RedisTimeout) as exc:
            cancelled(exc)
            self.note(classify(exc), exc)
            return None
        if probe:
            self.note(State.OK)
        return result

    def note(self, state: State, exc: BaseException | None = None) -> None:
        self.known.set()
        if state is self._announced:
            return
        self.state = self._announced = state
        fields: dict[str, object] = {"store": self.where}
        if exc is not None:
            fields["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if state is State.OK:
            log.info(_MESSAGES[state], **fields)
            self.on_usable()
        elif state is State.FULL or state is State.FAILING:
            log.error(_MESSAGES[state], **fields)
        else:
            log.warning(_MESSAGES[state], **fields)


class Backoff:
    """Delays between tries while Redis is unusable: doubling from ``first`` to ``cap``, each one
    anywhere between half and all of its step, so that a fleet does not come back in step."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.first, self.cap = first, cap
        self.rng = rng or random.Random()
        self._step = first

    def next(self) -> float:
        step = self._step
        self._step = min(self.cap, step * 2)
        return step * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self._step = self.first
