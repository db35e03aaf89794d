"""Hostile clients: slow senders, connection floods, broken HTTP, scanners. Each asserts the outcome."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import pytest

from tests.pki import TestCA, pem
from tests.upstream import FakeUpstream, Reply

FAST = {"answer_budget": 0.5, "request_timeout": 0.5, "connection_lifetime": 1.5}
# With a worker process, about half the connections go to it and it hands on what it cannot answer.
WORKERS = pytest.mark.parametrize("workers", [1, 2])


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    return await asyncio.wait_for(reader.read(), seconds)


@WORKERS
async def test_slow_headers_are_cut_off_and_others_are_served(ca: TestCA, make_proxy, workers: int) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], workers=workers, **FAST).start()
    port = proxy.daemon.address[1]
    slow = []
    for _ in range(20):
        reader, writer = await open_raw(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        slow.append((reader, writer))
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"
    for reader, writer in slow:
        await closed_within(reader, 3)
        writer.close()


@WORKERS
async def test_slow_body_gets_408_malformed(ca: TestCA, make_proxy, workers: int) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()], workers=workers, **FAST).start()
    for _ in range(1 if workers == 1 else 4):  # with a worker, some of these go through it
        reader, writer = await open_raw(proxy.daemon.address[1])
        writer.write(
            b"POST / HTTP/1.0\r\nContent-Type: application/ocsp-request\r\nContent-Length: 100\r\n\r\n0123"
        )
        data = await closed_within(reader, 3)
        writer.close()
        assert data.startswith(b"HTTP/1.0 408")
        assert data.endswith(bytes([0x30, 0x03, 0x0A, 0x01, 0x01]))  # malformedRequest


async def test_connection_flood_is_capped_then_recovers(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], max_connections=50, **FAST).start()
    port = proxy.daemon.address[1]
    flood = [await open_raw(port) for _ in range(2000)]
    await asyncio.sleep(0.2)
    server = proxy.daemon.server
    assert server.gate.active <= 50
    assert server.refused >= 1900
    for _, writer in flood:
        writer.close()
    await asyncio.sleep(1.6)  # survivors reach their lifetime
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"


@WORKERS
async def test_broken_http_and_huge_paths_do_not_hurt(ca: TestCA, make_proxy, workers: int) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], workers=workers, **FAST).start()
    port = proxy.daemon.address[1]
    for junk in (
        2
        * workers
        * (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
            b"GARBAGE\r\n\r\n",
            b"GET /" + b"A" * 100_000 + b" HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.0\r\nContent-Length: -5\r\n\r\n",
            b"GET /" + base64.b64encode(b"\x30\x80" * 2000) + b" HTTP/1.0\r\n\r\n",
        )
    ):
        reader, writer = await open_raw(port)
        writer.write(junk)
        data = await closed_within(reader, 3)
        writer.close()
        assert data == b"" or data.startswith(b"HTTP/1.")
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"


async def test_scanner_of_random_serials_cannot_hammer_the_ca(
    ca: TestCA, upstream: FakeUpstream, make_proxy
) -> None:
    leaf = ca.leaf()
    # Like a real CA: good for the certificate it issued, unknown for made-up serials.
    upstream.behaviour = lambda serial: Reply(
        ca.respond(serial, status="good" if serial == leaf.serial else "unknown")
    )
    proxy = await make_proxy(
        ca=ca, leaves=[leaf], fetch_rate_per_issuer=2.0, fetch_burst_per_issuer=5
    ).start()
    await asyncio.sleep(0.1)
    before = len(upstream.requests)
    answers = await asyncio.gather(*(proxy.post(ca.request(10_000 + n)) for n in range(200)))
    asked = len(upstream.requests) - before
    assert asked <= 7, f"{asked} upstream requests for 200 random serials"
    limited = [a for a in answers if a.status == "TRY_LATER"]
    assert len(limited) >= 190
    # Nothing of theirs is kept: "unknown" answers for unconfigured serials are handed on only.
    assert len(proxy.daemon.staples) == 1
    assert len(proxy.daemon.scheduler) == 1


async def test_on_demand_fetch_rate_is_per_issuer(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path
) -> None:
    """A scanner spending one issuer's on-demand budget leaves another issuer's untouched."""
    other = TestCA(ocsp_url=upstream.url)
    upstream.behaviour = lambda serial: Reply(
        (other if serial >= 50_000 else ca).respond(serial, status="unknown")
    )
    leaf = ca.leaf()
    proxy = make_proxy(ca=ca, leaves=[leaf], fetch_rate_per_issuer=0.01, fetch_burst_per_issuer=3)
    other_issuer = tmp_path / "other-issuer.pem"
    other_issuer.write_bytes(pem(other.cert))
    proxy.config = dataclasses.replace(proxy.config, issuer_urls=((other_issuer, upstream.url),))
    await proxy.start()
    first = [await proxy.post(ca.request(10_000 + n)) for n in range(6)]
    assert [a.status for a in first].count("SUCCESSFUL") == 3, "the first issuer's burst, then tryLater"
    second = [await proxy.post(other.request(50_000 + n)) for n in range(3)]
    assert all(a.status == "SUCCESSFUL" for a in second), "the other issuer has its own bucket"
