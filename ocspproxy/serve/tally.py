"""Plain counters of the requests one process answered, for the metrics: how many per outcome, how
long they took (histogram buckets), how many connections were refused at the cap.

Kept as plain integers so that counting costs next to nothing on the hot path and a worker process
needs nothing to keep them (no prometheus-client, no aiohttp): a worker sends its ``snapshot`` to
the main process now and then (``workers/protocol.py``), and the main process's admin listener
turns every process's tally into Prometheus metrics at scrape time (``admin/metrics.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS", "Tally", "TallySnapshot"]

# Upper bounds (seconds) of the answer latency histogram: a hit takes well under a millisecond, a
# miss as long as the CA (within answer_budget, 3 s by default). A last bucket holds the rest (+Inf).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


@dataclass(slots=True)
class TallySnapshot:
    """A tally's numbers at one moment: counts by outcome, and per outcome the latency histogram
    (one count per bucket of ``LATENCY_BUCKETS`` and one for +Inf, not cumulative) and its sum."""

    answers: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    refused: int = 0

    def add(self, other: TallySnapshot) -> None:
        """Add other's numbers to these (a worker's earlier lives, several processes)."""
        for outcome, count in other.answers.items():
            self.answers[outcome] = self.answers.get(outcome, 0) + count
        for outcome, counts in other.buckets.items():
            mine = self.buckets.setdefault(outcome, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, count in enumerate(counts[: len(mine)]):
                mine[i] += count
        for outcome, seconds in other.seconds.items():
            self.seconds[outcome] = self.seconds.get(outcome, 0.0) + seconds
        self.refused += other.refused


class Tally:
    """One process's counters. ``answered`` is the one call on the request path."""

    __slots__ = ("_buckets", "_seconds", "answers", "changed")

    def __init__(self) -> None:
        self.answers: dict[str, int] = {}
        self._buckets: dict[str, list[int]] = {}
        self._seconds: dict[str, float] = {}
        self.changed = False  # since the last snapshot (a worker reports only when something did)

    def answered(self, outcome: str, seconds: float) -> None:
        answers = self.answers
        if outcome in answers:
            answers[outcome] += 1
            self._buckets[outcome][bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._seconds[outcome] += seconds
        else:
            answers[outcome] = 1
            buckets = self._buckets[outcome] = [0] * (len(LATENCY_BUCKETS) + 1)
            buckets[bisect_left(LATENCY_BUCKETS, seconds)] = 1
            self._seconds[outcome] = seconds
        self.changed = True

    def snapshot(self, refused: int = 0) -> TallySnapshot:
        """A copy of the numbers now; refused: the process's gate's count of refused connections."""
        self.changed = False
        return TallySnapshot(
            answers=dict(self.answers),
            buckets={outcome: list(counts) for outcome, counts in self._buckets.items()},
            seconds=dict(self._seconds),
            refused=refused,
        )
