"""The inside: check a bundle entry by entry against this ocspproxy's own issuers, then hand what
passed to the service.

Nothing in the bundle is trusted — neither the issuer it was fetched against nor its manifest's
fields. Each response is validated in full (``Rules``: signer, signature, exactly the CertID of its
entry, times) against the issuer the inside's configuration knows for that CertID; it must be for a
certificate the inside keeps stapled; then the accept policy (newer only; revoked beats good;
unknown never replaces good) against what the state directory holds, what is already waiting for
the service, and earlier entries of the same bundle. A tampered, forged, expired, older, foreign or
swapped entry is reported with its reason and skipped.

What passed is written as one new bundle into the state directory's spool (``incoming/``), whole
or not at all (temporary file, fsync, rename), owned like the state directory. The service is the
only writer of staples: it takes each spooled bundle through the door (``Origin.BUNDLE``: validated
again, accepted, persisted, served) — within seconds while it runs, else at its next start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ocspproxy.bundle.format import (
    BUNDLE,
    BundleError,
    bundle_entry,
    key_from_fields,
    open_archive,
    response_name,
    write_archive,
)
from ocspproxy.certs.catalog import Catalog
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import Verdict, accept
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import ExpiredResponse, InvalidResponse, Rules
from ocspproxy.store.atomic import read_regular
from ocspproxy.store.directory import SPOOL_NAME

__all__ = [
    "IMPORTED",
    "SKIPPED",
    "UNCHANGED",
    "Checked",
    "ImportReport",
    "check_bundle",
    "hand_over",
    "pending",
]

IMPORTED = "imported"  # valid, and it replaces (or is the first) staple for its certificate
UNCHANGED = "unchanged"  # valid, and exactly what is held already
SKIPPED = "skipped"


@dataclass(slots=True)
class Checked:
    """One entry of the bundle, as checked."""

    name: str  # its CertID (hash-issuer key hash-serial), or where it is in the manifest
    subject: str
    result: str
    reason: str
    staple: Staple | None = None
    name_hash: bytes = b""


@dataclass
class ImportReport:
    path: Path
    version: int
    created: datetime | None
    entries: list[Checked] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)  # the archive's own problems (truncated ...)

    def count(self, result: str) -> int:
        return sum(1 for e in self.entries if e.result == result)

    @property
    def accepted(self) -> list[Checked]:
        return [e for e in self.entries if e.result == IMPORTED]

    def earliest_next_update(self) -> datetime | None:
        """The earliest nextUpdate among the staples this bundle leaves served (imported or
        already held): when media must have been carried in again at the latest."""
        times = [e.staple.next_update for e in self.entries if e.staple is not None and e.result != SKIPPED]
        return min(times, default=None)


def check_bundle(
    path: Path,
    *,
    catalog: Catalog,
    rules: Rules,
    now: datetime,
    current: Callable[[CertKey], Staple | None],
) -> ImportReport:
    """Check every entry of the bundle at path. ``current(key)`` is what the inside holds for a key
    (``held`` reads it from a state directory). Raises BundleError when the file is no bundle."""
    with open_archive(path, BUNDLE) as archive:
        report = ImportReport(path, archive.version, archive.created)
        by_file: dict[str, int] = {}
        for i, fields in enumerate(archive.entries):
            name, subject = f"entry {i}", str(fields.get("subject", ""))
            report.entries.append(Checked(name, subject, SKIPPED, "its response is missing from the bundle"))
            try:
                key, _ = key_from_fields(fields.get("cert_id"))
            except ValueError as exc:
                report.entries[i].reason = f"manifest entry unreadable: {exc}"
                continue
            report.entries[i].name = str(key)
            response = str(fields.get("response"))
            if response in by_file:
                report.entries[i].reason = f"names the same file as entry {by_file[response]}"
                continue
            by_file[response] = i
        best: dict[CertKey, int] = {}  # key -> the entry of this bundle that would be imported
        for member in archive.members():
            if member.data is None:
                report.damage.append(f"{member.name or path}: {member.problem}")
                continue
            i = by_file.pop(member.name, -1)
            if i < 0:
                continue  # not named by the manifest: nothing to check it against
            entry = report.entries[i]
            _check(entry, archive.entries[i], member.name, member.data, catalog, rules, now)
            if entry.staple is not None:
                _decide(report, best, i, current(entry.staple.key), now)
        if report.damage:
            for i in by_file.values():
                report.entries[i].reason += " (the archive is damaged or truncated)"
    return report


def _check(
    entry: Checked,
    fields: dict[str, object],
    file: str,
    der: bytes,
    catalog: Catalog,
    rules: Rules,
    now: datetime,
) -> None:
    """Validate one response against the inside's issuer for the CertID its entry names."""
    key, name_hash = key_from_fields(fields.get("cert_id"))  # read once before: cannot fail now
    issuer = catalog.issuer_for_key(key)
    if issuer is None or issuer.name_hashes.get(key.alg) != name_hash:
        entry.reason = "foreign: its issuer is not one this ocspproxy knows"
        return
    if not catalog.configured(catalog.inventory.sha1_key(key, issuer)):
        entry.reason = "foreign: not a certificate this ocspproxy keeps stapled"
        return
    if file != response_name(key):
        entry.reason = f"its file {file} is named for another certificate"
        return
    try:
        staple = rules.validate(der, key=key, issuer=issuer.cert, now=now)
    except ExpiredResponse as exc:
        entry.reason = str(exc)
        return
    except InvalidResponse as exc:
        entry.reason = f"invalid: {exc}"
        return
    entry.result, entry.reason, entry.staple, entry.name_hash = IMPORTED, "valid", staple, name_hash


def _decide(
    report: ImportReport, best: dict[CertKey, int], i: int, held: Staple | None, now: datetime
) -> None:
    """The accept policy against what is held and the bundle's earlier entry for the same key."""
    entry = report.entries[i]
    assert entry.staple is not None
    key = entry.staple.key
    earlier = best.get(key)
    rival = report.entries[earlier].staple if earlier is not None else held
    decision = accept(rival, entry.staple, now)
    if decision.verdict is Verdict.SAME:
        entry.result, entry.reason = (
            (SKIPPED, "the same response as another entry")
            if earlier is not None
            else (UNCHANGED, "already held")
        )
        return
    if not decision.stores:
        what = "than another entry for it in this bundle" if earlier is not None else "than the one held"
        entry.result, entry.reason = SKIPPED, decision.reason.replace("than the stored response", what)
        return
    if earlier is not None:
        report.entries[earlier].result = SKIPPED
        report.entries[earlier].reason = f"{report.entries[earlier].name}: a later entry for it replaces it"
    entry.reason = "none held before" if decision.reason == "nothing servable stored" else decision.reason
    best[key] = i


def held(
    state_dir: Path, rules: Rules, now: datetime, catalog: Catalog
) -> Callable[[CertKey], Staple | None]:
    """What the state directory holds for a key, newest of its staple file and what waits in the
    spool: read only, never through a link. The service is the only writer, and decides again."""
    waiting = pending(state_dir, rules, now, catalog)

    def current(key: CertKey) -> Staple | None:
        stored = None
        issuer = catalog.issuer_for_key(key)
        if issuer is not None:
            try:
                der, _ = read_regular(state_dir / f"{key}.der", limit=1 << 20)
                stored = rules.validate(der, key=key, issuer=issuer.cert, now=now, check_signature=False)
            except (OSError, ValueError, InvalidResponse):
                stored = None
        spooled = waiting.get(key)
        if stored is None or (spooled is not None and accept(stored, spooled, now).stores):
            return spooled
        return stored

    return current


def pending(state_dir: Path, rules: Rules, now: datetime, catalog: Catalog) -> dict[CertKey, Staple]:
    """The staples waiting in the spool for the service (their signatures checked again there)."""
    out: dict[CertKey, Staple] = {}
    for path in spooled(state_dir / SPOOL_NAME):
        try:
            report = check_bundle(path, catalog=catalog, rules=rules, now=now, current=out.get)
        except BundleError:
            continue
        for entry in report.accepted:
            assert entry.staple is not None
            out[entry.staple.key] = entry.staple
    return out


def spooled(spool: Path) -> list[Path]:
    """The bundles waiting in a spool directory, oldest first (their names start with the time)."""
    try:
        names = sorted(n for n in os.listdir(spool) if n.endswith(".bundle") and not n.startswith("."))
    except OSError:
        return []
    return [spool / n for n in names]


def hand_over(state_dir: Path, entries: list[Checked], created: datetime) -> Path | None:
    """Write the accepted entries as one bundle into the spool, whole or not at all, owned by the
    state directory's owner (the service's user). None when there is nothing to hand over. Raises
    OSError."""
    accepted = [e for e in entries if e.result == IMPORTED and e.staple is not None]
    if not accepted:
        return None
    st = _state_dir(state_dir)
    spool = state_dir / SPOOL_NAME
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None
    try:
        os.mkdir(spool, 0o700)
        if owner is not None:
            os.chown(spool, *owner)
    except FileExistsError:
        pass
    manifest, files = [], {}
    for e in accepted:
        assert e.staple is not None
        manifest.append(bundle_entry(e.staple, e.name_hash, subject=e.subject, source="bundle import"))
        files[response_name(e.staple.key)] = e.staple.der
    name = f"{created.strftime('%Y%m%dT%H%M%S.%fZ')}-{os.getpid()}.bundle"
    path = spool / name
    write_archive(path, BUNDLE, created, manifest, files, mode=0o600, owner=owner)
    return path


def _state_dir(state_dir: Path) -> os.stat_result:
    """The state directory, made (0700) when it does not exist yet: the service takes it over."""
    try:
        return os.stat(state_dir)
    except FileNotFoundError:
        state_dir.mkdir(mode=0o700, parents=True)
        return os.stat(state_dir)
