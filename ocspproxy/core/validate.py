"""Validation of an upstream OCSP response before anything else sees it (pure; clock injected).

The yardstick is ``openssl ocsp``: what it verifies as good is accepted, what it refuses is refused
(``ocspproxy/core/signature.py`` names the one deliberate exception, MD5). A response is valid for a
CertKey when:

- its status is successful;
- one of its SingleResponses carries exactly the CertID asked for: the same hash algorithm, issuer
  name hash, issuer key hash and serial (a client asking with SHA-256 cannot use an answer in SHA-1,
  so neither do we);
- it is signed by the issuer, or by a responder certificate carried in the response that the issuer
  signed directly (any algorithm ``verify_signature`` accepts, SHA-1 included), that has the
  id-kp-OCSPSigning EKU, and that is valid both when the response was produced (producedAt) and now
  (CAs pre-produce responses and backdate thisUpdate, so a freshly rotated delegate may postdate
  thisUpdate; OpenSSL checks the signer at the current time). Its notAfter caps the staple's
  validity;
- thisUpdate is not more than ``skew`` in the future (the same skew the Apache snippet gives mod_ssl,
  so nothing is served that Apache would refuse);
- nextUpdate, when present, is after thisUpdate and in the future. A response without one ("newer
  information is always available") is served for ``without_next_update`` after its thisUpdate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ocspproxy.core.der import DERError, signature_algorithm, signature_bits_are_whole
from ocspproxy.core.ocsp import CertKey, hash_name, issuer_key_hash, issuer_name_hash
from ocspproxy.core.signature import BadSignature, verify_signature
from ocspproxy.core.staple import CertStatus, Staple

__all__ = [
    "WITHOUT_NEXT_UPDATE",
    "ExpiredResponse",
    "InvalidResponse",
    "Rules",
    "check_times",
    "validate_response",
]

# How long a response without nextUpdate is served after its thisUpdate, unless configured: about
# what mod_ssl alone keeps one (SSLStaplingStandardCacheTimeout, 3600 s), and it is refreshed at
# half of it, like any other staple.
WITHOUT_NEXT_UPDATE = timedelta(hours=1)


class InvalidResponse(Exception):
    """The upstream answer must not be stored or served; str() says why."""


class ExpiredResponse(InvalidResponse):
    """A response that was valid once: its nextUpdate has passed."""


_STATUS = {
    ocsp.OCSPCertStatus.GOOD: CertStatus.GOOD,
    ocsp.OCSPCertStatus.REVOKED: CertStatus.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: CertStatus.UNKNOWN,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """The configured parts of validation, applied the same way wherever an answer comes from."""

    skew: timedelta = timedelta(seconds=60)
    without_next_update: timedelta = WITHOUT_NEXT_UPDATE

    def validate(
        self,
        der: bytes,
        *,
        key: CertKey,
        issuer: x509.Certificate,
        now: datetime,
        check_signature: bool = True,
    ) -> Staple:
        return validate_response(
            der,
            key=key,
            issuer=issuer,
            now=now,
            skew=self.skew,
            without_next_update=self.without_next_update,
            check_signature=check_signature,
        )

    def check_times(self, this_update: datetime, next_update: datetime, *, now: datetime) -> datetime:
        return check_times(this_update, next_update, now=now, skew=self.skew)


def validate_response(
    der: bytes,
    *,
    key: CertKey,
    issuer: x509.Certificate,
    now: datetime,
    skew: timedelta,
    without_next_update: timedelta = WITHOUT_NEXT_UPDATE,
    check_signature: bool = True,
) -> Staple:
    """Validate der as the answer for key. With check_signature false (stored staples at start-up)
    everything but the signer is checked and the Staple says ``verified=False``: it must be checked
    in full before it is served."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise InvalidResponse(f"not an OCSP response: {exc}") from exc
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise InvalidResponse(f"responder answered {resp.response_status.name}")
    try:
        if not signature_bits_are_whole(der, ocsp_response=True):
            raise InvalidResponse("signature BIT STRING has unused bits")
        single = _find_single(resp, key, issuer)
        produced_at = resp.produced_at_utc
        not_after = _verify_signer(resp, der, issuer, produced_at, now) if check_signature else None
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        status = _STATUS[single.certificate_status]
        revoked_at = single.revocation_time_utc if status is CertStatus.REVOKED else None
    except InvalidResponse:
        raise
    except Exception as exc:
        # Hostile bytes can make a parser fail in ways no one listed (cryptography raises
        # TypeError for some Name contents): at this trust boundary any failure means invalid.
        raise InvalidResponse(f"unreadable response: {type(exc).__name__}: {exc}") from exc

    if next_update is None:
        next_update = this_update + without_next_update
    next_update = check_times(this_update, next_update, now=now, skew=skew, not_after=not_after)
    return Staple(
        key=key,
        der=der,
        status=status,
        this_update=this_update,
        next_update=next_update,
        produced_at=produced_at,
        revocation_time=revoked_at,
        verified=check_signature,
    )


def check_times(
    this_update: datetime,
    next_update: datetime,
    *,
    now: datetime,
    skew: timedelta,
    not_after: datetime | None = None,
) -> datetime:
    """The checks of a response's times; returns the nextUpdate in effect (capped at a delegated
    responder's notAfter). Raises InvalidResponse, or ExpiredResponse once it has passed."""
    if this_update > now + skew:
        raise InvalidResponse(
            f"thisUpdate {this_update.isoformat()} is in the future (more than {skew.total_seconds():g} s)"
        )
    if next_update <= this_update:
        raise InvalidResponse("nextUpdate is not after thisUpdate")
    if not_after is not None and not_after < next_update:
        next_update = not_after
    if next_update <= now:
        raise ExpiredResponse(f"expired: nextUpdate {next_update.isoformat()} has passed")
    return next_update


def _find_single(resp: ocsp.OCSPResponse, key: CertKey, issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    """The SingleResponse with exactly key's CertID (hash algorithm included): a client finds its
    status only under the CertID it asked with."""
    other_alg: str | None = None
    for single in resp.responses:
        if single.serial_number != key.serial:
            continue
        try:
            alg = hash_name(single.hash_algorithm)
        except UnsupportedAlgorithm:
            continue
        if single.issuer_key_hash != issuer_key_hash(issuer, alg):
            continue
        if single.issuer_name_hash != issuer_name_hash(issuer, alg):
            continue
        if alg == key.alg:
            return single
        other_alg = alg
    if other_alg is not None:
        raise InvalidResponse(
            f"the CA answered with a {other_alg.upper()} CertID for a {key.alg.upper()} request: a client "
            f"asking with {key.alg.upper()} finds no status in it (no SingleResponse with the CertID asked)"
        )
    raise InvalidResponse("no SingleResponse for the requested certificate (CertID mismatch)")


def _responder_matches(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_key_hash is not None:
        return resp.responder_key_hash == issuer_key_hash(cert, "sha1")
    return resp.responder_name == cert.subject


def _verify_signer(
    resp: ocsp.OCSPResponse, der: bytes, issuer: x509.Certificate, produced_at: datetime, now: datetime
) -> datetime | None:
    """Check the signature; return the delegated responder's notAfter (None when the issuer signed)."""
    failures: list[str] = []
    try:
        oid, params = signature_algorithm(der, ocsp_response=True)
    except DERError as exc:
        raise InvalidResponse(f"unreadable signatureAlgorithm: {exc}") from exc
    if _responder_matches(resp, issuer):
        try:
            _verify(issuer, oid, params, resp.signature, resp.tbs_response_bytes)
            return None
        except InvalidResponse as exc:
            failures.append(f"issuer: {exc}")
    for cert in resp.certificates:
        if cert == issuer or not _responder_matches(resp, cert):
            continue  # the issuer itself, included by some responders, was tried above
        try:
            _check_delegate(cert, issuer, produced_at, now)
            _verify(cert, oid, params, resp.signature, resp.tbs_response_bytes)
            return cert.not_valid_after_utc
        except InvalidResponse as exc:
            failures.append(f"responder {cert.subject.rfc4514_string()}: {exc}")
    if not failures:
        raise InvalidResponse("signer is neither the issuer nor a certificate in the response")
    raise InvalidResponse("; ".join(failures))


def _verify(signer: x509.Certificate, oid: str, params: bytes | None, signature: bytes, data: bytes) -> None:
    try:
        verify_signature(signer.public_key(), oid=oid, params=params, signature=signature, data=data)
    except BadSignature as exc:
        raise InvalidResponse(str(exc)) from exc


def _check_delegate(
    cert: x509.Certificate, issuer: x509.Certificate, produced_at: datetime, now: datetime
) -> None:
    if cert.issuer != issuer.subject:
        raise InvalidResponse("responder certificate not issued by the issuer (another issuer name)")
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    try:
        if not signature_bits_are_whole(cert_der, ocsp_response=False):
            raise InvalidResponse("responder certificate signature has unused bits")
        oid, params = signature_algorithm(cert_der, ocsp_response=False)
    except DERError as exc:
        raise InvalidResponse(f"responder certificate unreadable: {exc}") from exc
    if oid != cert.signature_algorithm_oid.dotted_string:
        raise InvalidResponse("responder certificate signatureAlgorithm differs from its tbsCertificate")
    try:
        verify_signature(
            issuer.public_key(),
            oid=oid,
            params=params,
            signature=cert.signature,
            data=cert.tbs_certificate_bytes,
        )
    except BadSignature as exc:
        if str(exc) == "bad signature":
            raise InvalidResponse("responder certificate not issued by the issuer (bad signature)") from exc
        raise InvalidResponse(f"responder certificate signature: {exc}") from exc
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise InvalidResponse("responder certificate lacks id-kp-OCSPSigning")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    for moment, what in ((produced_at, "when the response was produced"), (now, "now")):
        if not start <= moment <= end:
            raise InvalidResponse(
                f"responder certificate not valid {what} ({moment.isoformat()}; valid "
                f"{start.isoformat()} to {end.isoformat()})"
            )
