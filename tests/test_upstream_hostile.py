"""The CA misbehaves for one certificate's fetch WHILE clients keep asking for other certificates.

``test_upstream_faults.py`` checks what each bad answer leaves behind; here every fault runs under load:

- the misbehaving fetch is either on the request path (a POST for a never-fetched serial of the known
  issuer: the proxy fetches it on demand) or a refetch of a cached certificate through
  ``Staples.refresh`` (what the scheduler does when a staple is due);
- while that fetch is in progress, four clients fire GET and POST requests for the cached certificates:
  each is answered with the cached staple byte for byte within ``QUICK`` seconds, at least
  ``MIN_DURING`` are answered during the fault, and a heartbeat shows the event loop never stalls;
- afterwards nothing invalid is held in memory or written to the state directory, and the client of the
  misbehaving fetch got ``tryLater`` (request path) or the previously good staple (refetch).

The upstream is a raw asyncio server, so it can do what no well-behaved HTTP server does: accept and
never answer, dribble a byte a second, stall in or before the body, reset mid-body, stream 10 MiB.
Responses with several SingleResponses and RSA-PSS signatures come from ``openssl ocsp`` (offline, from
an index file): cryptography's builder makes neither.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import socket
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from ocspproxy.app import App
from ocspproxy.cache.door import Ingested, Result
from ocspproxy.cache.memory import Cache
from ocspproxy.cache.refresher import Refresher
from ocspproxy.core.ocsp import CertKey
from ocspproxy.store.directory import INDEX_NAME, SNAPSHOT_NAME
from ocspproxy.upstream.base import Job
from ocspproxy.upstream.http import UpstreamSettings
from tests.conftest import Proxy, ProxyFactory, eventually
from tests.pki import Leaf, TestCA, error_body, now, pem

T = TypeVar("T")
Act = Callable[[asyncio.StreamWriter], Awaitable[None]]

TRY_LATER = error_body(ocsp.OCSPResponseStatus.TRY_LATER)
UPSTREAM = UpstreamSettings(connect_timeout=0.5, total_timeout=1.5, max_response_bytes=65536)
BUDGET = 0.5  # answer_budget
QUICK = 0.5  # every answer for a cached certificate within this; also the longest event-loop stall
LEAD = 0.2  # a fault that is over at once first holds the fetch this long, so the load overlaps it
MIN_DURING = 10  # requests answered while the fetch misbehaves, at least
CLIENTS = 4
HUGE = 10 * 1024 * 1024
DNS_FAILURE_URL = "http://nonexistent.invalid/"

# Reported once at the end of this module: faults injected, requests served during faults, invalid
# responses stored (must stay 0).
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not TALLY:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(
            f"\nhostile upstream: {TALLY['faults']} faults injected, {TALLY['served']} requests served "
            f"during faults (slowest {TALLY['slowest_ms']} ms), {TALLY['invalid']} invalid responses stored"
        )


# --- a raw HTTP/1.1 upstream that misbehaves on purpose ---------------------------------------------


def http(
    body: bytes = b"",
    *,
    status: str = "200 OK",
    content_type: str | None = "application/ocsp-response",
    length: int | None = None,
    framed: bool = True,
) -> bytes:
    """A response: Content-Length is len(body) unless given; framed=False sends none (body ends at close)."""
    lines = [f"HTTP/1.1 {status}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if framed:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def forever() -> None:
    await asyncio.Event().wait()  # until the server stops


def answer(message: bytes, lead: float = LEAD) -> Act:
    async def act(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(lead)
        await send(writer, message)

    return act


def dribble(message: bytes) -> Act:
    async def act(writer: asyncio.StreamWriter) -> None:
        for i in range(len(message)):
            await send(writer, message[i : i + 1])
            await asyncio.sleep(1.0)

    return act


def stall(message: bytes) -> Act:
    async def act(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(LEAD)
        await send(writer, message)
        await forever()

    return act


def reset(message: bytes) -> Act:
    """Send message, then abort with a TCP RST (SO_LINGER 0), not a clean close."""

    async def act(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(LEAD)
        await send(writer, message)
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return act


@dataclass
class Flood:
    """10 MiB streamed (chunked, or unframed up to the close), starting with a valid response."""

    first: bytes
    chunked: bool
    total: int = HUGE
    sent: int = 0  # body bytes written before the proxy hung up
    finished: bool = False

    async def __call__(self, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(LEAD)
        framing = b"Transfer-Encoding: chunked\r\n" if self.chunked else b""
        await send(
            writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n" + framing + b"\r\n"
        )
        size = 64 * 1024
        data = self.first + b"\x00" * (size - len(self.first))
        while self.sent < self.total:
            await send(writer, b"%x\r\n%s\r\n" % (size, data) if self.chunked else data)
            self.sent += size
            data = b"\x00" * size
        if self.chunked:
            await send(writer, b"0\r\n\r\n")
        self.finished = True


def gzip_bomb(first: bytes) -> bytes:
    """A response with Content-Encoding gzip: 10 KiB on the wire, 10 MiB once inflated."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = gz.compress(first) + b"".join(gz.compress(b"\x00" * (1 << 20)) for _ in range(10)) + gz.flush()
    head = http(body)
    return head.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n", 1)


class HostileUpstream:
    """One request per connection. Serials without a planned fault get ``good(serial)``."""

    def __init__(self) -> None:
        self.good: Callable[[int], bytes] = lambda serial: b""
        self.faults: dict[int, Act] = {}
        self.hang_next = False  # the next connection is accepted and never read from or answered
        self.injected = 0
        self.requests: list[int] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self.hang_next:
                self.hang_next = False
                self.injected += 1
                await forever()
            serial = await self._read_request(reader)
            self.requests.append(serial)
            act = self.faults.pop(serial, None)
            if act is None:
                await send(writer, http(self.good(serial)))
            else:
                self.injected += 1
                await act(writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the proxy hung up on us: often the point
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return ocsp.load_der_ocsp_request(await reader.readexactly(length)).serial_number


# --- responses cryptography cannot build ------------------------------------------------------------


def openssl_response(
    ca: TestCA, workdir: Path, entries: list[tuple[int, str]], *, pss: bool = False
) -> bytes:
    """``openssl ocsp`` as the CA, offline: one SingleResponse per (serial, good|revoked|unknown), in order.

    Signed by the issuing CA itself (responder ID by name, the CA certificate included), valid one day.
    """
    workdir.mkdir(exist_ok=True)
    ca_pem, ca_key, index = workdir / "ca.pem", workdir / "ca.key", workdir / "index.txt"
    req, resp = workdir / "req.der", workdir / "resp.der"
    ca_pem.write_bytes(pem(ca.cert))
    ca_key.write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    expires = (now() + dt.timedelta(days=30)).strftime("%y%m%d%H%M%SZ")
    revoked_at = (now() - dt.timedelta(hours=1)).strftime("%y%m%d%H%M%SZ")
    lines = []
    for serial, status in entries:
        hex_serial = f"{serial:X}"
        hex_serial = "0" * (len(hex_serial) % 2) + hex_serial  # as openssl prints it: whole bytes
        if status == "good":
            lines.append(f"V\t{expires}\t\t{hex_serial}\tunknown\t/CN=leaf {hex_serial}\n")
        elif status == "revoked":
            lines.append(f"R\t{expires}\t{revoked_at}\t{hex_serial}\tunknown\t/CN=leaf {hex_serial}\n")
        # unknown: not in the index
    index.write_text("".join(lines))
    serials = [arg for serial, _ in entries for arg in ("-serial", f"0x{serial:X}")]
    signing = ["-rsigopt", "rsa_padding_mode:pss"] if pss else []
    respond = ["-index", index, "-rsigner", ca_pem, "-rkey", ca_key, "-CA", ca_pem, "-reqin", req]
    for args in (
        ["-issuer", ca_pem, *serials, "-no_nonce", "-reqout", req],
        [*respond, "-respout", resp, "-ndays", "1", *signing],
    ):
        subprocess.run(["openssl", "ocsp", *map(str, args)], check=True, capture_output=True)
    der = resp.read_bytes()
    parsed = ocsp.load_der_ocsp_response(der)
    assert [s.serial_number for s in parsed.responses] == [serial for serial, _ in entries]
    if pss:
        assert parsed.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    return der


ECDSA_WITH_SHA256 = bytes.fromhex("06082a8648ce3d040302")  # OID 1.2.840.10045.4.3.2, DER
# 1.2.840.10045.4.3.99: the same length, assigned to nothing
UNASSIGNED_OID = bytes.fromhex("06082a8648ce3d040363")


def with_unknown_signature_algorithm(der: bytes) -> bytes:
    """A valid response whose signatureAlgorithm names an OID no one has assigned."""
    assert der.count(ECDSA_WITH_SHA256) == 1  # only the BasicOCSPResponse's (no certificates included)
    patched = der.replace(ECDSA_WITH_SHA256, UNASSIGNED_OID)
    assert (
        ocsp.load_der_ocsp_response(patched).signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.99"
    )
    return patched


# --- the proxy, its cached certificates, and load ---------------------------------------------------


def stored(state: Path) -> dict[str, bytes]:
    """Every file in the state directory (temporary files included: none may be left behind) but
    the certificate index and the staples snapshot, which hold no staple of their own."""
    if not state.exists():
        return {}
    return {
        p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.name not in (INDEX_NAME, SNAPSHOT_NAME)
    }


class Fetches:
    """Every fetch task ``Refresher.refresh`` hands out, per CertKey (wraps the method on the instance)."""

    def __init__(self, refresher: Refresher, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tasks: dict[CertKey, list[asyncio.Task[Ingested]]] = {}
        original = refresher.refresh

        def refresh(key: CertKey, job: Job, **kwargs: Any) -> asyncio.Task[Ingested]:
            task = original(key, job, **kwargs)
            known = self.tasks.setdefault(key, [])
            if task not in known:
                known.append(task)
            return task

        monkeypatch.setattr(refresher, "refresh", refresh)

    def running(self, key: CertKey) -> bool:
        return any(not task.done() for task in self.tasks.get(key, []))

    async def first(self, key: CertKey) -> asyncio.Task[Ingested]:
        await eventually(lambda: key in self.tasks, timeout=2)
        return self.tasks[key][0]


@dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes
    took: float


@dataclass
class Scene:
    """A proxy with cached certificates (goods: serial -> the staple served for it) and a hostile CA."""

    proxy: Proxy
    ca: TestCA
    hostile: HostileUpstream
    cached: list[Leaf]
    goods: dict[int, bytes]
    state: Path
    workdir: Path
    fetches: Fetches
    session: aiohttp.ClientSession

    @property
    def app(self) -> App:
        assert self.proxy.app is not None
        return self.proxy.app

    @property
    def cache(self) -> Cache:
        return self.app.cache

    def key(self, serial: int) -> CertKey:
        return self.ca.cert_id(serial).key

    def fresh(self, serial: int) -> bytes:
        """A valid response, newer than the cached ones (whose thisUpdate is a minute ago)."""
        return self.ca.respond(serial, this_update=now())

    async def ask(self, serial: int, *, get: bool = False) -> Got:
        loop = asyncio.get_running_loop()
        started = loop.time()
        request = self.ca.request(serial)
        if get:
            call = self.session.get(self.proxy.url + "/" + base64.b64encode(request).decode())
        else:
            call = self.session.post(
                self.proxy.url, data=request, headers={"Content-Type": "application/ocsp-request"}
            )
        async with call as resp:
            body = await resp.read()
            return Got(resp.status, dict(resp.headers), body, loop.time() - started)

    def invalid_held(self, expected: dict[CertKey, bytes]) -> int:
        """Files and in-memory staples that are not exactly the expected valid responses."""
        files = stored(self.state)
        want = {f"{key}.der": der for key, der in expected.items()}
        bad = sum(1 for name, der in files.items() if want.get(name) != der)
        for key, der in expected.items():
            current = self.cache.current(key)
            bad += current is None or current.der != der
        bad += max(0, len(self.cache) - len(expected))
        return bad


@pytest.fixture
async def hostile() -> AsyncIterator[HostileUpstream]:
    server = HostileUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def scene_of(
    hostile: HostileUpstream,
    session: aiohttp.ClientSession,
    make_proxy: ProxyFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Awaitable[Scene]]:
    async def build(*, rsa_ca: bool = False, first_leaf_url: str | None = None) -> Scene:
        ca = (
            TestCA(ocsp_url=hostile.url, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
            if rsa_ca
            else TestCA(ocsp_url=hostile.url)
        )
        cached = [ca.leaf(f"cached{i}") for i in range(3)]
        goods = {leaf.serial: ca.respond(leaf.serial) for leaf in cached}
        hostile.good = lambda serial: goods[serial] if serial in goods else ca.respond(serial)
        # An on-demand fetch goes to the URL of the issuer's first configured certificate.
        leaves = ([ca.leaf("first", ocsp_url=first_leaf_url)] if first_leaf_url else []) + cached
        proxy = make_proxy(ca=ca, leaves=leaves, upstream=UPSTREAM, answer_budget=BUDGET, negative_ttl=30.0)
        await proxy.start()
        assert proxy.app is not None
        cache, refresher = proxy.app.cache, proxy.app.refresher
        keys = [ca.cert_id(leaf.serial).key for leaf in cached]
        await eventually(lambda: all(cache.servable(k) is not None for k in keys))
        await eventually(lambda: not any(refresher.fetching(k) for k in keys))
        scene = Scene(
            proxy=proxy,
            ca=ca,
            hostile=hostile,
            cached=cached,
            goods=goods,
            state=tmp_path / "state",
            workdir=tmp_path / "openssl",
            fetches=Fetches(refresher, monkeypatch),
            session=session,
        )
        assert scene.invalid_held({k: goods[leaf.serial] for k, leaf in zip(keys, cached, strict=True)}) == 0
        for leaf in cached:
            got = await scene.ask(leaf.serial)
            assert got.status == 200 and got.body == goods[leaf.serial]
        return scene

    return build


@dataclass
class Load:
    answered: int = 0
    during: int = 0  # answered while the misbehaving fetch was in progress
    slowest: float = 0.0
    longest_stall: float = 0.0  # between two heartbeats of the event loop


async def under_load(
    scene: Scene,
    expect: dict[int, set[bytes]],
    busy: Callable[[], bool],
    fault: Callable[[], Awaitable[T]],
) -> tuple[T, Load]:
    """Run fault() while CLIENTS clients ask for the serials of expect, each answer one of its bytes."""
    loop = asyncio.get_running_loop()
    load = Load()
    stop = asyncio.Event()
    serials = sorted(expect)

    async def client(n: int) -> None:
        while not stop.is_set():
            serial = serials[n % len(serials)]
            got = await scene.ask(serial, get=n % 2 == 1)
            n += 1
            assert got.status == 200, got
            assert got.body in expect[serial], f"serial {serial:x}: not the cached staple"
            assert got.took < QUICK, f"serial {serial:x} answered in {got.took:.3f}s"
            load.slowest = max(load.slowest, got.took)
            load.answered += 1
            load.during += busy()

    async def heartbeat() -> None:
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            load.longest_stall = max(load.longest_stall, loop.time() - last)
            last = loop.time()

    tasks = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    tasks.append(asyncio.create_task(heartbeat()))
    try:
        # The load is flowing before the fault starts.
        await eventually(lambda: load.answered >= CLIENTS or any(t.done() for t in tasks))
        result = await fault()
    finally:
        stop.set()
        await asyncio.gather(*tasks)  # a client's failed assertion surfaces here
    return result, load


def tally(load: Load, invalid: int, faults: int) -> None:
    TALLY["faults"] += faults
    TALLY["served"] += load.during
    TALLY["slowest_ms"] = max(TALLY["slowest_ms"], round(load.slowest * 1000))
    TALLY["invalid"] += invalid


def assert_try_later(got: Got) -> None:
    assert got.status == 200
    assert got.body == TRY_LATER
    assert got.headers["Cache-Control"] == "no-store"


async def assert_survives_restart(scene: Scene, serial: int, der: bytes) -> None:
    """An accepted response was stored as received: validated again at start-up and served as it was."""
    files = stored(scene.state)
    await scene.proxy.restart()
    assert stored(scene.state) == files
    for get in (False, True):
        got = await scene.ask(serial, get=get)
        assert got.status == 200 and got.body == der


# --- the two paths a misbehaving fetch can take ------------------------------------------------------

Arm = Callable[[Scene, int], bytes | None]  # plan the fault for serial; the valid response it carries, if any


async def on_request_path(
    scene: Scene,
    arm: Arm,
    result: Result,
    reason: str,
    *,
    min_during: int = MIN_DURING,
    faults: int | None = None,
) -> None:
    """A client asks for a never-fetched serial; its on-demand fetch meets the fault."""
    loop = asyncio.get_running_loop()
    serial = x509.random_serial_number()
    key = scene.key(serial)
    injected = scene.hostile.injected
    accepted = arm(scene, serial)
    before = stored(scene.state)
    cached = {scene.key(leaf.serial): scene.goods[leaf.serial] for leaf in scene.cached}

    async def fault() -> tuple[Ingested, Got]:
        client = asyncio.create_task(scene.ask(serial))
        task = await scene.fetches.first(key)
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "the misbehaving fetch never ended"
        return task.result(), await client

    (refreshed, got), load = await under_load(
        scene, {s: {d} for s, d in scene.goods.items()}, lambda: scene.fetches.running(key), fault
    )
    assert refreshed.result is result, refreshed.reason
    assert reason in refreshed.reason
    assert load.during >= min_during, load
    assert load.longest_stall < QUICK, load
    assert got.took < BUDGET + QUICK, got  # within the budget, whatever the CA does

    if accepted is None:
        assert_try_later(got)
        assert scene.cache.current(key) is None and scene.cache.servable(key) is None
        assert stored(scene.state) == before
        # Failing now (negative cache): the next client gets tryLater at once, the CA is not asked again.
        started = loop.time()
        assert_try_later(await scene.ask(serial, get=True))
        assert loop.time() - started < QUICK
        assert len(scene.fetches.tasks[key]) == 1
        invalid = scene.invalid_held(cached)
    else:
        assert got.status == 200 and got.body == accepted  # byte for byte
        assert (await scene.ask(serial, get=True)).body == accepted
        assert stored(scene.state) == {**before, f"{key}.der": accepted}
        invalid = scene.invalid_held({**cached, key: accepted})
    assert invalid == 0
    tally(load, invalid, scene.hostile.injected - injected if faults is None else faults)
    if accepted is not None:
        await assert_survives_restart(scene, serial, accepted)


async def on_refetch(
    scene: Scene,
    arm: Arm,
    result: Result,
    reason: str,
    *,
    url: str | None = None,
    min_during: int = MIN_DURING,
    faults: int | None = None,
) -> None:
    """A cached certificate is due; its refetch meets the fault. Clients keep getting the good staple."""
    leaf = scene.cached[0]
    key = scene.key(leaf.serial)
    good = scene.goods[leaf.serial]
    injected = scene.hostile.injected
    accepted = arm(scene, leaf.serial)
    before = stored(scene.state)
    expect = {s: {d} for s, d in scene.goods.items()}
    if accepted is not None:
        expect[leaf.serial].add(accepted)  # served from the moment it is stored

    async def fault() -> Ingested:
        name_hash = scene.ca.cert_id(leaf.serial).issuer_name_hash
        job = Job(issuer_cert=scene.ca.cert, name_hash=name_hash, url=url or scene.hostile.url)
        task = scene.app.refresher.refresh(key, job)
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "the misbehaving fetch never ended"
        return task.result()

    refreshed, load = await under_load(scene, expect, lambda: scene.fetches.running(key), fault)
    assert refreshed.result is result, refreshed.reason
    assert reason in refreshed.reason
    assert load.during >= min_during, load
    assert load.longest_stall < QUICK, load

    now_held = good if accepted is None else accepted
    assert refreshed.staple is not None and refreshed.staple.der == now_held
    for get in (False, True):
        got = await scene.ask(leaf.serial, get=get)
        assert got.status == 200 and got.body == now_held
    if accepted is None:
        assert stored(scene.state) == before
    else:
        assert stored(scene.state) == {**before, f"{key}.der": accepted}
    cached = {scene.key(c.serial): scene.goods[c.serial] for c in scene.cached}
    invalid = scene.invalid_held({**cached, key: now_held})
    assert invalid == 0
    tally(load, invalid, scene.hostile.injected - injected if faults is None else faults)
    if accepted is not None:
        await assert_survives_restart(scene, leaf.serial, accepted)


PATHS = {"request": on_request_path, "refetch": on_refetch}


# --- the faults --------------------------------------------------------------------------------------


def plan(act_of: Callable[[Scene, int], Act]) -> Arm:
    """The upstream misbehaves with this act; nothing it sends may be stored."""

    def arm(scene: Scene, serial: int) -> bytes | None:
        scene.hostile.faults[serial] = act_of(scene, serial)
        return None

    return arm


def hang(scene: Scene, serial: int) -> bytes | None:
    scene.hostile.hang_next = True  # accepts the connection, never reads, never answers
    return None


def valid_with(content_type: str | None) -> Arm:
    def arm(scene: Scene, serial: int) -> bytes | None:
        der = scene.fresh(serial)
        scene.hostile.faults[serial] = answer(http(der, content_type=content_type))
        return der

    return arm


def body(make: Callable[[Scene, int], bytes]) -> Arm:
    """The upstream answers 200 with this body (after LEAD)."""

    def arm(scene: Scene, serial: int) -> bytes | None:
        scene.hostile.faults[serial] = answer(http(make(scene, serial)))
        return None

    return arm


def several_singles_with_ours(scene: Scene, serial: int) -> bytes | None:
    # Ours in the middle, after another cached certificate said to be revoked (it must stay good).
    other = scene.cached[1].serial
    der = openssl_response(
        scene.ca,
        scene.workdir,
        [(other, "revoked"), (serial, "good"), (x509.random_serial_number(), "unknown")],
    )
    scene.hostile.faults[serial] = answer(http(der))
    return der


def several_singles_without_ours(scene: Scene, serial: int) -> bytes:
    other = scene.cached[1].serial
    return openssl_response(
        scene.ca, scene.workdir, [(other, "revoked"), (x509.random_serial_number(), "good")]
    )


def pss_signed(scene: Scene, serial: int) -> bytes | None:
    der = openssl_response(scene.ca, scene.workdir, [(serial, "good")], pss=True)
    scene.hostile.faults[serial] = answer(http(der))
    return der


@dataclass(frozen=True)
class Case:
    arm: Arm
    result: Result
    reason: str = ""
    rsa_ca: bool = False


def _half_then_reset(scene: Scene, serial: int) -> Act:
    der = scene.fresh(serial)
    return reset(http(der)[: -(len(der) // 2)])


def _chunk_without_end(scene: Scene, serial: int) -> Act:
    der = scene.fresh(serial)  # the whole valid response in one chunk, and never the last chunk
    head = http(framed=False).replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
    return stall(head + b"%x\r\n%s\r\n" % (len(der), der))


def _framed_short(scene: Scene, serial: int) -> Act:
    der = scene.fresh(serial)  # a whole valid response, but one byte more promised: never complete
    return stall(http(der, length=len(der) + 1))


CASES: dict[str, Case] = {
    "hang-after-connect": Case(hang, Result.FAILED, "timed out"),
    "dribble-1-byte-per-s": Case(
        plan(lambda s, serial: dribble(http(s.fresh(serial)))), Result.FAILED, "timed out"
    ),
    "headers-then-no-body": Case(
        plan(lambda s, serial: stall(http(length=len(s.fresh(serial))))), Result.FAILED, "timed out"
    ),
    "body-short-of-content-length": Case(plan(_framed_short), Result.FAILED, "timed out"),
    "unframed-body-never-closed": Case(
        plan(lambda s, serial: stall(http(s.fresh(serial), framed=False))), Result.FAILED, "timed out"
    ),
    "chunked-body-never-ends": Case(plan(_chunk_without_end), Result.FAILED, "timed out"),
    "reset-mid-body": Case(plan(_half_then_reset), Result.FAILED),
    "gzip-bomb-10-mib": Case(
        plan(lambda s, serial: answer(gzip_bomb(s.fresh(serial)))), Result.FAILED, "exceeds 65536 bytes"
    ),
    "http-500-valid-body": Case(
        plan(lambda s, serial: answer(http(s.fresh(serial), status="500 Internal Server Error"))),
        Result.FAILED,
        "HTTP 500",
    ),
    "content-type-text-html": Case(valid_with("text/html; charset=utf-8"), Result.STORED),
    "content-type-absent": Case(valid_with(None), Result.STORED),
    "several-singles-ours-among": Case(several_singles_with_ours, Result.STORED),
    "several-singles-ours-missing": Case(
        body(several_singles_without_ours), Result.REJECTED, "CertID mismatch"
    ),
    # What `openssl ocsp -rsigopt rsa_padding_mode:pss` signs is stored (and verified by OpenSSL).
    "rsa-pss-signature": Case(pss_signed, Result.STORED, rsa_ca=True),
    "unknown-signature-algorithm": Case(
        body(lambda s, serial: with_unknown_signature_algorithm(s.fresh(serial))),
        Result.REJECTED,
        "unsupported signature algorithm",
    ),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_fault_while_serving(scene_of: Callable[..., Awaitable[Scene]], case: Case, path: str) -> None:
    scene = await scene_of(rsa_ca=case.rsa_ca)
    await PATHS[path](scene, case.arm, case.result, case.reason)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "until-close"])
async def test_ten_mib_streamed_is_cut_at_the_cap(
    scene_of: Callable[..., Awaitable[Scene]], path: str, chunked: bool
) -> None:
    scene = await scene_of()
    floods: list[Flood] = []

    def flood(s: Scene, serial: int) -> bytes | None:
        floods.append(Flood(s.fresh(serial), chunked))
        s.hostile.faults[serial] = floods[-1]
        return None

    await PATHS[path](scene, flood, Result.FAILED, "exceeds 65536 bytes")
    # The proxy hung up once past the cap: the upstream could not push the rest.
    assert len(floods) == 1 and not floods[0].finished, floods[0].sent
    assert floods[0].sent < HUGE // 2, floods[0].sent


@pytest.mark.parametrize("path", PATHS)
async def test_dns_failure(scene_of: Callable[..., Awaitable[Scene]], path: str) -> None:
    # The issuer's first certificate names a host that cannot resolve: on-demand fetches for its
    # unconfigured serials go there; a refetch is sent there directly.
    scene = await scene_of(first_leaf_url=DNS_FAILURE_URL)
    asked = len(scene.hostile.requests)

    def nothing(s: Scene, serial: int) -> bytes | None:
        return None  # the URL is the fault

    # Name resolution fails in milliseconds: the load surrounds the fault rather than fills it.
    if path == "request":
        await on_request_path(scene, nothing, Result.FAILED, "nonexistent.invalid", min_during=0, faults=1)
    else:
        await on_refetch(
            scene,
            nothing,
            Result.FAILED,
            "nonexistent.invalid",
            url=DNS_FAILURE_URL,
            min_during=0,
            faults=1,
        )
    assert len(scene.hostile.requests) == asked, "nothing may reach another upstream instead"
