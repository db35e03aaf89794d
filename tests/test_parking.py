"""Keys whose upstream is paused wait behind one scout per upstream, with no timer of their own,
and are let go when the scout gets an answer, is found refreshed, or is no longer tracked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ocspproxy.cache.door import Ingested, Result
from ocspproxy.cache.parking import Parking
from ocspproxy.cache.refresher import Refresher
from ocspproxy.core.ocsp import CertKey
from ocspproxy.upstream.base import Job
from ocspproxy.upstream.http import UpstreamSettings
from tests.conftest import eventually
from tests.pki import TestCA
from tests.upstream import FakeUpstream, Reply

A = "http://a.test:80"
B = "http://b.test:80"


def key(n: int) -> CertKey:
    return CertKey(alg="sha1", issuer_key_hash=b"\x01" * 20, serial=n)


def test_one_scout_per_upstream_the_others_parked() -> None:
    p = Parking()
    assert p.held(key(1), A) is False, "the first held key is A's scout"
    assert p.held(key(2), A) is True
    assert p.held(key(3), A) is True
    assert p.held(key(1), A) is False, "the scout held again stays the scout"
    assert p.held(key(4), B) is False, "B has its own scout"
    assert p.held(key(3), A) is True, "parked twice (a clock jump, a drop): once in the list"
    assert len(p) == 2 and key(2) in p and key(1) not in p
    assert p.release(key(1)) == [key(2), key(3)], "the scout answered: the others go"
    assert len(p) == 0 and key(2) not in p
    assert p.held(key(2), A) is False, "after the release, the next key held is the new scout"
    assert p.release(key(4)) == []


def test_a_parked_key_released_on_its_own_is_forgotten_and_lets_none_go() -> None:
    p = Parking()
    p.held(key(1), A)
    p.held(key(2), A)
    p.held(key(3), A)
    assert p.release(key(2)) == [], "answered by a request, or untracked: only itself"
    assert key(2) not in p and len(p) == 1
    assert p.release(key(1)) == [key(3)]
    assert len(p) == 0


def test_a_scout_whose_url_changed_takes_the_keys_parked_behind_it_along() -> None:
    """A reload gave the scout's certificate another CA URL, also paused: nothing stays parked
    behind a scout that no longer tries that upstream."""
    p = Parking()
    p.held(key(1), A)
    p.held(key(2), A)
    p.held(key(5), B)
    assert p.held(key(1), B) is True, "B has its scout already"
    assert p.held(key(3), A) is False, "A has none now: key 3 scouts it"
    assert sorted(p.release(key(5)), key=lambda k: k.serial) == [key(1), key(2)]
    assert p.release(key(3)) == []
    assert len(p) == 0


async def test_a_ca_that_stays_down_costs_a_scout_not_a_retry_per_certificate(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """40 certificates with nothing stored yet, their CA down: after its pause begins, the fetches
    held are the scout's, not each certificate's on its own back-off; the CA answers again: the
    scout gets an answer and every certificate is fetched."""
    leaves = [ca.leaf() for _ in range(40)]
    upstream.behaviour = lambda serial: Reply(status=503)
    settings = UpstreamSettings(
        connect_timeout=1.0, total_timeout=2.0, hold_after=5, hold_first=0.4, hold_max=0.8
    )
    proxy = await make_proxy(ca=ca, leaves=leaves, upstream=settings).start()
    app = proxy.app
    assert app is not None
    app.scheduler.jump_spread = 0.5
    outcomes: list[Result] = []
    refresher: Refresher = app.refresher
    refresh = refresher.refresh

    def count(task: asyncio.Task[Ingested]) -> None:
        if not task.cancelled() and task.exception() is None:
            outcomes.append(task.result().result)

    def counted(key: CertKey, job: Job, *, keep_unknown: bool = True) -> asyncio.Task[Ingested]:
        task = refresh(key, job, keep_unknown=keep_unknown)
        task.add_done_callback(count)
        return task

    refresher.refresh = counted  # type: ignore[method-assign]
    # Every key but the scout parked (those whose fetch failed before the pause began are held,
    # and parked, at their first retry).
    await eventually(lambda: len(app.scheduler.parking) == 39, timeout=10)
    before = len(outcomes)
    await asyncio.sleep(3.0)  # unparked, each of the 40 keys would be fetched every 0.2-0.8 s
    during = outcomes[before:]
    assert len(during) <= 20, f"the scout's fetches only, at most one per 0.2 s: {during}"
    assert len(app.scheduler.parking) == 39
    upstream.behaviour = lambda serial: Reply(ca.respond(serial))
    keys = [ca.cert_id(leaf.serial).key for leaf in leaves]
    await eventually(lambda: all(app.cache.servable(k) is not None for k in keys), timeout=10)
    assert len(app.scheduler.parking) == 0
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert [e["event"] for e in lines].count("upstream answering again") == 1
