"""What to keep stapled: certificate files, their issuers, OCSP URLs and CertIDs.

Every upstream URL comes from here (a certificate's AIA extension or the configuration), never from a
request.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import AuthorityInformationAccessOID

from ocspproxy.ocsp import HASH_ALGORITHMS, CertId, CertKey, issuer_key_hash, issuer_name_hash

__all__ = [
    "CertSource",
    "Inventory",
    "Issuer",
    "Target",
    "build_inventory",
    "ca_path_certificates",
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
    path: Path
    subject: str


@dataclass(slots=True)
class Inventory:
    issuers: dict[tuple[str, bytes], Issuer] = field(default_factory=dict)
    targets: dict[CertKey, Target] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: dict[Path, float] = field(default_factory=dict)  # certificate files read, with mtimes
    unreadable: set[Path] = field(default_factory=set)  # configured certificate files that failed
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


def load_certificates(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return [x509.load_der_x509_certificate(data)]


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


def build_inventory(
    sources: Iterable[CertSource],
    issuer_files: Iterable[Path],
    overrides: Mapping[Path, str] | None = None,
) -> Inventory:
    """Read every certificate and issuer file. Problems are collected, never raised."""
    inv = Inventory()
    pool: list[x509.Certificate] = []
    for path in issuer_files:
        try:
            pool.extend(load_certificates(path))
        except (OSError, ValueError) as exc:
            inv.problems.append(f"issuer file {path}: unreadable ({exc})")
    for path, url in (overrides or {}).items():
        try:
            for cert in load_certificates(path):
                inv.add_issuer(Issuer.of(cert, url))
        except (OSError, ValueError) as exc:
            inv.problems.append(f"issuer file {path}: unreadable ({exc})")
    for cert in pool:
        inv.add_issuer(Issuer.of(cert))
    for source in sources:
        paths = sorted(glob.glob(source.path)) if glob.has_magic(source.path) else [source.path]
        if not paths:
            inv.problems.append(f"certificate glob {source.path}: matches no file")
        for name in paths:
            _add_certificate(inv, Path(name), source, pool)
    return inv


def _add_certificate(inv: Inventory, path: Path, source: CertSource, pool: list[x509.Certificate]) -> None:
    try:
        certs = load_certificates(path)
        inv.files[path] = path.stat().st_mtime
        extra: list[x509.Certificate] = []
        for chain in (source.chain_file, source.ca_file):
            if chain is not None:
                extra.extend(load_certificates(chain))
                inv.files[chain] = chain.stat().st_mtime
        if source.ca_path is not None:
            extra.extend(_ca_path_certs(source.ca_path))
    except (OSError, ValueError) as exc:
        inv.problems.append(f"certificate {path}: unreadable ({exc})")
        inv.unreadable.add(path)
        return
    leaf = certs[0]
    subject = leaf.subject.rfc4514_string()
    issuer_cert = inv.find_issuer(leaf, [*certs[1:], *extra, *pool])
    if issuer_cert is None:
        inv.problems.append(f"certificate {path} ({subject}): issuer not found; give it with --issuers")
        return
    issuer = inv.issuer_of_cert(issuer_cert)
    url = ocsp_url(leaf)
    if url is None and issuer.ocsp_url is None:
        inv.problems.append(
            f"certificate {path} ({subject}): no OCSP URL in the certificate and none configured for "
            f"its issuer; it cannot be stapled"
        )
    key = CertKey(alg="sha1", issuer_key_hash=issuer.key_hashes["sha1"], serial=leaf.serial_number)
    inv.targets[key] = Target(key=key, issuer=issuer, url=issuer.ocsp_url or url, path=path, subject=subject)
