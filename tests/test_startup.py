"""Restarts: unchanged certificate and staple files are only stat-ed, and everything still works."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from ocspproxy import daemon as daemon_module
from ocspproxy import inventory as inventory_module
from ocspproxy.certindex import CertIndex
from ocspproxy.config import Config
from ocspproxy.inventory import CertSource, Inventory
from ocspproxy.steps import Steps
from ocspproxy.store import FileStore, Stamp
from ocspproxy.store.files import INDEX_NAME, SNAPSHOT_NAME
from tests.conftest import Proxy, eventually
from tests.pki import TestCA, pem
from tests.upstream import FakeUpstream


async def test_a_restart_reads_no_unchanged_file_and_serves_the_same(
    ca: TestCA,
    upstream: FakeUpstream,
    make_proxy: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leaves = [ca.leaf(f"site{i}") for i in range(3)]
    state = tmp_path / "state"
    proxy: Proxy = make_proxy(ca=ca, leaves=leaves, state_dir=state)
    await proxy.start()
    assert proxy.daemon is not None
    staples = proxy.daemon.staples
    keys = [ca.cert_id(leaf.serial).key for leaf in leaves]
    await eventually(lambda: all(staples.servable(k) and not staples.fetching(k) for k in keys))
    first = {leaf.serial: (await proxy.post(ca.request(leaf.serial))).body for leaf in leaves}
    await proxy.stop()
    assert (state / INDEX_NAME).exists() and (state / SNAPSHOT_NAME).exists()

    read: list[str] = []
    real_cert, real_staple = inventory_module._read_with_stat, FileStore._read

    def cert(path: Path) -> tuple[bytes, os.stat_result]:
        read.append(Path(path).name)
        return real_cert(path)

    def staple(path: Path) -> tuple[bytes, Stamp]:
        read.append(path.name)
        return real_staple(path)

    monkeypatch.setattr(inventory_module, "_read_with_stat", cert)
    monkeypatch.setattr(FileStore, "_read", staticmethod(staple))
    requests = list(upstream.requests)
    await proxy.start()
    assert read == []  # certificates from the index, staples from the snapshot
    for leaf in leaves:
        answer = await proxy.post(ca.request(leaf.serial))
        assert answer.http_status == 200 and answer.body == first[leaf.serial]
    assert upstream.requests == requests  # nothing fetched again
    assert proxy.daemon is not None
    await eventually(lambda: len(proxy.daemon.scheduler) == 3 if proxy.daemon else False)
    # The watcher starts from what the inventory saw: the same as looking now.
    assert proxy.daemon._watch_snapshot == proxy.daemon._snapshot()


async def test_a_certificate_changed_after_the_inventory_read_is_noticed(
    ca: TestCA, make_proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf = ca.leaf("site")
    proxy: Proxy = make_proxy(ca=ca, leaves=[leaf], state_dir=tmp_path / "state")
    (path,) = (Path(p) for p in proxy.config.certs)
    real = daemon_module._inventory_steps

    def then_renewed(config: Config, sources: list[CertSource], index: CertIndex) -> Steps[Inventory]:
        out = yield from real(config, sources, index)
        st = path.stat()  # renewed just after it was read, before the watcher's first look
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        return out

    monkeypatch.setattr(daemon_module, "_inventory_steps", then_renewed)
    await proxy.start()
    assert proxy.daemon is not None
    assert proxy.daemon._snapshot() != proxy.daemon._watch_snapshot  # the next look reloads


async def test_the_first_watch_snapshot_is_what_the_watcher_would_see(
    ca: TestCA, tmp_path: Path, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Globs spelt loosely, an unreadable match, a missing plain path: the same files either way.
    certs = tmp_path / "certs"
    certs.mkdir()
    for i in range(3):
        (certs / f"site-{i}.pem").write_bytes(pem(ca.leaf(f"site{i}").cert))
    (certs / "broken.pem").write_text("not a certificate")
    monkeypatch.chdir(tmp_path)
    proxy: Proxy = make_proxy(ca=ca, leaves=[ca.leaf("issuer-file-only")], state_dir=tmp_path / "state")
    proxy.config = dataclasses.replace(proxy.config, certs=("./certs//*.pem", str(tmp_path / "gone.pem")))
    await proxy.start()
    assert proxy.daemon is not None
    assert len(proxy.daemon.inventory.targets) == 3
    assert proxy.daemon._watch_snapshot == proxy.daemon._snapshot()
