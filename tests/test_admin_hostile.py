"""The admin listener under the OCSP port's hostile clients: floods, slow senders, broken HTTP,
oversized requests and bodies, probing paths. Each asserts the outcome, that the listener (and the
OCSP port) still answer, and that nothing but what the certificates make public is shown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from pathlib import Path

import aiohttp
import pytest

import ocspproxy.admin.server as admin_server
from ocspproxy.admin.address import AdminAddress
from ocspproxy.admin.commands import Context, status_command
from tests.conftest import Proxy
from tests.pki import TestCA


def port_of(proxy: Proxy) -> int:
    assert proxy.app is not None and proxy.app.admin is not None
    return int(proxy.admin_url.rsplit(":", 1)[1])


async def raw(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def healthy(proxy: Proxy) -> bool:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + "/healthz") as resp:
        return resp.status == 200 and (await resp.json())["status"] == "ok"


@pytest.fixture
def short_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_server, "LIFETIME", 1.0)
    monkeypatch.setattr(admin_server, "MAX_CONNECTIONS", 20)


async def test_a_connection_flood_is_capped_and_slow_clients_are_cut_off(
    ca: TestCA, make_proxy, short_lifetime: None
) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    port = port_of(proxy)
    flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    for _, writer in flood:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
    await asyncio.sleep(0.2)
    assert proxy.app is not None and proxy.app.admin is not None
    gate = proxy.app.admin.server.gate
    assert gate.active <= 20 and gate.refused >= 180
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"  # the OCSP port serves on
    for reader, writer in flood:
        with contextlib.suppress(ConnectionResetError):  # refused at once, or at the end of its lifetime
            await asyncio.wait_for(reader.read(), 3)
        writer.close()
    assert gate.active == 0
    assert await healthy(proxy)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"A" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(50)) + b"\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
        (b"\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03" + b"\x00" * 64, b"400"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /../../../etc/passwd HTTP/1.0\r\n\r\n", b"404"),
        (b"GET /status.json/../../etc/shadow HTTP/1.0\r\n\r\n", b"404"),
        (b"DELETE /status.json HTTP/1.0\r\n\r\n", b"405"),
        (b"GET /refresh HTTP/1.0\r\n\r\n", b"405"),
        (b"POST /refresh HTTP/1.0\r\nContent-Length: 999999\r\n\r\n", b"413"),
        (b"POST /refresh HTTP/1.0\r\n\r\n", b"413"),
        (b"POST /refresh HTTP/1.0\r\nContent-Length: 9\r\n\r\nnot json!", b"400"),
        (b'POST /refresh HTTP/1.0\r\nContent-Length: 14\r\n\r\n{"files": [1]}', b"400"),
    ],
)
async def test_bad_requests_get_an_error_and_nothing_else(
    ca: TestCA, make_proxy, request_bytes: bytes, status: bytes
) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()]).start()
    answer = await raw(port_of(proxy), request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    assert b"root:" not in answer
    assert await healthy(proxy)


async def test_a_slow_refresh_body_is_cut_off(ca: TestCA, make_proxy, monkeypatch) -> None:
    monkeypatch.setattr(admin_server, "BODY_TIMEOUT", 0.3)
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()]).start()
    answer = await raw(port_of(proxy), b"POST /refresh HTTP/1.0\r\nContent-Length: 100\r\n\r\n{")
    assert answer.split(b" ", 2)[1] == b"400"


async def test_it_shows_no_file_contents_and_no_keys(ca: TestCA, make_proxy, tmp_path: Path) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    key_file = tmp_path / "secret.key"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n")
    everything = b""
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/status.json", "/metrics", "/healthz", "/readyz", f"/{key_file}", "/state"):
            async with session.get(proxy.admin_url + path) as resp:
                everything += await resp.read()
    for secret in (b"BEGIN", b"PRIVATE", b"SECRET", b"-----"):
        assert secret not in everything
    cert_pem = Path(proxy.config.certs[0]).read_bytes()
    assert cert_pem.split(b"\n")[1] not in everything  # no certificate bytes either, only its fields
    assert proxy.app is not None
    for staple_file in proxy.config.state_dir.glob("*.der"):
        assert staple_file.read_bytes()[-32:] not in everything


async def test_one_refresh_at_a_time(ca: TestCA, upstream, make_proxy) -> None:
    from tests.upstream import Reply

    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    upstream.behaviour = lambda serial: Reply(ca.respond(serial), delay=0.5)
    body = json.dumps({"all": True}).encode()
    request = b"POST /refresh HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    first = asyncio.ensure_future(raw(port_of(proxy), request))
    await asyncio.sleep(0.15)
    second = await raw(port_of(proxy), request)
    assert second.split(b" ", 2)[1] == b"409"
    assert (await first).split(b" ", 2)[1] == b"200"


async def test_a_unix_socket_admin_listener_is_for_the_service_user_and_group(
    ca: TestCA, make_proxy, tmp_path: Path
) -> None:
    path = tmp_path / "run" / "admin.sock"
    path.parent.mkdir()
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], admin_listen=AdminAddress(path=path)).start()
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660 and stat.S_ISSOCK(os.lstat(path).st_mode)
    assert os.listdir(path.parent) == ["admin.sock"]  # nothing left of how it was made
    out: list[str] = []
    code = await asyncio.to_thread(
        status_command,
        admin=f"unix:{path}",
        config_file=None,
        state_dir=None,
        as_json=False,
        ctx=Context(out=out.append, err=out.append),
    )
    assert code == 0 and out[0].startswith("OCSPPROXY OK"), out
    await proxy.stop()
    assert not path.exists()
    # A stale socket left by a crash is replaced; anything else at the path is refused (logged).
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    await proxy.start()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    await proxy.stop()
    path.write_text("not a socket")
    await proxy.start()
    assert proxy.app is not None and proxy.app.admin is not None and proxy.app.admin.bound is None
    assert path.read_text() == "not a socket"
    assert (await proxy.post(ca.request(ca.leaf().serial))).status in ("SUCCESSFUL", "TRY_LATER")


async def test_an_empty_admin_listen_turns_it_off_and_nothing_is_counted(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], admin_listen=None).start()
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"
    assert proxy.app is not None
    assert proxy.app.admin is None and proxy.app.tally is None and proxy.app.server.tally is None
