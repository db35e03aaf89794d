"""An upstream that keeps failing is given a pause: its fetches fail at once without a connection,
one probe goes out after the pause, and each change is logged once. Then the service with a CA
that is down for many certificates."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from ocspproxy.upstream.base import SourceHeld
from ocspproxy.upstream.breaker import Breaker
from ocspproxy.upstream.http import UpstreamSettings
from tests.conftest import eventually
from tests.pki import TestCA
from tests.upstream import FakeUpstream, Reply

CA = "http://ca.test:80"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> Breaker:
    return Breaker(threshold=3, first=10.0, cap=40.0, clock=clock, rng=random.Random(1))


def held(b: Breaker) -> bool:
    try:
        b.check(CA)
    except SourceHeld:
        return True
    return False


def test_failures_in_a_row_hold_the_upstream_then_one_probe_goes_out() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(2):
        assert b.check(CA) is False
        b.failed(CA, "connection refused")
    assert not held(b), "two failures: still asked"
    b.failed(CA, "connection refused")
    assert held(b)
    with pytest.raises(SourceHeld, match=r"failed 3 times in a row \(connection refused\)") as info:
        b.check(CA)
    assert info.value.where == CA
    assert 5.0 <= info.value.wait <= 10.0, "the time left in the pause: half to all of 10 s"
    clock.now += 10.0  # the longest first pause
    assert b.check(CA) is True, "the probe"
    with pytest.raises(SourceHeld, match="being tried again") as info:
        b.check(CA)
    assert info.value.wait == 5.0, "one probe at a time; the others wait half the shortest pause"
    b.failed(CA, "connection refused", probe=True)
    clock.now += 9.9
    assert held(b), "the second pause is longer: 10 to 20 s"


def test_pauses_double_up_to_the_cap_and_failures_begun_before_do_not_lengthen_them() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failed(CA, "timed out")
    pauses = []
    for _ in range(6):
        start = clock.now
        while True:
            try:
                assert b.check(CA) is True  # the probe
                break
            except SourceHeld:
                clock.now += 0.5
        pauses.append(clock.now - start)
        for _ in range(10):
            b.failed(CA, "timed out")  # fetches begun before the pause
        b.failed(CA, "timed out", probe=True)
    assert pauses[0] <= 10.5 and all(p <= 40.5 for p in pauses), pauses
    assert pauses[-1] >= 20.0, "doubled towards the cap"


def test_an_answer_closes_the_breaker(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failed(CA, "HTTP 503")
    clock.now += 10.0
    assert b.check(CA) is True
    b.succeeded(CA)
    assert not held(b) and b.check(CA) is False
    b.failed(CA, "HTTP 503")
    assert not held(b), "counting starts again"
    events = [
        json.loads(line)["event"] for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    assert events.count("upstream failing; fetches held") == 1
    assert events.count("upstream answering again") == 1


def test_an_abandoned_probe_lets_another_go() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failed(CA, "timed out")
    clock.now += 10.0
    assert b.check(CA) is True
    b.abandoned(CA)
    assert b.check(CA) is True


async def test_a_ca_that_is_down_is_asked_a_few_times_not_once_per_certificate(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """40 certificates, their CA down: a handful of requests reach it, one line says it is held,
    the fetches held are logged at debug level only; it answers again: fetches go on."""
    leaves = [ca.leaf() for _ in range(40)]
    upstream.behaviour = lambda serial: Reply(status=503)
    settings = UpstreamSettings(connect_timeout=1.0, total_timeout=2.0, hold_after=5, hold_first=1.0)
    proxy = await make_proxy(ca=ca, leaves=leaves, upstream=settings).start()
    assert proxy.app is not None
    proxy.app.scheduler.jump_spread = 0.5  # keys parked behind the pause: let go over 0.5 s
    await asyncio.sleep(0.6)
    asked = len(upstream.requests)
    assert 5 <= asked <= 5 + 32, "at most what was in flight when it failed five times in a row"
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert [e["event"] for e in lines].count("upstream failing; fetches held") == 1
    warned = [e for e in lines if e["event"] == "upstream" and e["level"] == "warning"]
    assert len(warned) == asked, "a warning per fetch that reached the CA, none for those held"
    upstream.behaviour = lambda serial: Reply(ca.respond(serial))
    keys = [ca.cert_id(leaf.serial).key for leaf in leaves]
    await eventually(lambda: all(proxy.app.cache.servable(k) is not None for k in keys), timeout=15)
    assert "upstream answering again" in capsys.readouterr().err
