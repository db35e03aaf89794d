"""Restarts: unchanged certificate and staple files are only stat-ed, and everything still works."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from ocspproxy.certs import files as files_module
from ocspproxy.certs import sources as sources_module
from ocspproxy.certs.index import CertIndex
from ocspproxy.certs.inventory import CertSource, Inventory
from ocspproxy.config import Config
from ocspproxy.steps import Steps
from ocspproxy.store import FileStore
from ocspproxy.store.directory import INDEX_NAME, SNAPSHOT_NAME
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
    assert proxy.app is not None
    cache, refresher = proxy.app.cache, proxy.app.refresher
    keys = [ca.cert_id(leaf.serial).key for leaf in leaves]
    await eventually(lambda: all(cache.servable(k) and not refresher.fetching(k) for k in keys))
    first = {leaf.serial: (await proxy.post(ca.request(leaf.serial))).body for leaf in leaves}
    await proxy.stop()
    assert (state / INDEX_NAME).exists() and (state / SNAPSHOT_NAME).exists()

    read: list[str] = []
    real_cert, real_staple = files_module.read_certificate_file, FileStore._read_entry

    def cert(path: Path) -> tuple[bytes, os.stat_result]:
        read.append(Path(path).name)
        return real_cert(path)

    def staple(path: Path) -> tuple[bytes, os.stat_result]:
        read.append(path.name)
        return real_staple(path)

    monkeypatch.setattr(files_module, "read_certificate_file", cert)
    monkeypatch.setattr(FileStore, "_read_entry", staticmethod(staple))
    requests = list(upstream.requests)
    await proxy.start()
    assert read == []  # certificates from the index, staples from the snapshot
    for leaf in leaves:
        answer = await proxy.post(ca.request(leaf.serial))
        assert answer.http_status == 200 and answer.body == first[leaf.serial]
    assert upstream.requests == requests  # nothing fetched again
    assert proxy.app is not None
    await eventually(lambda: len(proxy.app.scheduler) == 3 if proxy.app else False)
    # The watcher starts from what the inventory saw: the same as looking now.
    watcher = proxy.app.watcher
    assert watcher is not None and watcher.seen == watcher.look()


async def test_a_certificate_changed_after_the_inventory_read_is_noticed(
    ca: TestCA, make_proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf = ca.leaf("site")
    proxy: Proxy = make_proxy(ca=ca, leaves=[leaf], state_dir=tmp_path / "state")
    (path,) = (Path(p) for p in proxy.config.certs)
    real = sources_module.inventory_steps

    renewed: list[int] = []

    def then_renewed(config: Config, sources: list[CertSource], index: CertIndex) -> Steps[Inventory]:
        out = yield from real(config, sources, index)
        st = path.stat()  # renewed just after it was read, before the watcher's first look
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        renewed.append(st.st_mtime_ns + 1_000_000)
        return out

    monkeypatch.setattr(sources_module, "inventory_steps", then_renewed)
    await proxy.start()
    assert proxy.app is not None and proxy.app.watcher is not None
    watcher = proxy.app.watcher
    # The watcher starts from what the inventory saw, so its next look sees the change (and reloads).
    await eventually(lambda: (str(path), renewed[-1], path.stat().st_size) in watcher.seen)


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
    assert proxy.app is not None
    assert len(proxy.app.inventory.targets) == 3
    assert proxy.app.watcher is not None
    assert proxy.app.watcher.seen == proxy.app.watcher.look()
