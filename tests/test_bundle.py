"""Bundles: the format (round trip, versions, damage), the want file, fetching on the connected
side, and the importer's checks — every tampered kind refused entry by entry, with its reason."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from pathlib import Path

import pytest

from ocspproxy.bundle.fetch import fetch_want, write_bundle
from ocspproxy.bundle.format import (
    BUNDLE,
    VERSION,
    WANT,
    BundleError,
    bundle_entry,
    open_archive,
    write_archive,
)
from ocspproxy.bundle.importer import IMPORTED, SKIPPED, UNCHANGED, check_bundle
from ocspproxy.bundle.want import read_want, wanted, write_want
from ocspproxy.certs.catalog import Catalog
from ocspproxy.certs.inventory import Inventory, Issuer, Target
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import Rules
from ocspproxy.upstream.http import Fetcher, UpstreamSettings
from tests.pki import TestCA, now
from tests.upstream import FakeUpstream, Reply

T0 = now()


def inventory_of(ca: TestCA, serials: list[int], url: str | None = "http://ocsp.test/") -> Inventory:
    inventory = Inventory()
    issuer = inventory.add_issuer(Issuer.of(ca.cert))
    for serial in serials:
        key = ca.cert_id(serial).key
        inventory.add_target(
            Target(key=key, issuer=issuer, url=url, path=f"/c/{serial:x}.pem", subject=f"CN=s{serial}")
        )
    return inventory


def staple_of(ca: TestCA, serial: int, **kwargs: object) -> Staple:
    der = ca.respond(serial, **kwargs)  # type: ignore[arg-type]
    return Rules().validate(der, key=ca.cert_id(serial).key, issuer=ca.cert, now=now())


def make_bundle(path: Path, ca: TestCA, items: list[tuple[int, bytes]], *, version: int = VERSION) -> Path:
    """A bundle whose manifest names each serial's CertID and whose file holds the given bytes."""
    entries, files = [], {}
    for serial, der in items:
        key = ca.cert_id(serial).key
        name = f"responses/{key}.der"
        entries.append(
            {
                "cert_id": {
                    "hash": "sha1",
                    "issuer_name_hash": ca.cert_id(serial).issuer_name_hash.hex(),
                    "issuer_key_hash": key.issuer_key_hash.hex(),
                    "serial": f"{serial:x}",
                },
                "subject": f"CN=s{serial}",
                "response": name,
            }
        )
        files[name] = der
    write_archive(path, BUNDLE, now(), entries, files)
    if version != VERSION:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        manifest = json.loads(members["manifest.json"])
        manifest["version"] = version
        members["manifest.json"] = json.dumps(manifest).encode()
        with tarfile.open(path, "w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


# --- the format ------------------------------------------------------------------------------------


def test_a_want_file_round_trips_and_standard_tools_read_it(tmp_path: Path) -> None:
    ca = TestCA()
    inventory = inventory_of(ca, [1, 2, 3])
    entries = wanted(inventory)
    write_want(tmp_path / "want.tar", entries, T0)
    with tarfile.open(tmp_path / "want.tar") as tar:  # what `tar tf` lists
        names = tar.getnames()
    assert names[0] == "manifest.json" and sum(n.startswith("requests/") for n in names) == 3
    assert sum(n.startswith("issuers/") for n in names) == 1
    back = read_want(tmp_path / "want.tar")
    assert [(w.key, w.request, w.url, w.issuer) for w in back.entries] == [
        (w.key, w.request, w.url, w.issuer) for w in entries
    ]
    assert back.problems == [] and back.created == T0.replace(microsecond=0)


def test_a_newer_format_version_is_refused_clearly_and_an_older_one_read(tmp_path: Path) -> None:
    ca = TestCA()
    newer = make_bundle(tmp_path / "newer.tar", ca, [(1, ca.respond(1))], version=VERSION + 1)
    with pytest.raises(
        BundleError, match=rf"format version {VERSION + 1} is newer than this ocspproxy reads"
    ):
        open_archive(newer, BUNDLE)
    with open_archive(
        make_bundle(tmp_path / "v1.tar", ca, [(1, ca.respond(1))], version=1), BUNDLE
    ) as archive:
        assert archive.version == 1 and len(archive.entries) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a tar at all", "not a readable tar archive"),
        (None, "is a want file, not a bundle"),
        (b"", "no manifest.json at the start"),
    ],
)
def test_what_is_no_bundle_is_refused_in_one_line(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "file.tar"
    if content is None:
        write_want(path, wanted(inventory_of(TestCA(), [1])), T0)
    elif content == b"":
        with tarfile.open(path, "w") as tar:
            tar.addfile(tarfile.TarInfo("other.txt"), io.BytesIO(b""))
    else:
        path.write_bytes(content)
    with pytest.raises(BundleError, match=message):
        open_archive(path, BUNDLE)


# --- fetch -------------------------------------------------------------------------------------------


async def test_fetch_reports_each_certificate_and_writes_what_is_usable(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    good, revoked, unknown, broken, forged = (ca.leaf().serial for _ in range(5))
    replies = {
        good: Reply(ca.respond(good)),
        revoked: Reply(ca.respond(revoked, status="revoked")),
        unknown: Reply(ca.respond(unknown, status="unknown")),
        broken: Reply(status=500),
        forged: Reply(ca.respond(forged, signer="rogue")),
    }
    upstream.behaviour = lambda serial: replies[serial]
    write_want(tmp_path / "want.tar", wanted(inventory_of(ca, list(replies), url=upstream.url)), T0)
    want = read_want(tmp_path / "want.tar")
    fetcher = Fetcher(UpstreamSettings())
    await fetcher.start()
    try:
        got = await fetch_want(want, fetcher=fetcher, rules=Rules(), clock=now)
    finally:
        await fetcher.close()
    results = {g.item.key.serial: (g.result, g.reason) for g in got}
    assert results[good] == ("good", "valid") and results[revoked][0] == "revoked"
    assert results[unknown][0] == "unknown"
    assert results[broken] == ("error", "HTTP 500")
    assert results[forged][0] == "error" and "invalid answer" in results[forged][1]
    assert write_bundle(tmp_path / "bundle.tar", got, now()) == 3
    with open_archive(tmp_path / "bundle.tar", BUNDLE) as archive:
        statuses = sorted(e["status"] for e in archive.entries)
        assert statuses == ["good", "revoked", "unknown"]
        assert {m.name for m in archive.members()} == {e["response"] for e in archive.entries}


async def test_fetch_via_posts_the_same_requests_to_one_responder(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    serials = [ca.leaf().serial for _ in range(3)]
    write_want(tmp_path / "want.tar", wanted(inventory_of(ca, serials, url=None)), T0)
    want = read_want(tmp_path / "want.tar")
    fetcher = Fetcher(UpstreamSettings())
    await fetcher.start()
    try:
        nowhere = await fetch_want(want, fetcher=fetcher, rules=Rules(), clock=now)
        via = await fetch_want(want, fetcher=fetcher, rules=Rules(), clock=now, via=upstream.url)
    finally:
        await fetcher.close()
    assert {g.result for g in nowhere} == {"error"} and "--via" in nowhere[0].reason
    assert {g.result for g in via} == {"good"} and sorted(upstream.requests) == sorted(serials)


# --- import: every entry checked against the inside's own issuers ----------------------------------

SERIAL = 0xB0D1E


def tampered(ca: TestCA) -> dict[str, tuple[int, bytes]]:
    """Each kind of bad entry, for SERIAL (configured) unless it says otherwise."""
    good = bytearray(ca.respond(SERIAL, this_update=T0))
    good[-10] ^= 0x01  # a flipped byte in the signature
    other = TestCA()
    return {
        "flipped byte": (SERIAL, bytes(good)),
        "swapped": (SERIAL, ca.respond(SERIAL + 1, this_update=T0)),
        "rogue key": (SERIAL, ca.respond(SERIAL, signer="rogue", by_name=True, this_update=T0)),
        "expired": (SERIAL, ca.respond(SERIAL, this_update=T0 - dt.timedelta(hours=3))),
        "older": (SERIAL, ca.respond(SERIAL, this_update=T0 - dt.timedelta(minutes=30))),
        "foreign issuer": (SERIAL, other.respond(SERIAL, this_update=T0)),
        "not configured": (SERIAL + 7, ca.respond(SERIAL + 7, this_update=T0)),
    }


REASONS = {
    "flipped byte": "invalid: ",
    "swapped": "invalid: no SingleResponse for the requested certificate",
    "rogue key": "invalid: ",
    "expired": "expired: nextUpdate",
    "older": "older than the one held",
    "foreign issuer": "invalid: no SingleResponse",
    "not configured": "foreign: not a certificate this ocspproxy keeps stapled",
}


@pytest.mark.parametrize("kind", REASONS)
def test_each_tampered_entry_is_skipped_with_its_reason_and_the_good_ones_imported(
    tmp_path: Path, kind: str
) -> None:
    ca = TestCA()
    catalog = Catalog(inventory_of(ca, [SERIAL, SERIAL + 1, SERIAL + 2]))
    held = staple_of(ca, SERIAL, this_update=T0 - dt.timedelta(minutes=10))
    fine = ca.respond(SERIAL + 2, this_update=T0)
    bad = tampered(ca)[kind]
    path = make_bundle(tmp_path / "b.tar", ca, [bad, (SERIAL + 2, fine)])
    report = check_bundle(path, catalog=catalog, rules=Rules(), now=now(), current={held.key: held}.get)
    first, second = report.entries
    assert first.result == SKIPPED and first.reason.startswith(REASONS[kind]), first.reason
    assert first.staple is None or kind == "older"
    assert second.result == IMPORTED and second.staple is not None and second.staple.der == fine


def test_an_entry_from_another_ca_is_foreign(tmp_path: Path) -> None:
    ca, other = TestCA(), TestCA()
    catalog = Catalog(inventory_of(ca, [SERIAL]))
    report = check_bundle(
        make_bundle(tmp_path / "b.tar", other, [(SERIAL, other.respond(SERIAL))]),
        catalog=catalog,
        rules=Rules(),
        now=now(),
        current=lambda key: None,
    )
    assert report.entries[0].reason == "foreign: its issuer is not one this ocspproxy knows"


def test_revoked_beats_good_and_identical_is_unchanged(tmp_path: Path) -> None:
    ca = TestCA()
    catalog = Catalog(inventory_of(ca, [SERIAL, SERIAL + 1]))
    good = staple_of(ca, SERIAL, this_update=T0)
    held: dict[CertKey, Staple] = {good.key: good}

    def check(name: str, items: list[tuple[int, bytes]]) -> list[tuple[str, str]]:
        report = check_bundle(
            make_bundle(tmp_path / name, ca, items),
            catalog=catalog,
            rules=Rules(),
            now=now(),
            current=held.get,
        )
        return [(e.result, e.reason) for e in report.entries]

    revoked = ca.respond(SERIAL, status="revoked", this_update=T0)
    assert check("revoked.tar", [(SERIAL, revoked)]) == [(IMPORTED, "certificate revoked")]
    assert check("same.tar", [(SERIAL, good.der)]) == [(UNCHANGED, "already held")]
    unknown = ca.respond(SERIAL, status="unknown", this_update=T0 + dt.timedelta(seconds=5))
    assert check("unknown.tar", [(SERIAL, unknown)]) == [(SKIPPED, "unknown does not replace good")]
    twice = check("twice.tar", [(SERIAL, revoked), (SERIAL, revoked)])
    assert twice[1] == (SKIPPED, "names the same file as entry 0")


def test_a_truncated_bundle_keeps_the_entries_read_whole_and_reports_the_rest(tmp_path: Path) -> None:
    ca = TestCA()
    serials = list(range(SERIAL, SERIAL + 6))
    catalog = Catalog(inventory_of(ca, serials))
    path = make_bundle(tmp_path / "b.tar", ca, [(s, ca.respond(s)) for s in serials])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = check_bundle(path, catalog=catalog, rules=Rules(), now=now(), current=lambda key: None)
    imported = [e for e in report.entries if e.result == IMPORTED]
    skipped = [e for e in report.entries if e.result == SKIPPED]
    assert imported and skipped and len(imported) + len(skipped) == len(serials)
    assert report.damage, "the damage itself is reported"
    assert all("missing from the bundle (the archive is damaged or truncated)" in e.reason for e in skipped)


def test_a_bundle_entry_from_fetch_matches_the_manifest_fields(tmp_path: Path) -> None:
    ca = TestCA()
    staple = staple_of(ca, SERIAL)
    entry = bundle_entry(
        staple, ca.cert_id(SERIAL).issuer_name_hash, subject="CN=x", source="http://ocsp.test/"
    )
    assert entry["status"] == "good" and entry["response"] == f"responses/{staple.key}.der"
    assert (
        entry["cert_id"]["serial"] == f"{SERIAL:x}" and entry["this_update"] == staple.this_update.isoformat()
    )
    assert WANT != BUNDLE
