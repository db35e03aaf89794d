"""Bundles into the service: ``bundle import`` hands checked entries over through the state
directory's spool, and the running service (or the next one to start) takes them through the door;
the commands' output and exit statuses; the want file the service writes."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ocspproxy.bundle.format import BUNDLE, open_archive
from ocspproxy.bundle.want import read_want
from ocspproxy.cli import main
from ocspproxy.store.directory import SPOOL_NAME, StateDirectory
from tests.conftest import Proxy, eventually
from tests.pki import Leaf, TestCA, now
from tests.test_bundle import make_bundle

UNREACHABLE = "http://127.0.0.1:9/"  # the inside cannot reach its CA


def inside(proxy: Proxy) -> list[str]:
    """The flags that name the service's own configuration, as a cron job gives them."""
    config = proxy.config
    flags = ["--state-dir", str(config.state_dir)]
    for cert in config.certs:
        flags += ["--cert", cert]
    for issuers in config.issuers:
        flags += ["--issuers", str(issuers)]
    return flags


def run_import(
    proxy: Proxy, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    status = main(["bundle", "import", str(bundle), "--json", *inside(proxy)])
    out, err = capsys.readouterr()
    report = json.loads([line for line in out.splitlines() if line.startswith('{"bundle"')][-1])
    return status, report, err


def served(proxy: Proxy, ca: TestCA, leaf: Leaf) -> Any:
    assert proxy.app is not None
    return proxy.app.cache.servable(ca.cert_id(leaf.serial).key)


async def test_an_import_reaches_the_running_service_without_a_restart_and_a_newer_one_replaces_it(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = TestCA(ocsp_url=UNREACHABLE)
    good, revoked = ca.leaf(), ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[good, revoked]).start()
    assert served(proxy, ca, good) is None, "no CA: nothing to serve yet"
    first = ca.respond(good.serial, this_update=now() - dt.timedelta(minutes=5))
    bundle = make_bundle(
        tmp_path / "one.tar",
        ca,
        [(good.serial, first), (revoked.serial, ca.respond(revoked.serial, status="revoked"))],
    )
    status, report, _ = run_import(proxy, bundle, capsys)
    assert status == 0 and report["imported"] == 2 and report["spooled"]
    await eventually(lambda: served(proxy, ca, good) is not None and served(proxy, ca, revoked) is not None)
    answer = await proxy.post(ca.request(good.serial))
    assert answer.status == "SUCCESSFUL" and answer.body == first
    assert (await proxy.post(ca.request(revoked.serial))).cert_status == "REVOKED"
    assert not os.listdir(proxy.config.state_dir / SPOOL_NAME), "taken, then removed"
    assert (proxy.config.state_dir / f"{ca.cert_id(good.serial).key}.der").read_bytes() == first, "persisted"

    second = ca.respond(good.serial)
    status, report, _ = run_import(
        proxy, make_bundle(tmp_path / "two.tar", ca, [(good.serial, second)]), capsys
    )
    assert status == 0 and report["imported"] == 1
    await eventually(lambda: served(proxy, ca, good).der == second)
    older = make_bundle(tmp_path / "three.tar", ca, [(good.serial, first)])
    status, report, _ = run_import(proxy, older, capsys)
    assert status == 2 and report["entries"][0]["reason"] == "older than the one held", "nothing usable in it"
    assert served(proxy, ca, good).der == second


async def test_an_import_while_the_service_is_stopped_is_served_at_its_next_start(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = TestCA(ocsp_url=UNREACHABLE)
    leaf = ca.leaf()
    proxy = make_proxy(ca=ca, leaves=[leaf])
    der = ca.respond(leaf.serial)
    status, report, _ = run_import(proxy, make_bundle(tmp_path / "b.tar", ca, [(leaf.serial, der)]), capsys)
    assert status == 0 and report["imported"] == 1
    await proxy.start()
    await eventually(lambda: served(proxy, ca, leaf) is not None)
    assert (await proxy.post(ca.request(leaf.serial))).body == der


async def test_an_interrupted_import_leaves_nothing_half_written_and_a_bad_spool_file_is_set_aside(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = TestCA(ocsp_url=UNREACHABLE)
    leaf = ca.leaf()
    proxy = make_proxy(ca=ca, leaves=[leaf])
    spool = proxy.config.state_dir / SPOOL_NAME
    spool.mkdir(parents=True, mode=0o700)
    whole = make_bundle(tmp_path / "b.tar", ca, [(leaf.serial, ca.respond(leaf.serial))]).read_bytes()
    # Imports killed while writing: what they leave is a temporary file, never a *.bundle.
    young, old = (
        spool / ".tmp-20260101T000000.000000Z-1.bundle.1",
        spool / ".tmp-20250101T000000.000000Z-3.bundle.3",
    )
    for torso in (young, old):
        torso.write_bytes(whole[: len(whole) // 2])
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (spool / "20260101T000000.000000Z-2.bundle").write_bytes(b"garbage")
    newer = make_bundle(tmp_path / "newer.tar", ca, [(leaf.serial, ca.respond(leaf.serial))], version=2)
    (spool / "20260101T000000.000000Z-4.bundle").write_bytes(newer.read_bytes())  # a newer `bundle import`
    await proxy.start()
    await eventually(lambda: (spool / "20260101T000000.000000Z-4.bundle.bad").exists())
    assert (spool / "20260101T000000.000000Z-2.bundle.bad").exists()
    assert served(proxy, ca, leaf) is None, "nothing from the torsos"
    assert young.exists(), "young: maybe an import under way"
    assert not old.exists(), "an hour old: removed"
    err = capsys.readouterr().err
    assert "spooled bundle unusable; set aside" in err and "format version 2 is newer" in err


async def test_every_tampered_kind_is_reported_and_the_good_entries_still_arrive(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = TestCA(ocsp_url=UNREACHABLE)
    leaves = [ca.leaf() for _ in range(4)]
    proxy = await make_proxy(ca=ca, leaves=leaves).start()
    fine = ca.respond(leaves[0].serial)
    flipped = bytearray(ca.respond(leaves[1].serial))
    flipped[-8] ^= 0x40
    items = [
        (leaves[0].serial, fine),
        (leaves[1].serial, bytes(flipped)),
        (leaves[2].serial, ca.respond(leaves[3].serial)),  # swapped
        (leaves[3].serial, ca.respond(leaves[3].serial, signer="rogue", by_name=True)),
    ]
    status, report, _ = run_import(proxy, make_bundle(tmp_path / "b.tar", ca, items), capsys)
    assert status == 1 and (report["imported"], report["skipped"]) == (1, 3)
    reasons = [e["reason"] for e in report["entries"][1:]]
    assert all(r.startswith("invalid: ") for r in reasons), reasons
    assert "CertID mismatch" in reasons[1]
    await eventually(lambda: served(proxy, ca, leaves[0]) is not None)
    assert all(served(proxy, ca, leaf) is None for leaf in leaves[1:])


async def test_the_cadence_warning_is_given_by_import_and_in_the_service_log(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = TestCA(ocsp_url=UNREACHABLE)
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf], bundle_warn_margin=7200.0).start()
    short = ca.respond(leaf.serial, validity=dt.timedelta(minutes=90))
    status, report, err = run_import(
        proxy, make_bundle(tmp_path / "b.tar", ca, [(leaf.serial, short)]), capsys
    )
    assert status == 0 and report["expires_soon"] is True
    assert "within the warning margin of 48 h" in err, "the default margin: the CLI was given no config file"
    await eventually(lambda: served(proxy, ca, leaf) is not None)
    await eventually(lambda: "bundle staples expire soon" in capsys.readouterr().err)


async def test_the_service_writes_the_want_file_after_its_load_and_on_request(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = TestCA(ocsp_url=UNREACHABLE)
    leaves = [ca.leaf() for _ in range(3)]
    want_file = tmp_path / "out" / "want.tar"
    want_file.parent.mkdir()
    proxy = await make_proxy(ca=ca, leaves=leaves, bundle_want_file=want_file).start()
    await eventually(lambda: want_file.exists())
    want = read_want(want_file)
    assert sorted(w.key.serial for w in want.entries) == sorted(leaf.serial for leaf in leaves)
    assert {w.url for w in want.entries} == {UNREACHABLE}
    want_file.unlink()
    assert proxy.app is not None
    proxy.app.inbox.write_want_soon("test")
    await eventually(lambda: want_file.exists())
    # The CLI writes the same file from the same configuration.
    assert main(["bundle", "want", "--out", str(tmp_path / "cli.tar"), *inside(proxy)]) == 0
    assert [w.request for w in read_want(tmp_path / "cli.tar").entries] == [w.request for w in want.entries]


def test_import_of_what_is_no_bundle_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = TestCA()
    leaf_path, issuer_path = ca.write(tmp_path, ca.leaf(), with_chain=False)
    bundle = make_bundle(tmp_path / "newer.tar", ca, [(1, ca.respond(1))], version=99)
    flags = ["--cert", str(leaf_path), "--issuers", str(issuer_path), "--state-dir", str(tmp_path / "state")]
    assert main(["bundle", "import", str(bundle), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "format version 99 is newer than this ocspproxy reads (up to 1)" in err[0]


def test_the_state_directory_knows_the_spool_and_the_want_file_as_its_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / SPOOL_NAME).mkdir(parents=True)
    (state / "want.tar").write_bytes(b"")  # where the README suggests [bundle] want_file
    state.chmod(0o755)
    StateDirectory(state)
    assert state.stat().st_mode & 0o777 == 0o700, "tightened: the spool is one of its own files"


def test_a_spooled_bundle_is_a_bundle_readable_by_standard_tools(tmp_path: Path) -> None:
    ca = TestCA()
    with open_archive(make_bundle(tmp_path / "b.tar", ca, [(5, ca.respond(5))]), BUNDLE) as archive:
        assert [m.name for m in archive.members()] == [archive.entries[0]["response"]]
