"""Fixtures for the end-to-end tests (real Apache httpd + ``openssl ocsp`` + ``openssl s_client``).

Module-scoped pieces (shared by the tests of one module, built lazily, torn down by finalizers):

* ``pki``               -- CA + ``good`` leaf + ``revoked`` leaf; AIA OCSP URL ``http://127.0.0.1:<ca_port>/``
* ``ca``                -- ``openssl ocsp`` for ``pki``, ``-ndays 1`` (``stop()``, ``start()``, ``restart()``)
* ``proxy``             -- ocspproxy serving both leaves, fetching from ``ca``
* ``apache_direct``     -- Apache whose ``SSLStaplingForceURL`` is the CA itself (harness self-check)
* ``apache_via_proxy``  -- Apache whose ``SSLStaplingForceURL`` is the proxy

Function-scoped: ``make_stack(nmin=..., ndays=...)`` builds a private PKI + CA + proxy + Apache.

Without ``apache2``/``openssl`` the e2e tests are skipped, unless ``CI=true`` (then they fail).
On any failure the tails of all live peers' logs are attached to the report.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.required import unavailable

from .peers import (
    Apache,
    ApacheTree,
    ManagedProcess,
    OcspProxy,
    OcspResponder,
    Pki,
    VHost,
    build_pki,
    free_port,
    missing_tools,
    tail,
)

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.failed:
        return report
    for proc in list(ManagedProcess.ACTIVE.values()):
        lines = 150 if isinstance(proc, OcspProxy) else 60
        report.sections.append((f"log of {proc.name} ({proc.log_path})", tail(proc.log_path, lines)))
        if isinstance(proc, Apache | ApacheTree):
            report.sections.append(
                (f"error log of {proc.name} ({proc.error_log})", tail(proc.error_log, lines))
            )
    return report


@pytest.fixture(scope="session")
def e2e_tools() -> None:
    """Skip (or, with CI=true, fail) when the real peers are not installed."""
    missing = missing_tools()
    if not missing:
        return
    unavailable("e2e peers missing: " + ", ".join(missing))


def apache_account() -> tuple[str, str]:
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup"), ("nobody", "nobody")):
        try:
            pwd.getpwnam(user)
            grp.getgrnam(group)
        except KeyError:
            continue
        return user, group
    raise RuntimeError("no unprivileged account for Apache's children (www-data / nobody)")


@dataclass
class Stack:
    pki: Pki
    ca: OcspResponder
    proxy: OcspProxy
    apache: Apache


def new_pki(base: Path) -> Pki:
    return build_pki(base / "pki", free_port())


def new_ca(pki: Pki, base: Path, *, nmin: int | None = None, ndays: int | None = None) -> OcspResponder:
    return OcspResponder(pki, base / "logs" / "ca.log", nmin=nmin, ndays=ndays)


def new_proxy(pki: Pki, base: Path, config: str | None = None) -> OcspProxy:
    """ocspproxy for both leaves; config: the text of a TOML file to run it with."""
    config_path = None
    if config is not None:
        config_path = base / "ocspproxy.toml"
        config_path.write_text(config)
    return OcspProxy(
        free_port(),
        base / "proxy-state",
        [pki.good.cert_pem, pki.revoked.cert_pem],
        pki.ca_pem,
        base / "logs" / "ocspproxy.log",
        config=config_path,
    )


def new_apache(pki: Pki, server_root: Path, force_url: str) -> Apache:
    user, group = apache_account()
    vhosts = [VHost(free_port(), pki.good), VHost(free_port(), pki.revoked)]
    return Apache(server_root, vhosts, force_url, user=user, group=group)


@pytest.fixture(scope="module")
def e2e_base(e2e_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def pki(e2e_base: Path) -> Pki:
    return new_pki(e2e_base)


@pytest.fixture(scope="module")
def ca(pki: Pki, e2e_base: Path) -> Iterator[OcspResponder]:
    responder = new_ca(pki, e2e_base, ndays=1)
    try:
        responder.start()
        yield responder
    finally:
        responder.cleanup()


@pytest.fixture(scope="module")
def proxy(pki: Pki, ca: OcspResponder, e2e_base: Path) -> Iterator[OcspProxy]:
    service = new_proxy(pki, e2e_base)
    try:
        service.start()
        yield service
    finally:
        service.cleanup()


@pytest.fixture(scope="module")
def apache_direct(pki: Pki, ca: OcspResponder, e2e_base: Path) -> Iterator[Apache]:
    httpd = new_apache(pki, e2e_base / "httpd-direct", ca.url)
    try:
        httpd.start()
        yield httpd
    finally:
        httpd.cleanup()


@pytest.fixture(scope="module")
def apache_via_proxy(pki: Pki, proxy: OcspProxy, e2e_base: Path) -> Iterator[Apache]:
    httpd = new_apache(pki, e2e_base / "httpd-proxy", proxy.url)
    try:
        httpd.start()
        yield httpd
    finally:
        httpd.cleanup()


@pytest.fixture
def make_stack(e2e_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stack]]:
    """Factory for a private PKI + CA responder + ocspproxy + Apache (ForceURL → proxy), all started."""
    started: list[ManagedProcess] = []

    def build(*, nmin: int | None = None, ndays: int | None = None, proxy_config: str | None = None) -> Stack:
        base = tmp_path_factory.mktemp("e2e-stack")
        pki_ = new_pki(base)
        ca_ = new_ca(pki_, base, nmin=nmin, ndays=ndays)
        proxy_ = new_proxy(pki_, base, proxy_config)
        apache_ = new_apache(pki_, base / "httpd", proxy_.url)
        started.extend((ca_, proxy_, apache_))
        for proc in (ca_, proxy_, apache_):
            proc.start()
        return Stack(pki_, ca_, proxy_, apache_)

    try:
        yield build
    finally:
        for proc in reversed(started):
            proc.cleanup()
