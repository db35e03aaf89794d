"""Start-up: the listener opens before the certificate files are read. Stored staples are served
from the snapshot meanwhile; anything else waits for the full load, never answered from half a view."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp

from ocspproxy.certs import files as files_module
from ocspproxy.certs import sources as sources_module
from ocspproxy.certs.build import _glob_matches, build_inventory, early_inventory
from ocspproxy.certs.index import CertIndex
from ocspproxy.certs.inventory import CertSource, Inventory
from ocspproxy.config import Config
from ocspproxy.core.staple import Staple
from ocspproxy.steps import Steps
from ocspproxy.store.atomic import write_atomically
from ocspproxy.store.directory import SNAPSHOT_NAME
from ocspproxy.store.snapshot import decode, encode
from tests.conftest import Proxy, eventually
from tests.pki import TestCA, now, pem
from tests.upstream import FakeUpstream, Reply


class Gate:
    """Holds the full load's certificate pass (a step at a time in the event loop) until opened."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    real = sources_module.inventory_steps

    def held(config: Config, sources: list[CertSource], index: CertIndex) -> Steps[Inventory]:
        gate.entered.set()
        deadline = time.monotonic() + 10  # bounded: a failing test must not hang its shutdown
        while not gate.opened.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)
            yield
        return (yield from real(config, sources, index))

    monkeypatch.setattr(sources_module, "inventory_steps", held)
    yield gate
    gate.open()


async def filled(proxy: Proxy, ca: TestCA, serials: list[int], gate: Gate) -> dict[int, bytes]:
    """Start (the gate open), let it fetch and store every staple, note what it serves, stop; the
    gate is closed again for the next start."""
    gate.open()
    await proxy.start()
    assert proxy.app is not None
    cache, refresher = proxy.app.cache, proxy.app.refresher
    await eventually(
        lambda: all(
            cache.servable(ca.cert_id(s).key) and not refresher.fetching(ca.cert_id(s).key) for s in serials
        )
    )
    served = {s: (await proxy.post(ca.request(s))).body for s in serials}
    await proxy.stop()
    gate.opened.clear()
    return served


async def test_stored_staples_are_served_before_the_certificate_files_are_read(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    leaves = [ca.leaf(f"site{i}") for i in range(3)]
    proxy: Proxy = make_proxy(ca=ca, leaves=leaves, state_dir=tmp_path / "state")
    served = await filled(proxy, ca, [leaf.serial for leaf in leaves], gate)
    fetched = list(upstream.requests)

    await proxy.start(loaded=False)
    assert proxy.app is not None and not proxy.app.loaded.is_set()
    await eventually(gate.entered.is_set)  # the full load is under way, held
    for leaf in leaves:
        answer = await proxy.post(ca.request(leaf.serial))
        assert answer.http_status == 200 and answer.body == served[leaf.serial]
    assert upstream.requests == fetched  # from the snapshot, not the CA
    assert not proxy.app.loaded.is_set()

    gate.open()
    await eventually(proxy.app.loaded.is_set)
    for leaf in leaves:
        assert (await proxy.post(ca.request(leaf.serial))).body == served[leaf.serial]


async def test_a_forged_snapshot_entry_is_never_served_and_its_file_is_loaded(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    leaf = ca.leaf("site")
    state = tmp_path / "state"
    proxy: Proxy = make_proxy(ca=ca, leaves=[leaf], state_dir=state, answer_budget=5.0)
    good = (await filled(proxy, ca, [leaf.serial], gate))[leaf.serial]
    # The snapshot, not the file, now holds a staple signed by a look-alike CA.
    entries = decode((state / SNAPSHOT_NAME).read_bytes())
    ((stamp, staple),) = entries.values()
    forged = Staple(
        key=staple.key,
        der=ca.respond(leaf.serial, signer="rogue"),
        status=staple.status,
        this_update=staple.this_update,
        next_update=staple.next_update,
        produced_at=staple.produced_at,
        revocation_time=None,
        verified=False,
    )
    write_atomically(state, SNAPSHOT_NAME, encode([(stamp, forged)]))
    upstream.behaviour = lambda serial: Reply(status=500)

    await proxy.start(loaded=False)
    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.body == good  # its signature failed: the file (genuine) was read instead
    assert proxy.app is not None and not proxy.app.loaded.is_set()
    gate.open()
    await eventually(proxy.app.loaded.is_set)
    assert (await proxy.post(ca.request(leaf.serial))).body == good
    await proxy.stop()
    # The next snapshot pairs the file with its own staple, not the forged one.
    ((_, kept),) = decode((state / SNAPSHOT_NAME).read_bytes()).values()
    assert kept.der == good


async def test_an_issuer_known_only_from_certificate_files_is_proven_before_listening(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    # Let's Encrypt's layout: fullchain files, no issuer configured.
    leaves = [ca.leaf(f"site{i}") for i in range(3)]
    certs = tmp_path / "live"
    certs.mkdir()
    for i, leaf in enumerate(leaves):
        (certs / f"site{i}.pem").write_bytes(pem(leaf.cert, ca.cert))
    proxy: Proxy = make_proxy(ca=ca, leaves=[], state_dir=tmp_path / "state")
    proxy.config = dataclasses.replace(proxy.config, certs=(str(certs / "*.pem"),), issuers=())
    served = await filled(proxy, ca, [leaf.serial for leaf in leaves], gate)
    fetched = list(upstream.requests)

    await proxy.start(loaded=False)
    for leaf in leaves:
        assert (await proxy.post(ca.request(leaf.serial))).body == served[leaf.serial]
    assert upstream.requests == fetched
    assert proxy.app is not None and not proxy.app.loaded.is_set()


async def test_an_issuer_not_known_yet_waits_for_the_full_load_before_unauthorized(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    leaf = ca.leaf("site")
    proxy: Proxy = make_proxy(ca=ca, leaves=[leaf], state_dir=tmp_path / "state", answer_budget=5.0)
    await filled(proxy, ca, [leaf.serial], gate)

    await proxy.start(loaded=False)
    assert proxy.app is not None
    stranger = TestCA()
    unknown = asyncio.create_task(proxy.post(stranger.request(7)))
    fresh_leaf = asyncio.create_task(proxy.post(ca.request(leaf.serial + 1)))  # configured? no: on demand
    await asyncio.sleep(0.3)
    assert not unknown.done() and not fresh_leaf.done()  # not answered from half a view
    gate.open()
    answer = await unknown
    assert answer.ocsp.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    assert (await fresh_leaf).ocsp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL


async def test_a_configured_certificate_without_a_stored_staple_is_fetched_after_the_load(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    kept, new = ca.leaf("kept"), ca.leaf("new")
    state = tmp_path / "state"
    await filled(make_proxy(ca=ca, leaves=[kept], state_dir=state), ca, [kept.serial], gate)

    proxy: Proxy = make_proxy(ca=ca, leaves=[kept, new], state_dir=state, answer_budget=5.0)
    await proxy.start(loaded=False)
    asked = asyncio.create_task(proxy.post(ca.request(new.serial)))
    await asyncio.sleep(0.3)
    assert not asked.done() and new.serial not in upstream.requests
    gate.open()
    answer = await asked
    assert answer.ocsp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.ocsp.serial_number == new.serial


async def test_still_loading_past_the_budget_answers_try_later(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    proxy: Proxy = make_proxy(ca=ca, leaves=[ca.leaf("site")], answer_budget=0.3)
    await proxy.start(loaded=False)
    answer = await proxy.post(TestCA().request(7))
    assert answer.http_status == 200
    assert answer.ocsp.response_status == ocsp.OCSPResponseStatus.TRY_LATER


async def test_a_staple_file_replaced_since_the_snapshot_is_served_from_the_file(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    leaf = ca.leaf("site")
    state = tmp_path / "state"
    proxy: Proxy = make_proxy(ca=ca, leaves=[leaf], state_dir=state)
    old = (await filled(proxy, ca, [leaf.serial], gate))[leaf.serial]
    # Carried in by hand (the air-gapped way), written over the file in place: the snapshot
    # still holds the old staple, the file a revoked one.
    revoked = ca.respond(leaf.serial, status="revoked")
    (path,) = state.glob("*.der")
    path.write_bytes(revoked)
    upstream.behaviour = lambda serial: Reply(status=500)

    await proxy.start(loaded=False)
    assert (await proxy.post(ca.request(leaf.serial))).body == revoked != old
    assert proxy.app is not None and not proxy.app.loaded.is_set()
    gate.open()
    await eventually(proxy.app.loaded.is_set)
    assert (await proxy.post(ca.request(leaf.serial))).body == revoked


@pytest.mark.parametrize("snapshot", ["missing", "damaged"])
async def test_without_a_usable_snapshot_stored_staples_are_read_from_their_files(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate, snapshot: str
) -> None:
    leaves = [ca.leaf(f"site{i}") for i in range(2)]
    state = tmp_path / "state"
    proxy: Proxy = make_proxy(ca=ca, leaves=leaves, state_dir=state)
    served = await filled(proxy, ca, [leaf.serial for leaf in leaves], gate)
    if snapshot == "missing":
        (state / SNAPSHOT_NAME).unlink()
    else:
        (state / SNAPSHOT_NAME).write_bytes(b"ocspproxy-staples 1 0000\n")
    upstream.behaviour = lambda serial: Reply(status=500)

    await proxy.start(loaded=False)
    for leaf in leaves:
        assert (await proxy.post(ca.request(leaf.serial))).body == served[leaf.serial]
    assert proxy.app is not None and not proxy.app.loaded.is_set()


async def test_a_stored_staple_past_next_update_is_not_served_at_start_up(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    leaf = ca.leaf("site")
    state = tmp_path / "state"
    proxy: Proxy = make_proxy(ca=ca, leaves=[leaf], state_dir=state, answer_budget=5.0)
    await filled(proxy, ca, [leaf.serial], gate)
    (path,) = state.glob("*.der")
    expired = ca.respond(leaf.serial, this_update=now() - dt.timedelta(hours=3))  # valid for 1 h
    path.write_bytes(expired)
    upstream.behaviour = lambda serial: Reply(status=500)

    await proxy.start(loaded=False)
    asked = asyncio.create_task(proxy.post(ca.request(leaf.serial)))
    await asyncio.sleep(0.3)
    assert not asked.done()
    gate.open()
    answer = await asked
    assert answer.ocsp.response_status == ocsp.OCSPResponseStatus.TRY_LATER
    assert not path.exists()  # removed by the full load: it can never be served again


async def test_a_reload_during_start_up_waits_for_the_full_load(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path, gate: Gate
) -> None:
    proxy: Proxy = make_proxy(ca=ca, leaves=[ca.leaf("site")])
    await proxy.start(loaded=False)
    assert proxy.app is not None
    reload = asyncio.create_task(proxy.app.reload("test"))
    await asyncio.sleep(0.2)
    assert not reload.done()
    gate.open()
    await asyncio.wait_for(reload, 5)
    assert len(proxy.app.inventory.targets) == 1


async def test_a_failed_load_stops_the_service(
    ca: TestCA, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(config: Config, sources: list[CertSource], index: CertIndex) -> Steps[Inventory]:
        yield
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sources_module, "inventory_steps", broken)
    proxy: Proxy = make_proxy(ca=ca, leaves=[ca.leaf("site")])
    with pytest.raises(RuntimeError, match="service exited with 1"):
        await proxy.start()


# -- the issuers known before the listener opens ---------------------------------------------------


def test_issuers_from_certificate_files_are_proven_from_one_file_each(
    ca: TestCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = TestCA()
    paths = []
    for i, issuer in enumerate([ca, ca, ca, other, other]):
        leaf = issuer.leaf(f"site{i}")
        path = tmp_path / f"site{i}.pem"
        path.write_bytes(pem(leaf.cert, issuer.cert))  # fullchain: the issuer only in the leaf file
        paths.append(path)
    index = CertIndex()
    build_inventory([CertSource(path=str(tmp_path / "*.pem"))], [], index=index)
    index = CertIndex.decode(index.encode())  # as read back at the next start

    read: list[str] = []
    real_read = files_module.read_certificate_file

    def counting(path: str | Path) -> Any:
        read.append(Path(path).name)
        return real_read(path)

    monkeypatch.setattr(files_module, "read_certificate_file", counting)
    early = early_inventory([CertSource(path=str(tmp_path / "*.pem"))], [], None, index)
    assert {i.name for i in early.issuers.values()} == {ca.cert.subject.rfc4514_string()} | {
        other.cert.subject.rfc4514_string()
    }
    assert len(read) == 2  # one file per issuer


def test_an_issuer_whose_files_are_no_longer_configured_is_not_known_early(
    ca: TestCA, tmp_path: Path
) -> None:
    leaf = ca.leaf("site")
    path = tmp_path / "site.pem"
    path.write_bytes(pem(leaf.cert, ca.cert))
    index = CertIndex()
    build_inventory([CertSource(path=str(path))], [], index=index)
    index = CertIndex.decode(index.encode())
    assert early_inventory([CertSource(path=str(path))], [], None, index).issuers
    elsewhere = [CertSource(path=str(tmp_path / "other" / "*.pem"))]
    assert not early_inventory(elsewhere, [], None, index).issuers


@pytest.mark.parametrize(
    ("path", "pattern", "matches"),
    [
        ("/etc/ssl/a.pem", "/etc/ssl/*.pem", True),
        ("/etc/ssl/.a.pem", "/etc/ssl/*.pem", False),  # glob skips hidden files
        ("/etc/ssl/.a.pem", "/etc/ssl/.*.pem", True),
        ("/etc/ssl/sub/a.pem", "/etc/ssl/*.pem", False),  # a wildcard never crosses "/"
        ("/etc/le/live/site/fullchain.pem", "/etc/le/live/*/fullchain.pem", True),
        ("/etc/le/live/site/cert.pem", "/etc/le/live/*/fullchain.pem", False),
        ("/etc/ssl/a.pem", "/etc/ssl/[ab].pem", True),
        ("/etc/ssl/A.pem", "/etc/ssl/a.pem", False),
    ],
)
def test_glob_matches_like_glob(path: str, pattern: str, matches: bool) -> None:
    assert _glob_matches(path.split("/"), pattern.split("/")) is matches
