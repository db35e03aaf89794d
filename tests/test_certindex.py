"""The certificate index: unchanged files are only stat-ed, changed ones parsed, a bad index ignored."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocspproxy.certs import files as files_module
from ocspproxy.certs.build import build_inventory
from ocspproxy.certs.index import CertIndex, read_index, write_index
from ocspproxy.certs.inventory import CertSource, Inventory
from ocspproxy.certs.sources import read_inventory
from ocspproxy.config import Config
from ocspproxy.store.directory import INDEX_NAME
from tests.pki import TestCA, pem

CA = TestCA(ocsp_url="http://ocsp.test/")
OTHER = TestCA(ocsp_url="http://other.test/")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every file the inventory reads itself (certificate, chain and CA files)."""
    seen: list[Path] = []
    real = files_module.read_certificate_file

    def counting(path: Path) -> tuple[bytes, os.stat_result]:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(files_module, "read_certificate_file", counting)
    yield seen


def summary(inv: Inventory) -> tuple[object, ...]:
    """Everything the daemon uses from an inventory, comparable across builds."""
    targets = sorted(
        (str(k), t.issuer.name, t.issuer.key_hashes["sha1"], t.url, str(t.path), t.subject)
        for k, t in inv.targets.items()
    )
    issuers = sorted((alg, h.hex(), i.name, i.ocsp_url) for (alg, h), i in inv.issuers.items())
    return targets, issuers, sorted(inv.problems), dict(inv.files), inv.unreadable


def a_site_set(tmp_path: Path) -> tuple[list[CertSource], list[Path]]:
    """Leaves with their chain in the file, without it (issuer from --issuers or a shared chain
    file), one without an OCSP URL, one whose issuer is unknown, and a broken file."""
    certs = tmp_path / "certs"
    certs.mkdir()
    bundle = tmp_path / "issuers.pem"
    bundle.write_bytes(pem(CA.cert))
    chain = tmp_path / "other-chain.pem"
    chain.write_bytes(pem(OTHER.cert))
    for i in range(4):
        (certs / f"full-{i}.pem").write_bytes(pem(CA.leaf(f"full{i}.example").cert, CA.cert))
        (certs / f"bare-{i}.pem").write_bytes(pem(CA.leaf(f"bare{i}.example").cert))
    (certs / "no-url.pem").write_bytes(pem(CA.leaf("no-url.example", ocsp_url=None).cert))
    (certs / "orphan.pem").write_bytes(pem(TestCA().leaf("orphan.example").cert))
    (certs / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    others = tmp_path / "others"
    others.mkdir()
    for i in range(3):
        (others / f"o-{i}.pem").write_bytes(pem(OTHER.leaf(f"other{i}.example").cert))
    sources = [
        CertSource(path=str(certs / "*.pem")),
        CertSource(path=str(others / "*.pem"), chain_file=chain),
    ]
    return sources, [bundle]


def rebuilt(sources: list[CertSource], issuers: list[Path], index: CertIndex) -> tuple[Inventory, CertIndex]:
    """Build with index, keep the new index the way the daemon does (encoded, decoded)."""
    inv = build_inventory(sources, issuers, index=index)
    return inv, CertIndex.decode(index.encode())


def test_index_hit_gives_the_same_inventory_as_a_full_parse(tmp_path: Path, reads: list[Path]) -> None:
    sources, issuers = a_site_set(tmp_path)
    full = build_inventory(sources, issuers)
    _, index = rebuilt(sources, issuers, CertIndex())
    reads.clear()
    again, index2 = rebuilt(sources, issuers, index)
    assert summary(again) == summary(full)
    # Only what cannot be known without reading: the shared chain file (once), the broken file and
    # the one whose issuer is unknown (neither has an entry).
    assert sorted(p.name for p in reads) == ["broken.pem", "orphan.pem", "other-chain.pem"]
    assert len(index2) == 12


def test_a_changed_file_is_parsed_again(tmp_path: Path, reads: list[Path]) -> None:
    sources, issuers = a_site_set(tmp_path)
    certs = tmp_path / "certs"
    _, index = rebuilt(sources, issuers, CertIndex())

    rewritten = certs / "bare-0.pem"
    rewritten.write_bytes(pem(CA.leaf("renewed.example").cert))  # same path, new content
    renamed_over = certs / "bare-1.pem"
    (tmp_path / "new.pem").write_bytes(pem(CA.leaf("renamed.example").cert))
    os.replace(tmp_path / "new.pem", renamed_over)
    touched = certs / "bare-2.pem"
    os.utime(touched)  # same content, new mtime
    in_place = certs / "bare-3.pem"
    st = in_place.stat()
    swapped = next(
        data for data in (pem(CA.leaf("bareX.example").cert) for _ in range(200)) if len(data) == st.st_size
    )
    in_place.write_bytes(swapped)  # same inode and size, mtime put back: only ctime tells
    os.utime(in_place, ns=(st.st_atime_ns, st.st_mtime_ns))

    reads.clear()
    inv, _ = rebuilt(sources, issuers, index)
    assert {rewritten, renamed_over, touched, in_place} <= set(reads)
    subjects = {t.subject for t in inv.targets.values()}
    assert {"CN=renewed.example", "CN=renamed.example", "CN=bare2.example", "CN=bareX.example"} <= subjects
    assert not {"CN=bare0.example", "CN=bare1.example", "CN=bare3.example"} & subjects
    assert summary(inv) == summary(build_inventory(sources, issuers))


def test_a_garbled_truncated_or_other_version_index_is_ignored(tmp_path: Path, reads: list[Path]) -> None:
    sources, issuers = a_site_set(tmp_path)
    full = build_inventory(sources, issuers)
    _, index = rebuilt(sources, issuers, CertIndex())
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    write_index(state, index)
    good = (state / INDEX_NAME).read_bytes()
    header, body = good.split(b"\n", 1)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    for bad in (
        good[: len(good) // 2],
        bytes(flipped),
        header.replace(b" 1 ", b" 2 ") + b"\n" + body,
        b"\x00" * 64,
        b"",
    ):
        (state / INDEX_NAME).write_bytes(bad)
        loaded = read_index(state)
        assert len(loaded) == 0
        reads.clear()
        inv = build_inventory(sources, issuers, index=loaded)
        assert summary(inv) == summary(full)
        assert len(reads) > 10  # every file parsed


def test_an_issuer_not_known_yet_means_parsing(tmp_path: Path, reads: list[Path]) -> None:
    # Fullchain files: the issuer is only in the files themselves. The first file of the build is
    # parsed (which proves the issuer), the others are not.
    certs = tmp_path / "certs"
    certs.mkdir()
    for i in range(5):
        (certs / f"site-{i}.pem").write_bytes(pem(CA.leaf(f"site{i}.example").cert, CA.cert))
    sources = [CertSource(path=str(certs / "*.pem"))]
    _, index = rebuilt(sources, [], CertIndex())
    reads.clear()
    inv = build_inventory(sources, [], index=index)
    assert [p.name for p in reads] == ["site-0.pem"]
    assert len(inv.targets) == 5
    assert not index.changed  # the parsed file said what its entry says: nothing to write

    # Leaves without a chain whose issuer is no longer given: parsed, and reported as without one.
    bare = tmp_path / "bare.pem"
    bare.write_bytes(pem(CA.leaf("bare.example").cert))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(pem(CA.cert))
    _, index = rebuilt([CertSource(path=str(bare))], [bundle], CertIndex())
    reads.clear()
    inv, _ = rebuilt([CertSource(path=str(bare))], [], index)
    assert reads == [bare]
    assert inv.targets == {} and "issuer not found" in inv.problems[0]


def test_a_shared_chain_file_is_read_once_per_build(tmp_path: Path, reads: list[Path]) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pem(CA.cert))
    sources = []
    for i in range(5):
        path = tmp_path / f"site-{i}.pem"
        path.write_bytes(pem(CA.leaf(f"site{i}.example").cert))
        sources.append(CertSource(path=str(path), chain_file=chain, ca_file=chain))
    inv = build_inventory(sources, [])
    assert len(inv.targets) == 5
    assert reads.count(chain) == 1
    assert inv.files[str(chain)] == chain.stat().st_mtime


def test_read_inventory_keeps_the_index_in_the_state_directory(tmp_path: Path, reads: list[Path]) -> None:
    sources, issuers = a_site_set(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = Config(state_dir=state, certs=(sources[0].path,), issuers=tuple(issuers))
    first, _ = read_inventory(config)
    path = state / INDEX_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = path.stat().st_mtime_ns
    reads.clear()
    second, _ = read_inventory(config)
    assert summary(second) == summary(first)
    assert sorted(p.name for p in reads) == ["broken.pem", "orphan.pem"]
    assert path.stat().st_mtime_ns == written  # nothing changed: not written again

    # A state directory that cannot hold the index costs speed only.
    not_a_directory = tmp_path / "not-a-directory"
    not_a_directory.write_text("")
    third, _ = read_inventory(Config(state_dir=not_a_directory, certs=config.certs, issuers=config.issuers))
    assert summary(third) == summary(first)
