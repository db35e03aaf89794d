"""Holding fetches to an upstream that keeps failing (a circuit breaker).

A CA responder (or the proxy in front of it) that fails ``threshold`` times in a row — refused,
timed out, HTTP errors — is not asked again for a while: the fetches for its certificates fail at
once (``SourceHeld``) without a connection, and the refresher logs them at debug level only. After
the pause one fetch is let through as a probe: an answer closes the breaker, a failure pauses
again, twice as long (with jitter, so that instances do not come back in step), up to ``cap``.
Each change is logged once ("upstream failing; fetches held", "upstream answering again").

Why: every certificate keeps its own schedule, and with 100,000 of them a CA that is down (or
unreachable by design, behind an air gap) would otherwise be asked dozens of times a second, each a
warning line. Stored staples stay served meanwhile, as for any failed fetch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ocspproxy.upstream.base import SourceHeld

__all__ = ["Breaker"]

log = structlog.get_logger("ocspproxy")


@dataclass(slots=True)
class _State:
    failures: int = 0  # in a row
    pauses: int = 0  # in a row: the next pause doubles
    until: float = 0.0  # monotonic: held until then
    probing: bool = False  # the one fetch let through after a pause is out
    reason: str = ""
    held_since: float = 0.0


class Breaker:
    def __init__(
        self,
        *,
        threshold: int = 5,
        first: float = 10.0,
        cap: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.threshold = threshold
        self.first = first
        self.cap = cap
        self.clock = clock
        self.rng = rng or random.Random()
        self._states: dict[str, _State] = {}

    def check(self, where: str) -> bool:
        """Raise SourceHeld while where is held; True when this fetch is the probe after a pause
        (its outcome must be told: ``failed`` or ``succeeded``, or ``abandoned``)."""
        state = self._states.get(where)
        if state is None or state.failures < self.threshold:
            return False
        left = state.until - self.clock()
        if left > 0 or state.probing:
            wait = f"tried again in {max(left, 0):.0f} s" if not state.probing else "being tried again"
            raise SourceHeld(
                f"not asked: {where} failed {state.failures} times in a row ({state.reason}); {wait}",
                where=where,
                # Until the pause ends; while the probe is out, half the shortest pause.
                wait=max(left, 0.01) if not state.probing else self.first / 2,
            )
        state.probing = True
        return True

    def failed(self, where: str, reason: str, *, probe: bool = False) -> None:
        """A fetch to where failed; ``probe``: it was the one let through after a pause."""
        state = self._states.setdefault(where, _State())
        held = state.failures >= self.threshold
        state.failures += 1
        state.reason = reason
        if held and not probe:
            return  # begun before the pause: says nothing new, and does not lengthen it
        state.probing = False
        if state.failures < self.threshold:
            return
        if state.pauses == 0:
            state.held_since = self.clock()
        state.pauses += 1
        step = min(self.cap, self.first * 2 ** (state.pauses - 1))
        pause = step * (0.5 + 0.5 * self.rng.random())
        state.until = self.clock() + pause
        if state.pauses == 1:
            log.warning(
                "upstream failing; fetches held",
                upstream=where,
                failures=state.failures,
                reason=reason,
                retry_in_s=round(pause, 1),
            )

    def succeeded(self, where: str) -> None:
        state = self._states.pop(where, None)
        if state is not None and state.pauses:
            log.info(
                "upstream answering again",
                upstream=where,
                held_for_s=round(self.clock() - state.held_since, 1),
                failures=state.failures,
            )

    def abandoned(self, where: str) -> None:
        """The probe ended with no outcome (cancelled): let another be the probe."""
        state = self._states.get(where)
        if state is not None:
            state.probing = False
