"""A running service seen through its admin listener: hits, misses, unknown issuers, garbage, a CA
that fails, an outage until the staple is near expiry, a forced refresh, and workers. At each step
the metrics (parsed with prometheus-client's own parser), /status.json and ``ocspproxy status``'s
exit code are asserted."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ocspproxy.admin.commands import Context, refresh_command, status_command
from tests.conftest import Proxy, eventually
from tests.pki import TestCA
from tests.upstream import FakeUpstream, Reply

Samples = list[tuple[str, dict[str, str], float]]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def scrape(proxy: Proxy) -> Samples:
    status, text = await get(proxy.admin_url + "/metrics")
    assert status == 200
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of the samples of name whose labels include these; None when there is none."""
    found = [v for n, got, v in samples if n == name and labels.items() <= got.items()]
    return sum(found) if found else None


async def status_json(proxy: Proxy) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + "/status.json") as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def status(proxy: Proxy) -> tuple[int, list[str]]:
    out: list[str] = []
    ctx = Context(out=out.append, err=out.append)
    code = await asyncio.to_thread(
        status_command, admin=proxy.admin_url, config_file=None, state_dir=None, as_json=False, ctx=ctx
    )
    return code, out


async def refresh(proxy: Proxy, *files: str) -> tuple[int, list[str]]:
    out: list[str] = []
    ctx = Context(out=out.append, err=out.append)
    code = await asyncio.to_thread(
        refresh_command,
        admin=proxy.admin_url,
        config_file=None,
        state_dir=None,
        everything=not files,
        files=list(files),
        as_json=False,
        ctx=ctx,
    )
    return code, out


def row_of(document: dict[str, Any], serial: int) -> dict[str, Any]:
    (row,) = [r for r in document["certificates"] if r["serial"] == f"{serial:x}"]
    return dict(row)


async def test_the_admin_listener_follows_the_service_step_by_step(
    ca: TestCA, upstream: FakeUpstream, make_proxy
) -> None:
    leaf = ca.leaf("www.example.org")
    no_url = ca.leaf("no-ocsp.example.org", ocsp_url=None)
    proxy = await make_proxy(ca=ca, leaves=[leaf, no_url]).start()
    host = f"127.0.0.1:{upstream.port}"
    file = proxy.config.certs[0]

    # Start-up: the configured certificate is fetched once; the one without an OCSP URL is "none".
    await eventually(
        lambda: proxy.app is not None and proxy.app.cache.servable(ca.cert_id(leaf.serial).key) is not None
    )
    code, out = await status(proxy)
    assert code == 0, out
    assert out[0].startswith("OCSPPROXY OK - 1 ok, 0 warning, 0 critical, 1 none")
    document = await status_json(proxy)
    row = row_of(document, leaf.serial)
    assert (row["verdict"], row["status"], row["consecutive_failures"]) == ("ok", "good", 0)
    assert (
        row["files"] == [file] and row["subject"] == "CN=www.example.org" and row["ocsp_url"] == ca.ocsp_url
    )
    assert row["last_fetch"]["result"] == "stored" and row["next_refresh"] is not None
    (none,) = [r for r in document["certificates"] if r["verdict"] == "none"]
    assert "no OCSP URL" in none["why"]
    staple = proxy.app.cache.servable(ca.cert_id(leaf.serial).key)
    assert staple is not None and row["next_update"] == staple.next_update.isoformat()
    m = await scrape(proxy)
    assert value(m, "ocspproxy_upstream_fetches_total", host=host, result="ok", reason="stored") == 1
    assert value(m, "ocspproxy_upstream_fetch_duration_seconds_count", host=host) == 1
    labels = {"file": file, "serial": f"{leaf.serial:x}"}
    assert value(m, "ocspproxy_certificate_staple_next_update_timestamp_seconds", **labels) == (
        staple.next_update.timestamp()
    )
    assert value(m, "ocspproxy_certificate_verdict", verdict="ok", **labels) == 1
    assert value(m, "ocspproxy_certificate_consecutive_fetch_failures", **labels) == 0
    assert value(m, "ocspproxy_certificates", verdict="none") == 1
    assert value(m, "ocspproxy_certificates_unstapled", reason="no_ocsp_url") == 1
    assert value(m, "ocspproxy_staples_in_memory") == 1
    assert value(m, "ocspproxy_ready") == 1
    assert value(m, "ocspproxy_requests_total") is None  # nothing asked yet

    # Hits, a miss (a certificate of the same CA not configured), an unknown issuer, garbage.
    for _ in range(3):
        assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"
    other = ca.leaf("other.example.org")
    assert (await proxy.post(ca.request(other.serial))).cert_status == "GOOD"
    stranger = TestCA(ocsp_url=ca.ocsp_url)
    assert (await proxy.post(stranger.request(stranger.leaf().serial))).status == "UNAUTHORIZED"
    assert (await proxy.post(b"not OCSP")).status == "MALFORMED_REQUEST"
    m = await scrape(proxy)
    assert value(m, "ocspproxy_requests_total", process="main", outcome="hit", status="successful") == 3
    assert value(m, "ocspproxy_requests_total", outcome="miss", status="successful") == 1
    assert value(m, "ocspproxy_requests_total", outcome="unauthorized", status="unauthorized") == 1
    assert value(m, "ocspproxy_requests_total", outcome="malformed", status="malformedRequest") == 1
    assert value(m, "ocspproxy_request_duration_seconds_count", outcome="hit") == 3
    assert value(m, "ocspproxy_request_duration_seconds_bucket", outcome="hit", le="+Inf") == 3
    assert value(m, "ocspproxy_upstream_fetches_total", result="ok", reason="stored") == 2  # + the miss

    # The CA fails: a forced refresh says so, the staple has time left: warning (exit 1).
    upstream.behaviour = lambda serial: Reply(status=500)
    code, out = await refresh(proxy, file)
    assert code == 1 and out[0].startswith(f"{file}: failed") and "HTTP 500" in out[0], out
    assert (await proxy.post(ca.request(ca.leaf("third.example.org").serial))).status == "TRY_LATER"
    code, out = await status(proxy)
    assert code == 1 and out[0].startswith("OCSPPROXY WARNING"), out
    row = row_of(await status_json(proxy), leaf.serial)
    assert (row["verdict"], row["consecutive_failures"], row["last_fetch"]["error"]) == (
        "warning",
        1,
        "HTTP 500",
    )
    m = await scrape(proxy)
    assert value(m, "ocspproxy_upstream_fetches_total", host=host, result="http_error", reason="500") == 2
    assert value(m, "ocspproxy_requests_total", outcome="failed", status="tryLater") == 1
    assert value(m, "ocspproxy_certificate_consecutive_fetch_failures", **labels) == 1
    assert value(m, "ocspproxy_certificate_verdict", verdict="warning", **labels) == 1
    assert value(m, "ocspproxy_certificate_last_fetch_timestamp_seconds", **labels) is not None

    # The outage lasts until the staple is near expiry (the admin's clock moved 50 min on: 9 min
    # left of 60, within the last fifth): critical (exit 2); once past nextUpdate, expired.
    assert proxy.app is not None and proxy.app.admin is not None
    view = proxy.app.admin.view
    real = view.clock
    view.clock = lambda: real() + dt.timedelta(minutes=50)
    code, out = await refresh(proxy, file)
    assert code == 1
    code, out = await status(proxy)
    assert code == 2 and out[0].startswith("OCSPPROXY CRITICAL"), out
    row = row_of(await status_json(proxy), leaf.serial)
    assert (row["verdict"], row["status"], row["consecutive_failures"]) == ("critical", "good", 2)
    assert "expires in" in row["why"] and "HTTP 500" in row["why"]
    view.clock = lambda: real() + dt.timedelta(minutes=61)
    row = row_of(await status_json(proxy), leaf.serial)
    assert (row["verdict"], row["status"]) == ("critical", "expired")
    m = await scrape(proxy)
    assert value(m, "ocspproxy_certificate_staple_status", status="expired", **labels) == 1
    assert value(m, "ocspproxy_certificates", verdict="critical") == 1

    # The CA is back: a forced refresh brings a new staple at once (exit 0), all is ok again.
    view.clock = real
    upstream.behaviour = lambda serial: Reply(ca.respond(serial))
    code, out = await refresh(proxy, file)
    assert code == 0 and "staple good until" in out[0], out
    code, out = await status(proxy)
    assert code == 0, out
    row = row_of(await status_json(proxy), leaf.serial)
    assert (row["verdict"], row["consecutive_failures"]) == ("ok", 0)
    m = await scrape(proxy)
    assert value(m, "ocspproxy_certificate_consecutive_fetch_failures", **labels) == 0
    assert value(m, "ocspproxy_upstream_fetches_total", host=host, result="ok") == 3


async def test_refresh_names_what_it_does_not_know(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    code, out = await refresh(proxy, "/no/such/cert.pem")
    assert code == 1 and out[0] == "/no/such/cert.pem: not a configured certificate", out
    code, out = await refresh(proxy)  # --all
    assert code == 0 and out[-1] == "1 of 1 fetched a usable answer", out


async def test_workers_report_their_counts_into_one_set_of_numbers(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], workers=2).start()
    key = ca.cert_id(leaf.serial).key
    await eventually(lambda: proxy.app is not None and proxy.app.cache.servable(key) is not None)
    answers = [await proxy.post(ca.request(leaf.serial)) for _ in range(40)]
    assert all(a.cert_status == "GOOD" for a in answers)

    async def counted() -> Samples:
        return await scrape(proxy)

    deadline = asyncio.get_running_loop().time() + 10
    while True:
        m = await counted()
        total = (value(m, "ocspproxy_requests_total", outcome="hit") or 0) + (
            value(m, "ocspproxy_requests_total", outcome="miss") or 0
        )
        if total == 40 and value(m, "ocspproxy_requests_total", process="worker1") is not None:
            break
        assert asyncio.get_running_loop().time() < deadline, m
        await asyncio.sleep(0.2)
    assert value(m, "ocspproxy_requests_total", process="main") is not None
    worker_hits = value(m, "ocspproxy_requests_total", process="worker1", outcome="hit")
    assert worker_hits is not None and worker_hits > 0
    assert value(m, "ocspproxy_request_duration_seconds_count") == 40
    assert value(m, "ocspproxy_connections_refused_total", process="worker1") == 0
