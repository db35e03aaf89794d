"""The HTTP edge as mod_ssl sees it, and the lifecycle as an operator sees it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import eventually
from tests.pki import Leaf, TestCA, pem
from tests.upstream import FakeUpstream, Reply

ROOT = Path(__file__).resolve().parent.parent


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes, read until the server closes the connection (what mod_ssl does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_http10_post_like_mod_ssl(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    body = ca.request(leaf.serial)
    port = proxy.app.address[1]
    request = (
        f"POST /some/path?x=1 HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/ocsp-request\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    data = await raw_exchange(port, request)  # returns only because the server closed
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0].endswith("200 ok")
    assert f"content-length: {len(payload)}" in lines
    assert not any(line.startswith("transfer-encoding") for line in lines)
    stored = proxy.app.cache.servable(ca.cert_id(leaf.serial).key)
    assert stored is not None and payload == stored.der


async def test_oversized_body_is_malformed_and_nothing_else_breaks(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], max_request_bytes=1024).start()
    big = await proxy.post(b"\x30" * 5000)
    assert big.http_status == 413 and big.status == "MALFORMED_REQUEST"
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"


async def test_other_methods_get_405_with_an_ocsp_body(ca: TestCA, make_proxy) -> None:
    import aiohttp

    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()]).start()
    async with aiohttp.ClientSession() as session, session.put(proxy.url + "/", data=b"x") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET, POST"
        assert resp.headers["Content-Type"] == "application/ocsp-response"


async def test_one_log_line_per_request(ca: TestCA, make_proxy, capsys: pytest.CaptureFixture[str]) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    await eventually(lambda: proxy.app.cache.servable(ca.cert_id(leaf.serial).key) is not None)
    capsys.readouterr()
    await proxy.post(ca.request(leaf.serial))
    await proxy.post(b"junk")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    requests = [e for e in events if e["event"] == "request"]
    assert len(requests) == 2
    hit, junk = requests
    assert hit["outcome"] == "hit" and hit["serial"] == f"{leaf.serial:x}"
    assert hit["issuer"] == "CN=Test Issuing CA" and "latency_ms" in hit
    assert junk["outcome"] == "malformed" and "detail" in junk


async def test_corrupt_and_foreign_state_files_do_not_stop_start_up(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path: Path
) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    good = await proxy.post(ca.request(leaf.serial))
    await proxy.stop()
    state = tmp_path / "state"
    stored = next(state.glob("*.der"))
    (state / stored.name.replace(f"{leaf.serial:x}", "abc")).write_bytes(b"\x30\x82garbage")
    stranger = TestCA()
    foreign = stranger.cert_id(77).key
    (state / f"{foreign}.der").write_bytes(stranger.respond(77))
    upstream.behaviour = lambda serial: Reply(status=503)
    await proxy.start()
    assert (await proxy.post(ca.request(leaf.serial))).body == good.body


async def test_expired_state_files_are_removed_at_start_up(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path: Path
) -> None:
    import datetime as dt

    leaf = ca.leaf()
    short = dt.timedelta(seconds=2)
    upstream.behaviour = lambda serial: Reply(
        ca.respond(serial, this_update=dt.datetime.now(dt.UTC), validity=short)
    )
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    await eventually(lambda: any((tmp_path / "state").glob("*.der")))
    upstream.behaviour = lambda serial: Reply(status=503)
    await proxy.stop()
    await asyncio.sleep(2.5)
    await proxy.start()
    assert not list((tmp_path / "state").glob("*.der"))
    assert (await proxy.post(ca.request(leaf.serial))).status == "TRY_LATER"


def test_cli_serves_reloads_on_sighup_and_stops_on_sigterm(tmp_path: Path) -> None:
    ca = TestCA(ocsp_url="http://127.0.0.1:9/")  # nothing listens: fetches fail, which is fine here
    leaf = ca.leaf()
    (tmp_path / "leaf.pem").write_bytes(pem(leaf.cert, ca.cert))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocspproxy",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp_path / "state"),
            "--cert",
            str(tmp_path / "*.pem"),
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stderr is not None
    try:
        events: list[dict[str, object]] = []

        def wait_for(event: str) -> dict[str, object]:
            for line in proc.stderr:  # type: ignore[union-attr]
                if line.startswith("{"):
                    events.append(json.loads(line))
                    if events[-1]["event"] == event:
                        return events[-1]
            raise AssertionError(f"no {event!r} in the log")

        wait_for("listening")
        assert wait_for("inventory loaded")["certificates"] == 1
        wait_for("store loaded")
        other = ca.leaf("renewed")
        (tmp_path / "other.pem").write_bytes(pem(other.cert, ca.cert))
        proc.send_signal(signal.SIGHUP)
        assert wait_for("inventory loaded")["certificates"] == 2
        proc.send_signal(signal.SIGTERM)
        wait_for("shutting down")
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


async def test_stored_staple_with_a_broken_signature_is_never_served(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path: Path
) -> None:
    """Signatures of stored staples are checked after the listener opens: before first use, and in
    the background. A file whose signature fails is dropped and fetched again, never served."""
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    good = await proxy.post(ca.request(leaf.serial))
    await proxy.stop()
    stored = next((tmp_path / "state").glob("*.der"))
    tampered = bytearray(stored.read_bytes())
    tampered[-3] ^= 0x40  # inside the signature: still parses, no longer verifies
    stored.write_bytes(bytes(tampered))
    upstream.behaviour = lambda serial: Reply(status=503)
    await proxy.start()
    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.status == "TRY_LATER" and answer.body != bytes(tampered)
    upstream.behaviour = lambda serial: Reply(ca.respond(serial))
    key = ca.cert_id(leaf.serial).key
    await eventually(lambda: proxy.app.cache.servable(key) is not None, timeout=5)
    fresh = await proxy.post(ca.request(leaf.serial))
    assert fresh.cert_status == "GOOD" and fresh.body != good.body


async def test_stored_staples_are_all_checked_in_the_background(ca: TestCA, make_proxy) -> None:
    leaves = [ca.leaf(f"site{n}") for n in range(20)]
    proxy = await make_proxy(ca=ca, leaves=leaves).start()
    for leaf in leaves:
        await proxy.post(ca.request(leaf.serial))
    await proxy.restart()
    cache = proxy.app.cache

    def checked(leaf: Leaf) -> bool:
        held = cache.current(ca.cert_id(leaf.serial).key)
        return held is not None and held.verified

    await eventually(lambda: all(checked(leaf) for leaf in leaves))


async def test_hit_whose_body_arrives_late_is_still_answered(ca: TestCA, make_proxy) -> None:
    """The fast path answers whole requests; one split across writes goes the general way."""
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    body = ca.request(leaf.serial)
    fast = await proxy.post(body)
    port = proxy.app.address[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST / HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(body[10:])
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.0 200") and data.endswith(fast.body)


async def test_a_bug_escaping_the_handler_is_internal_error_and_one_line_with_its_traceback(
    ca: TestCA, make_proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()]).start()

    async def broken(request: object) -> NoReturn:
        raise ZeroDivisionError("a bug")

    proxy.app.server.request_handler = broken  # what aiohttp calls for each request from now on
    capsys.readouterr()
    answer = await proxy.post(b"junk")
    assert answer.http_status == 200 and answer.status == "INTERNAL_ERROR"
    assert answer.headers["Cache-Control"] == "no-store"
    lines = capsys.readouterr().err.splitlines()
    (failed,) = [json.loads(line) for line in lines if '"request failed"' in line]
    assert failed["level"] == "error" and failed["peer"] == "127.0.0.1"
    assert "ZeroDivisionError: a bug" in failed["exception"] and "Traceback" in failed["exception"]
    (request,) = [json.loads(line) for line in lines if '"request"' in line]
    assert request["outcome"] == "error" and request["detail"] == "internal error"
    assert all(line.startswith("{") for line in lines)
