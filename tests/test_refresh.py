"""Pre-fetch and refresh through the real daemon, with short validity windows in real time."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
from pathlib import Path

import pytest

from ocspproxy.config import load_config
from ocspproxy.core.policy import RefreshPolicy
from ocspproxy.upstream.http import UpstreamSettings
from tests.conftest import eventually
from tests.pki import TestCA, pem
from tests.upstream import FakeUpstream, Reply


async def test_short_validity_is_refreshed_before_expiry_without_hammering(
    ca: TestCA, upstream: FakeUpstream, make_proxy
) -> None:
    validity = dt.timedelta(seconds=3)
    upstream.behaviour = lambda serial: Reply(
        ca.respond(serial, this_update=dt.datetime.now(dt.UTC), validity=validity)
    )
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    await eventually(lambda: proxy.app.cache.servable(key) is not None)
    seen = set()
    for _ in range(160):  # ~8 s, well past two validity windows
        staple = proxy.app.cache.servable(key)
        assert staple is not None, "the staple lapsed: refresh came too late"
        seen.add(staple.this_update)
        await asyncio.sleep(0.05)
    assert len(seen) >= 3, "refreshed several times"
    # About one upstream request per refresh: no fetch that did not bring a newer staple, bar the
    # ones still in flight or stored after the last look.
    assert len(upstream.requests) <= len(seen) + 2


async def test_failing_ca_is_retried_with_backoff(ca: TestCA, upstream: FakeUpstream, make_proxy) -> None:
    upstream.behaviour = lambda serial: Reply(status=500)
    leaf = ca.leaf()
    policy = RefreshPolicy(retry_initial=0.2, retry_max=1.0, retry_min=0.05)
    # The per-key back-off alone: the pause a failing upstream gets is tests/test_breaker.py's.
    alone = UpstreamSettings(connect_timeout=1.0, total_timeout=2.0, hold_after=1000)
    proxy = await make_proxy(ca=ca, leaves=[leaf], refresh=policy, upstream=alone).start()
    await asyncio.sleep(3)
    # 0.1-0.2, 0.2-0.4, 0.4-0.8, then at most one per 0.5-1.0 s: never a storm.
    assert 3 <= len(upstream.requests) <= 8
    gaps = [b - a for a, b in itertools.pairwise(upstream.times)]
    # Exponential: the fourth wait (0.5-1.0 s) is longer than twice the first (0.1-0.2 s); a
    # constant step (half to all of it, whatever it is) never is.
    assert gaps[3] > 2 * gaps[0], gaps
    upstream.behaviour = lambda serial: Reply(ca.respond(serial))
    key = ca.cert_id(leaf.serial).key
    await eventually(lambda: proxy.app.cache.servable(key) is not None, timeout=3)


async def test_requested_certid_joins_the_prefetch_set(ca: TestCA, make_proxy) -> None:
    configured, other = ca.leaf(), ca.leaf("other")
    proxy = await make_proxy(ca=ca, leaves=[configured]).start()
    answer = await proxy.post(ca.request(other.serial))
    assert answer.cert_status == "GOOD"
    assert ca.cert_id(other.serial).key in proxy.app.scheduler


async def test_unknown_serials_do_not_join_the_prefetch_set(
    ca: TestCA, upstream: FakeUpstream, make_proxy
) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()]).start()
    upstream.behaviour = lambda serial: Reply(ca.respond(serial, status="unknown"))
    answer = await proxy.post(ca.request(987654321))
    assert answer.cert_status == "UNKNOWN"
    key = ca.cert_id(987654321).key
    assert key not in proxy.app.scheduler
    assert proxy.app.cache.current(key) is None, "not held in memory"
    assert not list(Path(proxy.config.state_dir).glob(f"*-{key.serial:x}.der")), "not written to disk"


async def test_changed_certificate_file_is_fetched_without_restart(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path: Path
) -> None:
    old = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[old], watch_interval=0.5).start()
    await eventually(lambda: old.serial in upstream.requests)
    renewed = ca.leaf()
    leaf_path = Path(proxy.config.certs[0])
    leaf_path.write_bytes(pem(renewed.cert))
    key = ca.cert_id(renewed.serial).key
    await eventually(lambda: proxy.app.cache.servable(key) is not None, timeout=5)
    assert ca.cert_id(old.serial).key not in proxy.app.scheduler


async def test_reload_with_broken_apache_config_keeps_previous_state(
    ca: TestCA, make_proxy, tmp_path: Path
) -> None:
    leaf = ca.leaf()
    apache = tmp_path / "httpd.conf"
    apache.write_text("Listen 443\n")
    proxy = await make_proxy(ca=ca, leaves=[leaf], apache_config=apache).start()
    apache.write_text("<VirtualHost *:443>\n")  # unbalanced: unreadable
    await proxy.app.reload("test")
    assert ca.cert_id(leaf.serial).key in proxy.app.inventory.targets


async def test_unreadable_certificate_file_keeps_its_previous_certificate(
    ca: TestCA, make_proxy, tmp_path: Path
) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    key = ca.cert_id(leaf.serial).key
    Path(proxy.config.certs[0]).write_text("-----BEGIN CERTIFICATE-----\nhalf-written\n")
    await proxy.app.reload("test")
    assert key in proxy.app.inventory.targets and key in proxy.app.scheduler
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"


async def test_reload_rereads_the_config_and_keeps_it_when_broken(
    ca: TestCA, make_proxy, tmp_path: Path
) -> None:
    first, second = ca.leaf(), ca.leaf("second")
    proxy = make_proxy(ca=ca, leaves=[first, second])
    config_file = tmp_path / "ocspproxy.toml"
    config_file.write_text(f'certs = ["{proxy.config.certs[0]}"]\n')  # drops the second certificate
    proxy.reread = lambda: dataclasses.replace(proxy.config, certs=load_config(config_file).certs)
    await proxy.start()
    assert len(proxy.app.inventory.targets) == 2
    await proxy.app.reload("SIGHUP")
    assert list(proxy.app.inventory.targets) == [ca.cert_id(first.serial).key]
    config_file.write_text("[refresh]\nfraction = 7\n")
    await proxy.app.reload("SIGHUP")  # logged; the previous configuration stays
    assert list(proxy.app.inventory.targets) == [ca.cert_id(first.serial).key]
    assert proxy.app.config.refresh.fraction == 0.5


async def test_renewed_certificate_is_noticed_at_once_without_polling(
    ca: TestCA, upstream: FakeUpstream, make_proxy
) -> None:
    """inotify tells the daemon about the new file: no waiting for the (here hour-long) poll."""
    old = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[old], watch_interval=3600.0).start()
    await eventually(lambda: old.serial in upstream.requests)
    renewed = ca.leaf()
    tmp = Path(proxy.config.certs[0] + ".new")
    tmp.write_bytes(pem(renewed.cert))
    tmp.replace(proxy.config.certs[0])  # the way renewal tools replace a file
    key = ca.cert_id(renewed.serial).key
    await eventually(lambda: proxy.app.cache.servable(key) is not None, timeout=5)


async def test_a_certificate_behind_a_symbolic_link_is_watched_where_it_lives(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path: Path
) -> None:
    """certbot's layout: live/site.pem links to archive/site1.pem. A change in archive/ is noticed
    at once (inotify on the link's target directory), with no poll for an hour."""
    old = ca.leaf()
    archive, live = tmp_path / "archive", tmp_path / "live"
    archive.mkdir()
    live.mkdir()
    (archive / "site1.pem").write_bytes(pem(old.cert))
    (live / "site.pem").symlink_to(archive / "site1.pem")
    proxy = make_proxy(ca=ca, leaves=[old], watch_interval=3600.0)
    proxy.config = dataclasses.replace(proxy.config, certs=(str(live / "site.pem"),))
    await proxy.start()
    assert proxy.app.watcher is not None
    assert {archive, live} <= await asyncio.to_thread(proxy.app.watcher.directories)
    await eventually(lambda: old.serial in upstream.requests)
    renewed = ca.leaf()
    (archive / "site1.pem").write_bytes(pem(renewed.cert))  # in place, behind the link
    key = ca.cert_id(renewed.serial).key
    await eventually(lambda: proxy.app.cache.servable(key) is not None, timeout=5)


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_revocation_of_a_long_lived_staple_arrives_within_max_interval(
    ca: TestCA, upstream: FakeUpstream, make_proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """7-day responses, refreshed at ½ validity, would keep a revoked certificate stapled good for
    3.5 days. max_interval asks the CA again within its bound, and the revocation is shouted."""
    status = {"now": "good"}
    upstream.behaviour = lambda serial: Reply(
        ca.respond(
            serial, status=status["now"], this_update=dt.datetime.now(dt.UTC), validity=dt.timedelta(days=7)
        )
    )
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    policy = RefreshPolicy(max_interval=1.0, retry_initial=0.2, retry_max=2.0, retry_min=0.1)
    proxy = await make_proxy(ca=ca, leaves=[leaf], refresh=policy).start()
    await eventually(lambda: proxy.app.cache.servable(key) is not None)
    status["now"] = "revoked"
    revoked_at = asyncio.get_running_loop().time()

    def revoked() -> bool:
        staple = proxy.app.cache.servable(key)
        return staple is not None and staple.status == "revoked"

    await eventually(revoked, timeout=3)
    assert asyncio.get_running_loop().time() - revoked_at <= 1.0 + 0.5
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "REVOKED"
    critical = [r for r in _lines(capsys.readouterr().err) if r.get("level") == "critical"]
    assert [r["event"] for r in critical] == ["certificate revoked"]


async def test_first_fetch_revoked_for_a_configured_certificate_is_critical(
    ca: TestCA, upstream: FakeUpstream, make_proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.behaviour = lambda serial: Reply(ca.respond(serial, status="revoked"))
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    await eventually(lambda: proxy.app.cache.servable(key) is not None)
    lines = _lines(capsys.readouterr().err)
    critical = [r for r in lines if r.get("level") == "critical"]
    assert len(critical) == 1 and critical[0]["event"] == "certificate revoked"
    assert critical[0]["serial"] == f"{leaf.serial:x}"
    # After a restart the stored revoked staple is named again, once.
    await proxy.restart()
    again = [r for r in _lines(capsys.readouterr().err) if r.get("level") == "critical"]
    assert len(again) == 1 and again[0]["event"] == "certificate revoked" and again[0]["stored"] is True


async def test_revoked_answer_for_an_unconfigured_certificate_is_not_critical(
    ca: TestCA, upstream: FakeUpstream, make_proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    await eventually(lambda: proxy.app.cache.servable(ca.cert_id(leaf.serial).key) is not None)
    upstream.behaviour = lambda serial: Reply(ca.respond(serial, status="revoked"))
    assert (await proxy.post(ca.request(424242))).cert_status == "REVOKED"
    assert not [r for r in _lines(capsys.readouterr().err) if r.get("level") == "critical"]


async def test_returning_ca_is_noticed_soon_after_a_long_outage(
    ca: TestCA, upstream: FakeUpstream, make_proxy
) -> None:
    """The staple expired during the outage: retries stay within retry_unservable rather than
    backing off to retry_max, so the CA's return is noticed without waiting for a handshake."""
    upstream.behaviour = lambda serial: Reply(
        ca.respond(serial, this_update=dt.datetime.now(dt.UTC), validity=dt.timedelta(seconds=1))
    )
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    policy = RefreshPolicy(retry_initial=0.1, retry_max=30.0, retry_unservable=0.5, retry_min=0.05)
    # The upstream's pauses are bounded the same way (60 s and retry_unservable's 60 s, scaled).
    paused = UpstreamSettings(connect_timeout=1.0, total_timeout=2.0, hold_first=0.2, hold_max=0.5)
    proxy = await make_proxy(ca=ca, leaves=[leaf], refresh=policy, upstream=paused).start()
    await eventually(lambda: proxy.app.cache.servable(key) is not None)
    upstream.behaviour = lambda serial: Reply(status=500)
    await eventually(lambda: proxy.app.cache.servable(key) is None, timeout=3)
    await asyncio.sleep(3)  # a long outage: 30-s steps without the bound
    upstream.behaviour = lambda serial: Reply(ca.respond(serial, validity=dt.timedelta(hours=1)))
    back = asyncio.get_running_loop().time()
    await eventually(lambda: proxy.app.cache.servable(key) is not None, timeout=3)
    assert asyncio.get_running_loop().time() - back <= 0.5 + 0.3
