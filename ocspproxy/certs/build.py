"""Building an Inventory from the certificate and issuer files, a step at a time, with the index of
unchanged files (ocspproxy/certs/index.py); and the issuers known before every file is read."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509

from ocspproxy.certs import files
from ocspproxy.certs.files import (
    Certs,
    NotACertificate,
    SharedFiles,
    load_certificates,
    ocsp_url,
    parse_certificates,
)
from ocspproxy.certs.index import CertIndex, LeafFacts
from ocspproxy.certs.inventory import CertSource, Inventory, Issuer, Orphan, Target
from ocspproxy.core.ocsp import CertKey, issuer_name_hash
from ocspproxy.steps import Steps, run_steps
from ocspproxy.store.atomic import Stamp

__all__ = ["build_inventory", "build_steps", "early_inventory"]


def build_inventory(
    sources: Iterable[CertSource],
    issuer_files: Iterable[Path],
    overrides: Mapping[Path, str] | None = None,
    *,
    index: CertIndex | None = None,
) -> Inventory:
    """Read every certificate and issuer file. Problems are collected, never raised.

    With an index, a certificate file unchanged since it was last parsed is only stat-ed, provided
    the issuer its entry names is already known (given, or parsed earlier in this build); the
    index is then updated with what this build saw.
    """
    return run_steps(build_steps(sources, issuer_files, overrides, index=index))


def build_steps(
    sources: Iterable[CertSource],
    issuer_files: Iterable[Path],
    overrides: Mapping[Path, str] | None = None,
    *,
    index: CertIndex | None = None,
    every: int = 128,
) -> Steps[Inventory]:
    """``build_inventory`` a step at a time: it yields after every few files, so that the event
    loop can answer requests in between (start-up), and returns the inventory."""
    inv, pool = _configured_issuers(issuer_files, overrides)
    shared = SharedFiles()
    for source in sources:
        globbed = glob.has_magic(source.path)
        paths = [source.path]
        if globbed:
            paths = []
            for n, name in enumerate(glob.iglob(source.path), 1):  # glob.glob, a step at a time
                paths.append(name)
                if n % (every * 8) == 0:
                    yield
            paths.sort()
            if not paths:
                inv.problems.append(f"certificate glob {source.path}: matches no file")
        for n, name in enumerate(paths, 1):
            readable = _add_certificate(inv, name, source, pool, shared, index)
            if globbed and name not in inv.seen:
                # The watcher lists glob matches as globbed: a file spelt otherwise, or unreadable.
                known = inv.seen.get(str(Path(name))) if readable else None
                inv.seen[name] = known or _stat_or_none(name)
            if n % every == 0:
                yield
        yield
    return inv


def _configured_issuers(
    issuer_files: Iterable[Path], overrides: Mapping[Path, str] | None
) -> tuple[Inventory, list[x509.Certificate]]:
    """A new inventory holding the configured issuers, and the certificates of the issuer files."""
    inv = Inventory()
    pool: list[x509.Certificate] = []
    for path in issuer_files:
        try:
            pool.extend(load_certificates(path))
        except NotACertificate as exc:
            inv.problems.append(f"issuer file {path}: {exc.what}; --issuers wants PEM CA certificates")
        except (OSError, ValueError) as exc:
            inv.problems.append(f"issuer file {path}: unreadable ({exc})")
    for path, url in (overrides or {}).items():
        try:
            for cert in load_certificates(path):
                inv.add_issuer(Issuer.of(cert, url))
        except NotACertificate as exc:
            wanted = "[[issuer]] certificate wants the issuing CA's PEM certificate"
            inv.problems.append(f"issuer file {path}: {exc.what}; {wanted}")
        except (OSError, ValueError) as exc:
            inv.problems.append(f"issuer file {path}: unreadable ({exc})")
    for cert in pool:
        inv.add_issuer(Issuer.of(cert))
    return inv, pool


# At most this many certificate files are parsed to prove issuers before the listener opens.
_EARLY_PARSES = 64


def early_inventory(
    sources: Iterable[CertSource],
    issuer_files: Iterable[Path],
    overrides: Mapping[Path, str] | None,
    index: CertIndex,
) -> Inventory:
    """The issuers known without reading every certificate file: the configured ones, and each
    issuer the index names, proven again by parsing one of its certificates that is still
    configured (a file the index lists that a source names or its glob matches). A file is
    parsed as ``build_inventory`` parses it, so each issuer found here is one that a build over
    the same files finds too. Its targets are those few certificates only; its problems are
    not reported (the full build reports them).
    """
    inv, pool = _configured_issuers(issuer_files, overrides)
    if all(("sha1", key_hash) in inv.issuers for key_hash, _ in index.issuers()):
        return inv  # (the common case: --issuers names them all; no entry need be looked at)
    shared = SharedFiles()
    plain: dict[str, CertSource] = {}
    globs: list[tuple[list[str], CertSource]] = []
    for source in sources:
        where = _absolute(source.path)
        if glob.has_magic(source.path):
            globs.append((where.split("/"), source))
        else:
            plain.setdefault(where, source)
    parses = 0
    for (key_hash, _), path in index.issuer_paths():
        if ("sha1", key_hash) in inv.issuers:
            continue
        found = plain.get(path)
        if found is None:
            parts = path.split("/")
            found = next((s for pattern, s in globs if _glob_matches(parts, pattern)), None)
        if found is None:
            continue
        if parses == _EARLY_PARSES:
            break
        parses += 1
        _add_certificate(inv, path, found, pool, shared, None)
    return inv


def _absolute(name: str) -> str:
    """The path a certificate file is indexed by (see ``_add_certificate``)."""
    return name if name.startswith("/") else os.path.abspath(name)


def _glob_matches(parts: list[str], pattern: list[str]) -> bool:
    """Whether glob.glob(pattern) would list the path split into parts (both split at "/"):
    component by component, a wildcard matching no leading dot unless the pattern has one."""
    if len(parts) != len(pattern):
        return False
    for part, pat in zip(parts, pattern, strict=True):
        if not glob.has_magic(pat):
            if part != pat:
                return False
        elif (part.startswith(".") and not pat.startswith(".")) or not fnmatch.fnmatchcase(part, pat):
            return False
    return True


def _add_certificate(
    inv: Inventory,
    name: str,
    source: CertSource,
    pool: list[x509.Certificate],
    shared: SharedFiles,
    index: CertIndex | None,
) -> bool:
    """Add the certificate in file name; False when it could not be read."""
    path = name if _normalised(name) else str(Path(name))  # a Path per file costs 10 µs
    where = _absolute(name)
    try:
        st = os.stat(name)
        stamp = Stamp.of(st)
        facts = index.get(where, stamp) if index is not None else None
        certs: list[x509.Certificate] = []
        if facts is None:
            data, st = files.read_certificate_file(path)
            stamp = Stamp.of(st)
            certs = parse_certificates(data, path)
        _saw(inv, path, st)
        extra: list[Certs] = []
        for chain in (source.chain_file, source.ca_file):
            if chain is not None:
                found, chain_st = shared.file(chain)
                _saw(inv, str(chain), chain_st)
                extra.append(found)
        if source.ca_path is not None:
            extra.append(shared.directory(source.ca_path))
        issuer = _known_issuer(inv, facts, extra) if facts is not None else None
        if issuer is None and not certs:
            # Issuers never come from the index: one not known yet means parsing the file.
            data, st = files.read_certificate_file(path)
            stamp = Stamp.of(st)
            certs = parse_certificates(data, path)
            _saw(inv, path, st)
    except (OSError, ValueError) as exc:
        problem = source.problem(path, exc) if isinstance(exc, NotACertificate) else None
        inv.problems.append(problem or f"certificate {path}: unreadable ({exc})")
        what = exc.what if isinstance(exc, NotACertificate) else f"unreadable ({exc})"
        inv.orphans.append(Orphan(path=path, subject=None, reason=what))
        inv.unreadable.add(path)
        return False
    if issuer is None:
        facts, issuer = _parse_leaf(inv, path, certs, extra, pool)
    if facts is None or issuer is None:
        return True  # issuer not found: reported
    if facts.url is None and issuer.ocsp_url is None:
        inv.problems.append(
            f"certificate {path} ({facts.subject}): no OCSP URL in the certificate and none configured "
            f"for its issuer; it cannot be stapled"
        )
    key = CertKey(alg="sha1", issuer_key_hash=issuer.key_hashes["sha1"], serial=facts.serial)
    inv.add_target(
        Target(key=key, issuer=issuer, url=issuer.ocsp_url or facts.url, path=path, subject=facts.subject)
    )
    if index is not None:
        index.put(where, stamp, facts)
    return True


def _stat_or_none(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _saw(inv: Inventory, path: str, st: os.stat_result) -> None:
    inv.files[path] = st.st_mtime
    inv.seen[path] = (st.st_mtime_ns, st.st_size)  # spelt as str(Path(...)): as the watcher spells it


def _normalised(name: str) -> bool:
    """True when str(Path(name)) == name: no empty or "." component, no trailing slash."""
    return not (
        "//" in name
        or "/./" in name
        or name.startswith("./")
        or name.endswith(("/", "/."))
        or name in ("", ".")
    )


def _parse_leaf(
    inv: Inventory,
    path: str,
    certs: list[x509.Certificate],
    extra: list[Certs],
    pool: list[x509.Certificate],
) -> tuple[LeafFacts | None, Issuer | None]:
    """The leaf's facts and its issuer, proven by signature; (None, None) when not found (reported)."""
    leaf = certs[0]
    subject = leaf.subject.rfc4514_string()
    issuer_cert = inv.find_issuer(leaf, [*certs[1:], *(c for part in extra for c in part.certs), *pool])
    if issuer_cert is None:
        inv.problems.append(f"certificate {path} ({subject}): issuer not found; give it with --issuers")
        inv.orphans.append(Orphan(path=path, subject=subject, reason="issuer not found"))
        return None, None
    issuer = inv.issuer_of_cert(issuer_cert)
    facts = LeafFacts(
        leaf.serial_number,
        issuer.key_hashes["sha1"],
        issuer_name_hash(issuer_cert, "sha1"),
        ocsp_url(leaf),
        subject,
    )
    return facts, issuer


def _known_issuer(inv: Inventory, facts: LeafFacts, extra: list[Certs]) -> Issuer | None:
    """The issuer an index entry names, if this build already knows it: given (--issuers,
    [[issuer]]), proven for a file parsed earlier, or in this source's chain and CA files. Known
    issuers go by key hash, as ``Inventory.add_issuer`` keeps them."""
    issuer = inv.issuers.get(("sha1", facts.issuer_key_hash))
    if issuer is not None:
        return issuer
    for part in extra:
        cert = part.by_hashes.get((facts.issuer_key_hash, facts.issuer_name_hash))
        if cert is not None:
            return inv.issuer_of_cert(cert)
    return None
