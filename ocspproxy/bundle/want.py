"""The want file: what the inside needs fetched — per configured certificate its OCSP request (the
SHA-1 CertID mod_ssl asks with), the CA responder's URL (when known) and its issuer's certificate.
Public data only: no key, no path of a certificate file.

``write_want`` is the one way to make it, for ``ocspproxy bundle want`` and for a running service
(``[bundle] want_file``, SIGUSR1) alike; ``read_want`` is what ``bundle fetch`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ocspproxy.bundle.format import (
    WANT,
    BundleError,
    cert_id_fields,
    key_from_fields,
    open_archive,
    write_archive,
)
from ocspproxy.certs.inventory import Inventory
from ocspproxy.core.ocsp import CertKey, MalformedRequest, build_request, issuer_key_hash, parse_request

__all__ = ["Want", "Wanted", "read_want", "wanted", "write_want"]


@dataclass(frozen=True, slots=True)
class Wanted:
    """One certificate the inside wants a response for."""

    key: CertKey
    name_hash: bytes
    request: bytes  # DER OCSPRequest for exactly this CertID
    url: str | None  # the CA responder, None when the inside knows none
    issuer: x509.Certificate
    subject: str


@dataclass(frozen=True, slots=True)
class Want:
    created: datetime | None
    entries: list[Wanted]
    problems: list[str]  # entries of the file that cannot be used, one line each


def wanted(inventory: Inventory) -> list[Wanted]:
    """Every configured certificate, in CertID order."""
    out = []
    for key, target in sorted(inventory.targets.items()):
        name_hash = target.issuer.name_hashes[key.alg]
        url = inventory.upstream_for(key, target.issuer)
        request = build_request(key, name_hash)
        out.append(Wanted(key, name_hash, request, url, target.issuer.cert, target.subject))
    return out


def write_want(path: Path, entries: list[Wanted], created: datetime) -> None:
    """Write the want file (whole or not at all). Raises OSError."""
    files: dict[str, bytes] = {}
    manifest: list[dict[str, Any]] = []
    for item in entries:
        issuer_name = f"issuers/{_sha1_key_hash(item).hex()}.pem"
        files.setdefault(issuer_name, item.issuer.public_bytes(serialization.Encoding.PEM))
    for item in entries:
        request_name = f"requests/{item.key}.der"
        files[request_name] = item.request
        manifest.append(
            {
                "cert_id": cert_id_fields(item.key, item.name_hash),
                "subject": item.subject,
                "url": item.url,
                "issuer": f"issuers/{_sha1_key_hash(item).hex()}.pem",
                "request": request_name,
            }
        )
    write_archive(path, WANT, created, manifest, files)


def _sha1_key_hash(item: Wanted) -> bytes:
    return issuer_key_hash(item.issuer, "sha1")


def read_want(path: Path) -> Want:
    """Read a want file whole (it is small: a request is about 100 bytes). Raises BundleError when
    the file is unusable; an unusable entry is a problem line, the others are read."""
    with open_archive(path, WANT) as archive:
        files: dict[str, bytes] = {}
        damage: list[str] = []
        for member in archive.members():
            if member.data is not None:
                files[member.name] = member.data
            else:
                damage.append(f"{member.name or path}: {member.problem}")
        entries, problems = [], list(damage)
        issuers: dict[str, x509.Certificate] = {}
        for i, fields in enumerate(archive.entries):
            try:
                entries.append(_entry(fields, files, issuers))
            except ValueError as exc:
                problems.append(f"entry {i} ({fields.get('subject', '?')}): {exc}")
    if not entries and archive.entries:
        raise BundleError(f"{path}: no usable entry ({problems[0] if problems else 'none'})")
    return Want(archive.created, entries, problems)


def _entry(fields: dict[str, Any], files: dict[str, bytes], issuers: dict[str, x509.Certificate]) -> Wanted:
    key, name_hash = key_from_fields(fields.get("cert_id"))
    request = files.get(str(fields.get("request")))
    if request is None:
        raise ValueError("its request is missing from the archive")
    try:
        asked = parse_request(request)
    except MalformedRequest as exc:
        raise ValueError(f"its request is unreadable: {exc}") from None
    if asked.key != key or asked.issuer_name_hash != name_hash:
        raise ValueError("its request asks about another certificate than its cert_id")
    issuer_name = str(fields.get("issuer"))
    issuer = issuers.get(issuer_name)
    if issuer is None:
        pem = files.get(issuer_name)
        if pem is None:
            raise ValueError("its issuer certificate is missing from the archive")
        try:
            issuer = issuers[issuer_name] = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise ValueError(f"{issuer_name} is not a PEM certificate") from None
    url = fields.get("url")
    if url is not None and (not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https")):
        raise ValueError(f"its url {url!r} is not an http:// or https:// URL")
    return Wanted(key, name_hash, request, url or None, issuer, str(fields.get("subject", "")))
