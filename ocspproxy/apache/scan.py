"""What Apache serves over TLS and whether ocspproxy can staple it: one SiteReport per certificate in use.

Issuers are looked for where mod_ssl looks (the certificate file's chain, SSLCertificateChainFile,
SSLCACertificateFile, SSLCACertificatePath). The state directory is only read, never created or
cleaned (a running ocspproxy owns it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp as x509_ocsp

from ocspproxy.apache.config import TLSSite
from ocspproxy.certs.files import (
    NotACertificate,
    ca_path_certificates,
    find_issuer,
    load_certificates,
    ocsp_url,
)
from ocspproxy.core.ocsp import CertKey, issuer_key_hash
from ocspproxy.core.validate import ExpiredResponse, InvalidResponse, Rules
from ocspproxy.store.atomic import read_regular
from ocspproxy.store.files import MAX_FILE_BYTES, file_name

__all__ = [
    "REASONS",
    "Problem",
    "SiteReport",
    "attention",
    "force_url_conflicts",
    "scan_sites",
    "staple_state",
]


@dataclass(frozen=True, kw_only=True)
class Problem:
    kind: str  # unreadable_certificate | not_a_certificate | unreadable_file | no_issuer | no_ocsp_url
    #          | https_force_url | force_url_conflict
    message: str
    fix: str | None = None


@dataclass(frozen=True, kw_only=True)
class SiteReport:
    site: TLSSite
    subject: str | None = None
    serial: str | None = None  # upper-case hex, as OpenSSL prints it
    fingerprint: str | None = None  # SHA-256 of the leaf: mod_ssl keeps one stapling entry per certificate
    issuer: str | None = None
    issuer_source: str | None = None  # which of mod_ssl's places held the issuer
    ocsp_url: str | None = None
    through_ocspproxy: bool = False  # SSLStaplingForceURL names ocspproxy
    stapling_possible: bool = False
    # good | revoked | unknown | expired | invalid | missing | unreadable, or none (no OCSP URL:
    # nothing to staple); None when it cannot be told (no certificate or no issuer)
    staple_status: str | None = None
    staple_next_update: datetime | None = None
    staple_file: Path | None = None
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _Issuer:
    cert: x509.Certificate | None
    source: str | None
    problems: tuple[Problem, ...]


def _find_issuer(leaf: x509.Certificate, chain: Sequence[x509.Certificate], site: TLSSite) -> _Issuer:
    """Look where mod_ssl looks, in its order; a file that cannot be read is a problem, not an end."""
    places: list[tuple[str, Callable[[], list[x509.Certificate]], Path]] = [
        ("certificate file", lambda: list(chain), site.certificate_file)
    ]
    if site.chain_file is not None:
        path = site.chain_file
        places.append(("SSLCertificateChainFile", lambda: load_certificates(path), path))
    if site.ca_certificate_file is not None:
        ca_file = site.ca_certificate_file
        places.append(("SSLCACertificateFile", lambda: load_certificates(ca_file), ca_file))
    if site.ca_certificate_path is not None:
        ca_dir = site.ca_certificate_path
        places.append(("SSLCACertificatePath", lambda: ca_path_certificates(ca_dir), ca_dir))
    problems: list[Problem] = []
    for source, read, path in places:
        try:
            candidates = read()
        except (OSError, ValueError) as exc:
            what = exc.what if isinstance(exc, NotACertificate) else f"unreadable ({exc})"
            problems.append(Problem(kind="unreadable_file", message=f"{source} {path}: {what}"))
            continue
        found = find_issuer(leaf, candidates)
        if found is not None:
            return _Issuer(cert=found, source=source, problems=tuple(problems))
    return _Issuer(cert=None, source=None, problems=tuple(problems))


def staple_state(
    state_dir: Path, key: CertKey, issuer: x509.Certificate, *, now: datetime, rules: Rules
) -> tuple[str, datetime | None, Path]:
    """(status, nextUpdate, file) of the staple ocspproxy stored for key, checked as ocspproxy checks it."""
    path = state_dir / file_name(key)
    try:
        der, _ = read_regular(path, limit=MAX_FILE_BYTES)
    except FileNotFoundError:
        return "missing", None, path
    except ValueError:
        return "invalid", None, path
    except OSError:
        return "unreadable", None, path
    try:
        staple = rules.validate(der, key=key, issuer=issuer, now=now)
    except ExpiredResponse:
        return "expired", _next_update(der), path
    except InvalidResponse:
        return "invalid", None, path
    return staple.status.value, staple.next_update, path


def _next_update(der: bytes) -> datetime | None:
    try:
        return x509_ocsp.load_der_ocsp_response(der).next_update_utc
    except ValueError:
        return None


def _same_endpoint(url: str | None, proxy_url: str | None) -> bool:
    if url is None or proxy_url is None:
        return False
    a, b = urlsplit(url), urlsplit(proxy_url)
    try:
        return (a.scheme.lower(), a.hostname, a.port or 80) == (b.scheme.lower(), b.hostname, b.port or 80)
    except ValueError:
        return False


def _no_issuer(site: TLSSite) -> Problem:
    return Problem(
        kind="no_issuer",
        message="issuer certificate not found: mod_ssl cannot build the OCSP request and staples nothing "
        "(its error AH02217, 'can't retrieve issuer certificate')",
        fix=f"append the issuing CA certificate to {site.certificate_file} (after the server certificate), "
        "or name a file holding it with SSLCertificateChainFile or SSLCACertificateFile",
    )


def _not_a_certificate(site: TLSSite, exc: NotACertificate) -> Problem:
    key = "; the private key belongs in SSLCertificateKeyFile" if exc.private_key else ""
    return Problem(
        kind="not_a_certificate",
        message=f"certificate file {site.certificate_file} {exc.what}",
        fix=f"point SSLCertificateFile at the PEM certificate (leaf first, then its chain){key} "
        "(Apache will not start with it either)",
    )


def _no_url() -> Problem:
    return Problem(
        kind="no_ocsp_url",
        message="no OCSP URL in the certificate: its CA does not offer OCSP for it (Let's Encrypt, for "
        "one, stopped in 2025), so there is nothing to staple",
        fix="nothing to do for this certificate (or configure an [[issuer]] ocsp_url in ocspproxy if "
        "the CA runs a responder it does not name)",
    )


def _report_site(
    site: TLSSite,
    *,
    state_dir: Path,
    proxy_url: str | None,
    overrides: Sequence[tuple[x509.Certificate, str]],
    now: datetime,
    rules: Rules,
) -> SiteReport:
    force = site.stapling_force_url
    base = SiteReport(site=site, through_ocspproxy=_same_endpoint(force, proxy_url))
    problems: list[Problem] = []
    if force is not None and force.lower().startswith("https://"):
        problems.append(
            Problem(
                kind="https_force_url",
                message=f"SSLStaplingForceURL {force} is https://: mod_ssl cannot fetch OCSP over TLS "
                "and aborts the handshakes of this virtual host",
                fix="use ocspproxy's http:// URL (ocspproxy apache snippet prints it)",
            )
        )
    try:
        chain = load_certificates(site.certificate_file)
    except NotACertificate as exc:
        problems.insert(0, _not_a_certificate(site, exc))
        return replace(base, problems=tuple(problems))
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.insert(
            0,
            Problem(
                kind="unreadable_certificate",
                message=f"cannot read certificate file {site.certificate_file}: {why}",
                fix="fix the path in SSLCertificateFile or the file's permissions (Apache will not start "
                "with it either)",
            ),
        )
        return replace(base, problems=tuple(problems))
    leaf = chain[0]
    found = _find_issuer(leaf, chain[1:], site)
    problems.extend(found.problems)
    url = ocsp_url(leaf)
    report = replace(
        base,
        subject=leaf.subject.rfc4514_string(),
        serial=_serial_hex(leaf.serial_number),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        issuer_source=found.source,
    )
    if found.cert is None:
        problems.insert(0, _no_issuer(site))
        return replace(report, problems=tuple(problems), ocsp_url=url)
    issuer = found.cert
    issuer_hash = issuer_key_hash(issuer, "sha1")
    override = next((u for c, u in overrides if issuer_key_hash(c, "sha1") == issuer_hash), None)
    url = override or url
    if url is None:
        problems.insert(0, _no_url())
        return replace(
            report, issuer=issuer.subject.rfc4514_string(), staple_status="none", problems=tuple(problems)
        )
    key = CertKey(alg="sha1", issuer_key_hash=issuer_hash, serial=leaf.serial_number)
    status, next_update, path = staple_state(state_dir, key, issuer, now=now, rules=rules)
    return replace(
        report,
        issuer=issuer.subject.rfc4514_string(),
        ocsp_url=url,
        stapling_possible=not any(p.kind == "https_force_url" for p in problems),
        staple_status=status,
        staple_next_update=next_update,
        staple_file=path,
        problems=tuple(problems),
    )


# What needs attention, in the order the summary names it: staples, then problems, then stapling.
_STAPLE_REASONS = {
    "revoked": "revoked",
    "expired": "expired",
    "invalid": "invalid staple",
    "unknown": "unknown to the CA",
    "missing": "missing staple",
    "unreadable": "unreadable staple",
}
_PROBLEM_REASONS = {
    "unreadable_certificate": "unreadable certificate",
    "not_a_certificate": "not a certificate",
    "no_issuer": "no issuer",
    "no_ocsp_url": "no OCSP URL",
    "https_force_url": "https:// ForceURL",
    "force_url_conflict": "ForceURL conflict",
    "unreadable_file": "unreadable chain or CA file",
}
REASONS = (*_STAPLE_REASONS.values(), *_PROBLEM_REASONS.values(), "stapling off", "not through ocspproxy")


def attention(report: SiteReport) -> tuple[str, ...]:
    """Why a site needs attention, in ``REASONS`` order; empty when Apache staples a good, current
    response through ocspproxy for it and nothing is wrong."""
    found = {_PROBLEM_REASONS.get(p.kind, p.kind) for p in report.problems}
    if report.staple_status in _STAPLE_REASONS:
        found.add(_STAPLE_REASONS[report.staple_status])
    if not report.site.use_stapling:
        found.add("stapling off")
    elif not report.through_ocspproxy:
        found.add("not through ocspproxy")
    return tuple(sorted(found, key=lambda r: REASONS.index(r) if r in REASONS else len(REASONS)))


def _serial_hex(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _where(site: TLSSite) -> str:
    name = site.server_name or site.vhost
    return f"{name} ({site.config_file}:{site.line})"


def force_url_conflicts(reports: Sequence[SiteReport]) -> list[SiteReport]:
    """Add a problem to every site whose certificate other stapling vhosts use with another ForceURL.

    mod_ssl keeps one stapling entry (and one cached response) per certificate, shared by every vhost
    that serves it; which URL it asks depends on which vhost's handshake renews the entry.
    """
    groups: dict[str, list[SiteReport]] = {}
    for report in reports:
        if report.site.use_stapling is not False:
            key = report.fingerprint or f"file:{report.site.certificate_file}"
            groups.setdefault(key, []).append(report)
    extra: dict[int, Problem] = {}
    for group in groups.values():
        if len({r.site.stapling_force_url for r in group}) < 2:
            continue
        for report in group:
            others = [r for r in group if r.site.stapling_force_url != report.site.stapling_force_url]
            named = "; ".join(f"{_where(o.site)} has {o.site.stapling_force_url or 'none'}" for o in others)
            extra[id(report)] = Problem(
                kind="force_url_conflict",
                message=f"certificate also served with a different SSLStaplingForceURL: {named} (here: "
                f"{report.site.stapling_force_url or 'none'}); mod_ssl keeps one stapling entry per "
                "certificate, so which URL it asks depends on which vhost renews it",
                fix="give every vhost serving this certificate the same SSLStaplingForceURL (or none, "
                "and let the server-wide one apply)",
            )
    return [replace(r, problems=(*r.problems, extra[id(r)])) if id(r) in extra else r for r in reports]


def scan_sites(
    sites: Sequence[TLSSite],
    *,
    state_dir: Path,
    proxy_url: str | None,
    now: datetime,
    rules: Rules | None = None,
    overrides: Sequence[tuple[x509.Certificate, str]] = (),
) -> list[SiteReport]:
    """One report per TLS site, in config order."""
    reports = [
        _report_site(
            site,
            state_dir=state_dir,
            proxy_url=proxy_url,
            overrides=overrides,
            now=now,
            rules=rules or Rules(),
        )
        for site in sites
    ]
    return force_url_conflicts(reports)
