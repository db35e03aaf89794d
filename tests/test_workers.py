"""workers > 1: worker processes answer hits on the same port; everything else reaches the main process.

Real processes: the daemon runs in this event loop and starts its workers as ``python -m
ocspproxy.workers.child``; clients connect anew for every request, like mod_ssl.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp

from ocspproxy.app import App
from ocspproxy.cache.door import Origin, Result
from tests.conftest import Proxy, eventually
from tests.pki import TestCA
from tests.test_crash import DaemonProcess


async def _post(port: int, body: bytes, *, version: str = "HTTP/1.0") -> tuple[int, bytes]:
    """One request on a new connection, as mod_ssl sends it; (HTTP status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST / {version}\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    data = await reader.read()
    writer.close()
    assert data, "the connection closed without an answer"
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


def _port(proxy: Proxy) -> int:
    assert proxy.app is not None and proxy.app.address is not None
    return proxy.app.address[1]


def _app(proxy: Proxy) -> App:
    assert proxy.app is not None
    return proxy.app


def _worker_pids(proxy: Proxy) -> list[int]:
    pool = _app(proxy).pool
    assert pool is not None
    return [w.proc.pid for w in pool.workers if w.proc is not None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill 0: look at its state
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def _all_held(proxy: Proxy, n: int) -> None:
    await eventually(lambda: len(_app(proxy).cache.verified()) >= n, timeout=10)


@pytest.fixture
async def pool_proxy(make_proxy: Any, ca: TestCA) -> tuple[Proxy, TestCA, list[int]]:
    leaves = [ca.leaf(f"host{i}") for i in range(3)]
    proxy = await make_proxy(ca=ca, leaves=leaves, workers=2).start()
    await _all_held(proxy, 3)
    return proxy, ca, [leaf.serial for leaf in leaves]


async def test_hits_come_from_both_processes_and_are_the_same_bytes(
    capfd: pytest.CaptureFixture[str],  # first: capturing before the worker starts
    pool_proxy: tuple[Proxy, TestCA, list[int]],
) -> None:
    proxy, ca, serials = pool_proxy
    held = {s.key.serial: s.der for s in _app(proxy).cache.verified()}
    port = _port(proxy)
    worker_lines = 0
    for _ in range(40):
        answers = await asyncio.gather(*(_post(port, ca.request(serial)) for serial in serials * 10))
        for (status, body), serial in zip(answers, serials * 10, strict=True):
            assert status == 200 and body == held[serial]
        worker_lines += capfd.readouterr().err.count('"worker": 1')
        if worker_lines:
            break
    assert worker_lines, "no request was answered by the worker process"


async def test_everything_but_a_hit_is_answered_by_the_main_process(
    pool_proxy: tuple[Proxy, TestCA, list[int]], upstream: Any
) -> None:
    proxy, ca, serials = pool_proxy
    pool = _app(proxy).pool
    assert pool is not None
    port = _port(proxy)
    stranger = TestCA()
    fetched_before = len(upstream.requests)
    for round_ in range(60):
        # an unknown issuer, garbage, a serial only the CA knows (fetched on demand), a hit
        unknown = await _post(port, stranger.request(5))
        garbage = await _post(port, b"\x30\x03\x02\x01\x01")
        miss = await _post(port, ca.request(1000 + round_))
        hit = await _post(port, ca.request(serials[0]))
        assert unknown[0] == 200
        assert ocsp.load_der_ocsp_response(unknown[1]).response_status.name == "UNAUTHORIZED"
        assert garbage[0] == 400
        assert ocsp.load_der_ocsp_response(garbage[1]).response_status.name == "MALFORMED_REQUEST"
        assert miss[0] == 200
        assert ocsp.load_der_ocsp_response(miss[1]).certificate_status.name == "GOOD"  # as the CA says
        assert hit[0] == 200 and ocsp.load_der_ocsp_response(hit[1]).certificate_status.name == "GOOD"
        if pool.adopted >= 10:
            break
    assert pool.adopted >= 10, "the worker handed over too few connections to tell"
    # each miss was fetched once, by the main process (the only one with an upstream client)
    assert upstream.requests[fetched_before:] == [1000 + r for r in range(round_ + 1)]


async def test_a_body_larger_than_a_message_is_handed_over_whole(make_proxy: Any, ca: TestCA) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()], workers=2, max_request_bytes=512 * 1024).start()
    pool = _app(proxy).pool
    assert pool is not None
    port = _port(proxy)
    body = os.urandom(300 * 1024)  # not OCSP: the main process must see all of it to say so
    for _ in range(30):
        status, payload = await _post(port, body)
        assert status == 400
        assert ocsp.load_der_ocsp_response(payload).response_status.name == "MALFORMED_REQUEST"
        if pool.adopted >= 3:
            break
    assert pool.adopted >= 3


async def test_a_new_staple_reaches_the_worker(pool_proxy: tuple[Proxy, TestCA, list[int]]) -> None:
    proxy, ca, serials = pool_proxy
    app = _app(proxy)
    der = ca.respond(serials[1], status="revoked")
    ingested = await app.door.ingest(ca.cert_id(serials[1]).key, der, Origin.CA)  # as a fetch does
    assert ingested.result is Result.REVOKED and ingested.staple is not None
    revoked = ingested.staple
    port = _port(proxy)
    # The worker's copy follows within moments (the message is sent once this callback returns).
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        answers = await asyncio.gather(*(_post(port, ca.request(serials[1])) for _ in range(60)))
        if {body for _, body in answers} == {revoked.der}:
            break
        assert asyncio.get_running_loop().time() < deadline, "the worker kept serving the old staple"
        await asyncio.sleep(0.05)


async def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(
    pool_proxy: tuple[Proxy, TestCA, list[int]],
) -> None:
    proxy, ca, serials = pool_proxy
    (pid,) = _worker_pids(proxy)
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _worker_pids(proxy) != [pid] and _alive(_worker_pids(proxy)[0]), timeout=10)
    port = _port(proxy)

    async def served() -> bool:
        answers = await asyncio.gather(*(_post(port, ca.request(s)) for s in serials * 10))
        return all(status == 200 for status, _ in answers)

    deadline = asyncio.get_running_loop().time() + 10
    while not await served():  # connections queued on the dead worker's socket were lost with it
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    assert not _alive(pid)


async def test_workers_exit_with_the_main_process(pool_proxy: tuple[Proxy, TestCA, list[int]]) -> None:
    proxy, _, _ = pool_proxy
    pids = _worker_pids(proxy)
    assert pids and all(_alive(p) for p in pids)
    await proxy.stop()
    assert not any(_alive(p) for p in pids)


async def test_handed_over_connections_leave_the_workers_cap(make_proxy: Any, ca: TestCA) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], workers=2, max_connections=4).start()
    await _all_held(proxy, 1)
    pool = _app(proxy).pool
    assert pool is not None
    port = _port(proxy)
    for _ in range(40):  # one at a time: never more than one open
        status, _ = await _post(port, b"\x30\x03\x02\x01\x01")
        assert status == 400
    assert pool.adopted > 4  # more hand-overs than the cap: each one left the worker's count
    for _ in range(40):
        status, body = await _post(port, ca.request(leaf.serial))
        assert status == 200 and ocsp.load_der_ocsp_response(body).certificate_status.name == "GOOD"


async def _serve_process(ca: TestCA, tmp_path: Path) -> tuple[DaemonProcess, int, int]:
    """``ocspproxy serve --workers 2`` as a process; (daemon, port, the worker's pid)."""
    leaf = ca.leaf()
    leaf_path, issuer = ca.write(tmp_path, leaf, with_chain=False)
    argv = [sys.executable, "-m", "ocspproxy", "serve", "--listen", "127.0.0.1:0", "--workers", "2"]
    argv += ["--state-dir", str(tmp_path / "state"), "--cert", str(leaf_path), "--issuers", str(issuer)]
    daemon = DaemonProcess(argv)
    port = await daemon.start()
    await eventually(lambda: bool(daemon.named("worker started")), timeout=10)
    status, body = await _post(port, ca.request(leaf.serial))
    assert status == 200 and ocsp.load_der_ocsp_response(body).certificate_status.name == "GOOD"
    return daemon, port, int(daemon.named("worker started")[0]["pid"])


async def test_sigterm_to_every_process_of_the_unit_stops_cleanly(ca: TestCA, tmp_path: Path) -> None:
    daemon, _, worker = await _serve_process(ca, tmp_path)
    assert daemon.proc is not None
    # what systemd does on stop (KillMode=control-group): SIGTERM to all of them at once
    os.kill(worker, signal.SIGTERM)
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    assert not daemon.named("worker exited; starting another")
    await eventually(lambda: not _alive(worker), timeout=5)


async def test_a_worker_exits_when_the_main_process_is_killed(ca: TestCA, tmp_path: Path) -> None:
    daemon, _, worker = await _serve_process(ca, tmp_path)
    await daemon.kill()
    await eventually(lambda: not _alive(worker), timeout=10)
