"""What to keep stapled: certificates (targets), their issuers, OCSP URLs and CertIDs.

Every upstream URL comes from here (a certificate's AIA extension or the configuration), never from a
request. ``ocspproxy/certs/build.py`` makes an Inventory from the files; ``Catalog`` holds the one in
force.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from ocspproxy.certs.files import NotACertificate, authority_key_id, find_issuer
from ocspproxy.core.ocsp import HASH_ALGORITHMS, CertId, CertKey, issuer_key_hash, issuer_name_hash

__all__ = ["CertSource", "Inventory", "Issuer", "Orphan", "Target"]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Orphan:
    """A configured certificate file with nothing to staple: why, in a few words (its problem line
    says more). A certificate without an OCSP URL is a ``Target`` whose ``url`` is None."""

    path: str
    subject: str | None  # None when the file could not be read as a certificate
    reason: str


@dataclass(slots=True)
class Inventory:
    issuers: dict[tuple[str, bytes], Issuer] = field(default_factory=dict)
    targets: dict[CertKey, Target] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)  # configured files that name no target
    files: dict[str, float] = field(default_factory=dict)  # certificate files read, with mtimes
    # (mtime_ns, size) of those files and of every glob match as this build saw them ((-1, -1): no
    # stat), where the watcher starts comparing: a change made since is noticed.
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)  # configured certificate files that failed
    # (issuer name, authority key id) -> issuer already proven by a signature: one check per CA,
    # not one per certificate (100,000 signature checks would dominate start-up).
    _proven: dict[tuple[bytes, bytes], x509.Certificate] = field(default_factory=dict, repr=False)
    _by_cert: dict[x509.Certificate, Issuer] = field(default_factory=dict, repr=False)
    # Issuer (SHA-1 key hash) -> the OCSP URL of the first of its certificates that has one.
    _first_url: dict[bytes, str] = field(default_factory=dict, repr=False)

    def add_target(self, target: Target) -> None:
        self.targets[target.key] = target
        if target.url:
            self._first_url.setdefault(target.issuer.key_hashes["sha1"], target.url)

    def issuer_of_cert(self, cert: x509.Certificate) -> Issuer:
        issuer = self._by_cert.get(cert)
        if issuer is None:
            issuer = self._by_cert[cert] = self.add_issuer(Issuer.of(cert))
        return issuer

    def find_issuer(
        self, leaf: x509.Certificate, candidates: list[x509.Certificate]
    ) -> x509.Certificate | None:
        aki = authority_key_id(leaf)
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
        return self._first_url.get(issuer.key_hashes["sha1"])

    @staticmethod
    def sha1_key(key: CertKey, issuer: Issuer) -> CertKey:
        return CertKey(alg="sha1", issuer_key_hash=issuer.key_hashes["sha1"], serial=key.serial)
