"""What to keep stapled: certificate files, their issuers, OCSP URLs and CertIDs.

Every upstream URL comes from here (a certificate's AIA extension or the configuration), never from a
request.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import AuthorityInformationAccessOID

from ocspproxy.certindex import CertIndex, LeafFacts
from ocspproxy.ocsp import HASH_ALGORITHMS, CertId, CertKey, issuer_key_hash, issuer_name_hash
from ocspproxy.steps import Steps, run_steps
from ocspproxy.store import Stamp

__all__ = [
    "CertSource",
    "Inventory",
    "Issuer",
    "NotACertificate",
    "Target",
    "build_inventory",
    "build_steps",
    "ca_path_certificates",
    "early_inventory",
    "find_issuer",
    "load_certificates",
    "ocsp_url",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CertSource:
    """A certificate file to keep stapled, with where mod_ssl would look for its issuer."""

    path: str  # a path or a glob
    chain_file: Path | None = None
    ca_file: Path | None = None
    ca_path: Path | None = None
    named_by: str = "--cert"  # or "SSLCertificateFile": what a problem with the file points at

    def problem(self, path: str, exc: NotACertificate) -> str:
        """The inventory's report of a file of this source that holds no certificate."""
        if exc.path != path:
            directive = (
                "SSLCertificateChainFile" if exc.path == str(self.chain_file) else "SSLCACertificateFile"
            )
            wanted = "it should hold PEM CA certificates"
            return f"certificate {path}: its {directive} {exc.path} {exc.what}; {wanted}"
        wanted = "the PEM certificate (leaf first, then its chain)"
        if self.named_by == "--cert":
            wanted += " as in SSLCertificateFile"
        return f"certificate {path}: {exc.what}; {self.named_by} wants {wanted}"


@dataclass(frozen=True, eq=False, kw_only=True)
class Issuer:
    cert: x509.Certificate
    name: str
    ocsp_url: str | None = None  # configured override for every certificate it issued
    name_hashes: dict[str, bytes] = field(default_factory=dict)
    key_hashes: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, cert: x509.Certificate, ocsp_url: str | None = None) -> Issuer:
        return cls(
            cert=cert,
            name=cert.subject.rfc4514_string(),
            ocsp_url=ocsp_url,
            name_hashes={alg: issuer_name_hash(cert, alg) for alg in HASH_ALGORITHMS},
            key_hashes={alg: issuer_key_hash(cert, alg) for alg in HASH_ALGORITHMS},
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A certificate whose staple is kept warm."""

    key: CertKey
    issuer: Issuer
    url: str | None
    path: str  # as configured or globbed, normalised like str(Path(...))
    subject: str


@dataclass(slots=True)
class Inventory:
    issuers: dict[tuple[str, bytes], Issuer] = field(default_factory=dict)
    targets: dict[CertKey, Target] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: dict[str, float] = field(default_factory=dict)  # certificate files read, with mtimes
    # (mtime_ns, size) of those files and of every glob match as this build saw them ((-1, -1): no
    # stat), where the watcher starts comparing: a change made since is noticed.
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)  # configured certificate files that failed
    # (issuer name, authority key id) -> issuer already proven by a signature: one check per CA,
    # not one per certificate (100,000 signature checks would dominate start-up).
    _proven: dict[tuple[bytes, bytes], x509.Certificate] = field(default_factory=dict, repr=False)
    _by_cert: dict[x509.Certificate, Issuer] = field(default_factory=dict, repr=False)

    def issuer_of_cert(self, cert: x509.Certificate) -> Issuer:
        issuer = self._by_cert.get(cert)
        if issuer is None:
            issuer = self._by_cert[cert] = self.add_issuer(Issuer.of(cert))
        return issuer

    def find_issuer(
        self, leaf: x509.Certificate, candidates: list[x509.Certificate]
    ) -> x509.Certificate | None:
        aki = _authority_key_id(leaf)
        memo = (leaf.issuer.public_bytes(), aki) if aki else None
        if memo is not None and memo in self._proven:
            return self._proven[memo]
        found = find_issuer(leaf, candidates)
        if found is not None and memo is not None:
            self._proven[memo] = found
        return found

    def add_issuer(self, issuer: Issuer) -> Issuer:
        known = self.issuers.get(("sha1", issuer.key_hashes["sha1"]))
        if known is not None and (known.ocsp_url or not issuer.ocsp_url):
            return known
        for alg, key_hash in issuer.key_hashes.items():
            self.issuers[(alg, key_hash)] = issuer
        return issuer

    def issuer_for(self, cert_id: CertId) -> Issuer | None:
        issuer = self.issuers.get((cert_id.key.alg, cert_id.key.issuer_key_hash))
        if issuer is None or issuer.name_hashes[cert_id.key.alg] != cert_id.issuer_name_hash:
            return None
        return issuer

    def issuer_for_key(self, key: CertKey) -> Issuer | None:
        return self.issuers.get((key.alg, key.issuer_key_hash))

    def upstream_for(self, key: CertKey, issuer: Issuer) -> str | None:
        """The configured override, else the certificate's AIA URL, else the issuer's other leaves' URL."""
        if issuer.ocsp_url:
            return issuer.ocsp_url
        target = self.targets.get(self.sha1_key(key, issuer))
        if target is not None:
            return target.url
        for other in self.targets.values():
            if other.issuer is issuer and other.url:
                return other.url
        return None

    @staticmethod
    def sha1_key(key: CertKey, issuer: Issuer) -> CertKey:
        return CertKey(alg="sha1", issuer_key_hash=issuer.key_hashes["sha1"], serial=key.serial)


class NotACertificate(ValueError):
    """A file that holds no certificate. ``what`` says what it holds instead, in words an operator
    knows ("holds a private key, not a certificate"): cryptography's parser text means nothing to
    them."""

    def __init__(self, path: str | Path, what: str, *, private_key: bool = False) -> None:
        super().__init__(f"{path}: {what}")
        self.path = str(path)
        self.what = what
        self.private_key = private_key


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")


def _not_a_certificate(path: str | Path, data: bytes) -> NotACertificate:
    """What a file that parses as no certificate holds."""
    if not data.strip():
        return NotACertificate(path, "is empty")
    labels = list(dict.fromkeys(m.decode() for m in _PEM_LABEL.findall(data)))
    if not labels:
        return NotACertificate(path, "is neither a PEM nor a DER certificate")
    if "CERTIFICATE" in labels:
        return NotACertificate(path, "holds a damaged PEM certificate (its content does not decode)")
    if any(label.endswith("PRIVATE KEY") for label in labels):
        return NotACertificate(path, "holds a private key, not a certificate", private_key=True)
    if any(label.endswith("CERTIFICATE REQUEST") for label in labels):
        return NotACertificate(path, "holds a certificate signing request (CSR), not a certificate")
    blocks = "block" if len(labels) == 1 else "blocks"
    return NotACertificate(path, f"holds a PEM {', '.join(labels)} {blocks}, not a certificate")


def load_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates in a PEM (every CERTIFICATE block) or DER file. Raises OSError, or
    NotACertificate."""
    return _parse_certificates(path.read_bytes(), path)


def _parse_certificates(data: bytes, path: str | Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        pass
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise _not_a_certificate(path, data) from None


def _read_with_stat(path: str | Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and the stat of the very file read (it may be replaced meanwhile)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        return f.read(), st


def ocsp_url(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            desc.access_location, x509.UniformResourceIdentifier
        ):
            url = desc.access_location.value
            if url.startswith(("http://", "https://")):
                return url
    return None


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except (x509.ExtensionNotFound, ValueError):
        return None


def _issued_by(leaf: x509.Certificate, candidate: x509.Certificate) -> bool:
    if candidate.subject != leaf.issuer:
        return False
    try:
        leaf.verify_directly_issued_by(candidate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def find_issuer(leaf: x509.Certificate, candidates: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The first candidate that directly issued leaf (same name, signature verifies), or None."""
    return next((c for c in candidates if _issued_by(leaf, c)), None)


def ca_path_certificates(directory: Path) -> list[x509.Certificate]:
    """Every certificate in the files of a directory like SSLCACertificatePath (other files skipped)."""
    return _ca_path_certs(directory)


def _ca_path_certs(directory: Path) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for entry in sorted(directory.iterdir()):
        if entry.is_file():
            try:
                certs.extend(load_certificates(entry))
            except (OSError, ValueError):
                continue  # hash links and non-certificates live here too
    return certs


@dataclass(slots=True)
class _Certs:
    certs: list[x509.Certificate]
    by_hashes: dict[tuple[bytes, bytes], x509.Certificate]  # SHA-1 key and name hashes -> certificate


class _SharedFiles:
    """Chain and CA files, and CA directories, read once per build: many vhosts share one."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[Stamp, _Certs]] = {}
        self._dirs: dict[Path, _Certs] = {}

    def file(self, path: Path) -> tuple[_Certs, os.stat_result]:
        """The file's certificates and stat; read again only when its stamp moved. Raises
        OSError or ValueError."""
        st = os.stat(path)
        known = self._files.get(path)
        if known is not None and known[0] == Stamp.of(st):
            return known[1], st
        data, st = _read_with_stat(path)
        certs = _index(_parse_certificates(data, path))
        self._files[path] = (Stamp.of(st), certs)
        return certs, st

    def directory(self, path: Path) -> _Certs:
        if path not in self._dirs:
            self._dirs[path] = _index(_ca_path_certs(path))
        return self._dirs[path]


def _index(certs: list[x509.Certificate]) -> _Certs:
    by_hashes = {(issuer_key_hash(c, "sha1"), issuer_name_hash(c, "sha1")): c for c in reversed(certs)}
    return _Certs(certs, by_hashes)  # reversed: the first of equals wins, as when searching in order


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
    shared = _SharedFiles()
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
    shared = _SharedFiles()
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
    shared: _SharedFiles,
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
            data, st = _read_with_stat(path)
            stamp = Stamp.of(st)
            certs = _parse_certificates(data, path)
        _saw(inv, path, st)
        extra: list[_Certs] = []
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
            data, st = _read_with_stat(path)
            stamp = Stamp.of(st)
            certs = _parse_certificates(data, path)
            _saw(inv, path, st)
    except (OSError, ValueError) as exc:
        problem = source.problem(path, exc) if isinstance(exc, NotACertificate) else None
        inv.problems.append(problem or f"certificate {path}: unreadable ({exc})")
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
    inv.targets[key] = Target(
        key=key, issuer=issuer, url=issuer.ocsp_url or facts.url, path=path, subject=facts.subject
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
    extra: list[_Certs],
    pool: list[x509.Certificate],
) -> tuple[LeafFacts | None, Issuer | None]:
    """The leaf's facts and its issuer, proven by signature; (None, None) when not found (reported)."""
    leaf = certs[0]
    subject = leaf.subject.rfc4514_string()
    issuer_cert = inv.find_issuer(leaf, [*certs[1:], *(c for part in extra for c in part.certs), *pool])
    if issuer_cert is None:
        inv.problems.append(f"certificate {path} ({subject}): issuer not found; give it with --issuers")
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


def _known_issuer(inv: Inventory, facts: LeafFacts, extra: list[_Certs]) -> Issuer | None:
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
