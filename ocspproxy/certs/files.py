"""Reading certificate files: PEM or DER, what a file holds when it is no certificate, issuers
proven by signature, AIA OCSP URLs. Chain and CA files shared by many virtual hosts are read once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import AuthorityInformationAccessOID

from ocspproxy.core.ocsp import issuer_key_hash, issuer_name_hash
from ocspproxy.store.atomic import Stamp, read_regular

__all__ = [
    "Certs",
    "NotACertificate",
    "SharedFiles",
    "authority_key_id",
    "ca_path_certificates",
    "find_issuer",
    "load_certificates",
    "ocsp_url",
    "parse_certificates",
    "read_certificate_file",
]


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
    return parse_certificates(path.read_bytes(), path)


def parse_certificates(data: bytes, path: str | Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        pass
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise _not_a_certificate(path, data) from None


def read_certificate_file(path: str | Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and the stat of the very file read (it may be replaced meanwhile). A
    certificate file may be a symbolic link (certbot's live/ directory). Raises OSError, ValueError."""
    return read_regular(path, follow_links=True)


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


def authority_key_id(cert: x509.Certificate) -> bytes | None:
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
class Certs:
    certs: list[x509.Certificate]
    by_hashes: dict[tuple[bytes, bytes], x509.Certificate]  # SHA-1 key and name hashes -> certificate


class SharedFiles:
    """Chain and CA files, and CA directories, read once per build: many vhosts share one."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[Stamp, Certs]] = {}
        self._dirs: dict[Path, Certs] = {}

    def file(self, path: Path) -> tuple[Certs, os.stat_result]:
        """The file's certificates and stat; read again only when its stamp moved. Raises
        OSError or ValueError."""
        st = os.stat(path)
        known = self._files.get(path)
        if known is not None and known[0] == Stamp.of(st):
            return known[1], st
        data, st = read_certificate_file(path)
        certs = _index(parse_certificates(data, path))
        self._files[path] = (Stamp.of(st), certs)
        return certs, st

    def directory(self, path: Path) -> Certs:
        if path not in self._dirs:
            self._dirs[path] = _index(_ca_path_certs(path))
        return self._dirs[path]


def _index(certs: list[x509.Certificate]) -> Certs:
    by_hashes = {(issuer_key_hash(c, "sha1"), issuer_name_hash(c, "sha1")): c for c in reversed(certs)}
    return Certs(certs, by_hashes)  # reversed: the first of equals wins, as when searching in order
