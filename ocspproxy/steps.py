"""Long start-up work written as generators of steps: run at once, or a slice at a time between
requests in the event loop (no thread: the certificate pass would interleave its short-lived
objects with the staples' and leave tens of megabytes of holes behind)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Generator, Iterator
from typing import TypeVar, cast

__all__ = ["Steps", "run_in_slices", "run_steps", "without_cycle_collection"]

T = TypeVar("T")
Steps = Generator[None, None, T]


def run_steps(steps: Steps[T]) -> T:
    """Run every step; the generator's return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)


async def run_in_slices(steps: Steps[T], slice_s: float = 0.005) -> T:
    """Run the steps, giving the event loop a turn at least every slice_s seconds (one step may
    take longer: a cold disk)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + slice_s
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)
        if loop.time() >= until:
            await asyncio.sleep(0)
            until = loop.time() + slice_s


@contextlib.contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Start-up makes a million objects and frees almost none: the cyclic collector would walk
    them again and again for nothing (a third of start-up with 100,000 certificates)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
