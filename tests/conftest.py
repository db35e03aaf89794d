"""Shared fixtures: a test CA, a misbehaving in-process upstream, and ocspproxy running in-process."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.x509 import ocsp

from ocspproxy.admin.address import AdminAddress
from ocspproxy.app import App
from ocspproxy.config import Config
from ocspproxy.core.policy import RefreshPolicy
from ocspproxy.log import configure_logging
from ocspproxy.store import Store
from ocspproxy.upstream.http import UpstreamSettings
from tests.pki import Leaf, TestCA
from tests.upstream import FakeUpstream, Reply


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    configure_logging(level="debug", fmt="json")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def ca(upstream: FakeUpstream) -> TestCA:
    test_ca = TestCA(ocsp_url=upstream.url)
    upstream.behaviour = lambda serial: Reply(test_ca.respond(serial))
    return test_ca


@dataclasses.dataclass
class Answer:
    http_status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ocsp(self) -> ocsp.OCSPResponse:
        return ocsp.load_der_ocsp_response(self.body)

    @property
    def status(self) -> str:
        return self.ocsp.response_status.name

    @property
    def cert_status(self) -> str:
        return self.ocsp.certificate_status.name


class Proxy:
    """ocspproxy running in this event loop on an ephemeral port."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.reread: Callable[[], Config] | None = None  # what SIGHUP re-reads, as the CLI passes it
        self.store: Store | None = None  # the store to wire in (None: the file store of state_dir)
        self.app: App | None = None
        self._task: asyncio.Task[int] | None = None

    @property
    def url(self) -> str:
        assert self.app is not None and self.app.address is not None
        return f"http://127.0.0.1:{self.app.address[1]}"

    @property
    def admin_url(self) -> str:
        assert self.app is not None and self.app.admin is not None and self.app.admin.bound is not None
        return self.app.admin.bound

    async def start(self, *, loaded: bool = True) -> Proxy:
        """Start; return once it has loaded every certificate and stored staple (tests start from
        the full inventory and store), or with loaded=False once it listens."""
        self.app = App(self.config, reread=self.reread, store=self.store)
        self._task = asyncio.create_task(self.app.run(handle_signals=False))
        event = self.app.loaded if loaded else self.app.ready
        ready = asyncio.create_task(event.wait())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED, timeout=10)
        if self._task in done:
            ready.cancel()
            raise RuntimeError(f"service exited with {self._task.result()}")
        assert ready in done, "service did not become ready"
        return self

    async def stop(self) -> None:
        if self.app is not None and self._task is not None:
            self.app.stop()
            await asyncio.wait_for(self._task, 10)
            self.app = None

    async def restart(self) -> Proxy:
        await self.stop()
        return await self.start()

    async def post(self, der: bytes, path: str = "/") -> Answer:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url + path, data=der, headers={"Content-Type": "application/ocsp-request"}
            ) as resp,
        ):
            return Answer(resp.status, resp.headers.copy(), await resp.read())

    async def get(self, der: bytes, prefix: str = "/") -> Answer:
        path = prefix + base64.b64encode(der).decode()
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as resp:
            return Answer(resp.status, resp.headers.copy(), await resp.read())

    async def get_raw(self, path: str) -> Answer:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as resp:
            return Answer(resp.status, resp.headers.copy(), await resp.read())


ProxyFactory = Callable[..., Proxy]


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Build (not start) a proxy: make_proxy(leaves=[...], ca=..., **config overrides)."""
    proxies: list[Proxy] = []

    def factory(*, ca: TestCA, leaves: list[Leaf], state_dir: Path | None = None, **overrides: Any) -> Proxy:
        certs = []
        issuer_path = tmp_path / "issuer.pem"
        for leaf in leaves:
            leaf_path, issuer_path = ca.write(tmp_path, leaf, with_chain=False)
            certs.append(str(leaf_path))
        refresh = overrides.pop("refresh", RefreshPolicy(retry_initial=0.2, retry_max=2.0, retry_min=0.1))
        upstream = overrides.pop("upstream", UpstreamSettings(connect_timeout=1.0, total_timeout=2.0))
        config = Config(
            listen_host="127.0.0.1",
            listen_port=0,
            state_dir=state_dir or tmp_path / "state",
            certs=tuple(certs),
            issuers=(issuer_path,),
            answer_budget=overrides.pop("answer_budget", 1.0),
            # The admin listener on a free port: every test counts what it answers, none collides.
            admin_listen=overrides.pop("admin_listen", AdminAddress("127.0.0.1", 0)),
            negative_ttl=overrides.pop("negative_ttl", 0.0),
            refresh=refresh,
            upstream=upstream,
            **overrides,
        )
        proxy = Proxy(config)
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        await proxy.stop()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until check() holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
