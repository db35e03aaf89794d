"""Accept and refresh policies with an injected clock and seeded randomness."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import RefreshPolicy, Verdict, accept
from ocspproxy.core.staple import CertStatus, Staple

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = CertKey(alg="sha1", issuer_key_hash=b"\x01" * 20, serial=7)


def staple(
    status: CertStatus = CertStatus.GOOD,
    *,
    this_update: datetime = T0,
    validity: timedelta = timedelta(days=1),
    der: bytes | None = None,
) -> Staple:
    return Staple(
        key=KEY,
        der=der or f"{status}{this_update.isoformat()}".encode(),
        status=status,
        this_update=this_update,
        next_update=this_update + validity,
        produced_at=this_update,
    )


def test_first_staple_is_stored() -> None:
    assert accept(None, staple(), T0).verdict is Verdict.STORE


def test_expired_current_is_replaced_by_anything_valid() -> None:
    old = staple(validity=timedelta(hours=1))
    new = staple(CertStatus.UNKNOWN, this_update=T0 + timedelta(hours=2))
    assert accept(old, new, T0 + timedelta(hours=2)).verdict is Verdict.STORE


def test_newer_good_replaces_good() -> None:
    assert accept(staple(), staple(this_update=T0 + timedelta(hours=1)), T0).verdict is Verdict.STORE


def test_older_never_replaces_newer() -> None:
    newer = staple(this_update=T0 + timedelta(hours=1))
    decision = accept(newer, staple(), T0 + timedelta(hours=1))
    assert decision.verdict is Verdict.KEEP and not decision.stores


def test_same_bytes_are_not_rewritten() -> None:
    current = staple()
    assert accept(current, staple(), T0).verdict is Verdict.SAME


def test_revoked_replaces_good_at_once_with_an_alert() -> None:
    decision = accept(staple(), staple(CertStatus.REVOKED, this_update=T0 + timedelta(minutes=1)), T0)
    assert decision.verdict is Verdict.ALERT and decision.stores


def test_revoked_wins_a_tie_with_good() -> None:
    assert accept(staple(), staple(CertStatus.REVOKED), T0).verdict is Verdict.ALERT


def test_older_revoked_does_not_replace_newer_good() -> None:
    newer = staple(this_update=T0 + timedelta(hours=1))
    assert accept(newer, staple(CertStatus.REVOKED), T0 + timedelta(hours=1)).verdict is Verdict.KEEP


def test_unknown_does_not_replace_good() -> None:
    decision = accept(staple(), staple(CertStatus.UNKNOWN, this_update=T0 + timedelta(minutes=1)), T0)
    assert decision.verdict is Verdict.KEEP


def test_serving_stops_exactly_at_next_update() -> None:
    s = staple(validity=timedelta(minutes=1))
    assert s.servable(T0 + timedelta(seconds=59, microseconds=999_999))
    assert not s.servable(T0 + timedelta(minutes=1))


POLICY = RefreshPolicy()


@pytest.mark.parametrize("validity", [timedelta(minutes=1), timedelta(hours=1), timedelta(days=10)])
def test_due_lies_between_fraction_and_fraction_plus_jitter(validity: timedelta) -> None:
    rng = random.Random(1)
    s = staple(validity=validity)
    dues = [POLICY.due(s, rng) for _ in range(200)]
    assert all(T0 + validity * 0.5 <= d <= T0 + validity * 0.6 for d in dues)
    assert len(set(dues)) > 100, "jitter spreads refreshes"
    assert min(dues) < T0 + validity * 0.51 and max(dues) > T0 + validity * 0.59, "over the whole jitter"


def test_due_never_later_than_the_margin() -> None:
    late = RefreshPolicy(fraction=0.6, jitter=0.3, margin=0.2)  # would reach 0.9 without the cap
    s = staple(validity=timedelta(hours=10))
    dues = [late.due(s, random.Random(n)) for n in range(100)]
    assert max(dues) == T0 + timedelta(hours=8)


@pytest.mark.parametrize("validity", [timedelta(minutes=1), timedelta(hours=1), timedelta(days=10)])
def test_outage_gets_several_attempts_before_expiry_without_hammering(validity: timedelta) -> None:
    """From the first due time until nextUpdate, retries back off yet several land before expiry."""
    rng = random.Random(2)
    s = staple(validity=validity)
    now = POLICY.due(s, rng)
    attempts = 0
    while s.servable(now):
        attempts += 1
        now += POLICY.retry_delay(attempts, s, now, rng)
    assert attempts >= 4, f"only {attempts} attempts before expiry"
    # Bounded: no more than one try per retry_min in the worst case, and far fewer for long windows.
    assert attempts <= validity.total_seconds() / POLICY.retry_min
    if validity >= timedelta(days=1):
        assert attempts < 1000


def test_retry_backs_off_exponentially_to_the_cap() -> None:
    """With a staple far from expiry: each step doubles (jitter takes half to all of it)."""
    rng = random.Random(3)
    s = staple(validity=timedelta(days=10))
    delays = [POLICY.retry_delay(n, s, T0, rng).total_seconds() for n in range(1, 20)]
    for n, delay in enumerate(delays, 1):
        step = min(POLICY.retry_max, POLICY.retry_initial * 2 ** (n - 1))
        assert step / 2 <= delay <= step, (n, delay)
    assert delays[-1] >= POLICY.retry_max / 2


def test_retry_without_servable_staple_stays_short() -> None:
    """Nothing servable held (never fetched, or expired in a long outage): retries stay within
    retry_unservable, so a CA that comes back is noticed within about a minute."""
    rng = random.Random(3)
    expired = staple(validity=timedelta(hours=1))
    for held in (None, expired):
        delays = [
            POLICY.retry_delay(n, held, T0 + timedelta(hours=2), rng).total_seconds() for n in range(1, 40)
        ]
        assert delays[0] <= POLICY.retry_initial
        assert max(delays) <= POLICY.retry_unservable == 60.0
        assert min(delays[6:]) >= POLICY.retry_unservable / 2, "bounded, yet not hammering"


def test_interval_is_at_most_max_interval_and_spread() -> None:
    rng = random.Random(4)
    intervals = [POLICY.interval(rng) for _ in range(200)]
    assert POLICY.max_interval == 3600.0
    assert all(3600.0 * 0.9 <= i <= 3600.0 for i in intervals)
    assert max(intervals) - min(intervals) > 300, "jitter spreads them"
