"""Hostile clients: slow senders, connection floods, broken HTTP, scanners. Each asserts the outcome."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import ocspproxy.log
from tests.conftest import eventually
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
    port = proxy.app.address[1]
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
        reader, writer = await open_raw(proxy.app.address[1])
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
    port = proxy.app.address[1]
    flood = [await open_raw(port) for _ in range(2000)]
    await asyncio.sleep(0.2)
    server = proxy.app.server
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
    port = proxy.app.address[1]
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
    assert len(proxy.app.cache) == 1
    assert len(proxy.app.scheduler) == 1


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


# Bad HTTP: what aiohttp's parser refuses. Each: the bytes, the HTTP status, the logged kind.
CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(32)) + b"\x00" * 200
BAD_HTTP = {
    "request line of 20 KiB": (b"GET /" + b"A" * 20480 + b" HTTP/1.0\r\n\r\n", 414, "request line too long"),
    "100 headers": (
        b"POST / HTTP/1.0\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n",
        431,
        "too many headers",
    ),
    "header of 16 KiB": (b"POST / HTTP/1.0\r\nX-Big: " + b"a" * 16384 + b"\r\n\r\n", 431, "header too long"),
    "garbage": (b"\x00\x01\x02garbage\xff\xfe\r\n\r\n", 400, "invalid method"),
    "TLS ClientHello": (CLIENT_HELLO, 400, "TLS on the plain HTTP port"),
    "bad chunked body": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n",
        400,
        "invalid body framing",
    ),
    "bad method": (b"G(T / HTTP/1.0\r\n\r\n", 400, "invalid method"),
    "bad version": (b"GET / HTTP/9.x\r\n\r\n", 400, "invalid request line"),
    "bad header name": (b"POST / HTTP/1.0\r\nBad Header: x\r\n\r\n", 400, "invalid header"),
}
MALFORMED = bytes([0x30, 0x03, 0x0A, 0x01, 0x01])  # OCSPResponse with status malformedRequest


def assert_malformed_answer(data: bytes, http_status: int) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0].startswith(f"http/1.0 {http_status} "), lines[0]
    assert "content-type: application/ocsp-response" in lines
    assert "cache-control: no-store" in lines
    assert body == MALFORMED


def log_lines(text: str) -> list[dict[str, object]]:
    """Every line the service wrote, each one JSON object; none a traceback."""
    events = []
    for line in text.splitlines():
        assert "Traceback" not in line, line
        event = json.loads(line)
        assert isinstance(event, dict), line
        events.append(event)
    return events


def malformed(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["event"] == "request" and e["outcome"] == "malformed"]


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await open_raw(port)
    writer.write(data)
    answer = await closed_within(reader, 3)
    writer.close()
    return answer


@pytest.mark.parametrize("name", BAD_HTTP)
async def test_bad_http_is_answered_malformed_and_logged_as_one_request_line(
    ca: TestCA,
    make_proxy,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    data, http_status, kind = BAD_HTTP[name]
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], **FAST).start()
    capfd.readouterr()
    assert_malformed_answer(await exchange(proxy.app.address[1], data), http_status)
    (line,) = malformed(log_lines(capfd.readouterr().err))
    assert line["detail"] == kind and line["peer"] == "127.0.0.1"
    # Nothing reached stdlib logging with a traceback (aiohttp logs one there).
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"


async def test_bad_http_through_a_worker_is_answered_and_logged_the_same(
    ca: TestCA, make_proxy, capfd: pytest.CaptureFixture[str]
) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()], workers=2, **FAST).start()
    port = proxy.app.address[1]
    kinds = set()
    for _ in range(4):  # about half the connections go to the worker, which hands them on
        for data, http_status, kind in BAD_HTTP.values():
            assert_malformed_answer(await exchange(port, data), http_status)
            kinds.add(kind)
    logged = {str(e["detail"]) for e in malformed(log_lines(capfd.readouterr().err))}
    assert logged == kinds


async def test_a_body_broken_off_or_undecodable_is_one_request_line(
    ca: TestCA, make_proxy, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()], **FAST).start()
    port = proxy.app.address[1]
    capfd.readouterr()
    gzip = b"POST / HTTP/1.0\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789"
    assert_malformed_answer(await exchange(port, gzip), 400)
    _, writer = await open_raw(port)
    writer.write(b"POST / HTTP/1.0\r\nContent-Length: 100\r\n\r\n0123")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()  # a reset mid-request: nobody is left to answer
    events: list[dict[str, object]] = []

    def both_logged() -> bool:
        events.extend(log_lines(capfd.readouterr().err))
        return len(malformed(events)) == 2

    await eventually(both_logged)
    gzipped, reset = malformed(events)
    assert gzipped["detail"] == "invalid body" and gzipped["method"] == "POST"
    assert gzipped["reason"] == "Can not decode content-encoding: gzip"
    assert reset["detail"] == "connection lost mid-request"
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_a_flood_of_one_kind_is_one_line_and_a_count(
    ca: TestCA, make_proxy, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ocspproxy.log, "REPEAT_INTERVAL", 3.0)
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()], **FAST).start()
    port = proxy.app.address[1]
    capfd.readouterr()
    for _ in range(10):
        await asyncio.gather(*(exchange(port, b"\x00garbage\r\n\r\n") for _ in range(20)))
    events: list[dict[str, object]] = []

    def counted() -> bool:
        events.extend(log_lines(capfd.readouterr().err))
        lines = [e for e in malformed(events) if e["detail"] == "invalid method"]
        counts = [e["count"] for e in events if e["event"] == "repeated requests"]
        assert len(lines) <= 3, lines
        return len(lines) + sum(int(str(c)) for c in counts) == 200

    await eventually(counted, timeout=10)


def send_and_read(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def reset_mid_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 100\r\n\r\n0123")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


@WORKERS
def test_the_service_logs_bad_http_as_json_lines_only(tmp_path: Path, workers: int) -> None:
    """As run: ``python -m ocspproxy serve``, with stdlib logging as the CLI leaves it."""
    root = Path(__file__).resolve().parent.parent
    serve = ["serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocspproxy", *serve, "--log-format", "json", "--workers", str(workers)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stderr is not None
    try:
        head = []
        for line in proc.stderr:
            head.append(line)
            if '"listening"' in line:
                port = int(json.loads(line)["address"].rsplit(":", 1)[1])
                break
        for _ in range(2 * workers):  # with a worker, some go through it
            for data, http_status, _kind in BAD_HTTP.values():
                assert_malformed_answer(send_and_read(port, data), http_status)
            reset_mid_request(port)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    events = log_lines("".join(head) + rest)
    logged = {e["detail"] for e in malformed(events)}
    assert logged == {kind for _, _, kind in BAD_HTTP.values()} | {"connection lost mid-request"}
