"""Validation of an upstream OCSP response before anything else sees it (pure; clock injected).

A response is valid for a CertKey when: its status is successful; one of its SingleResponses names the
same certificate (same issuer name and key hash under that SingleResponse's hash algorithm, same serial);
it is signed by the issuer, or by a responder certificate carried in the response that the issuer
signed directly, that has the id-kp-OCSPSigning EKU and that is valid at thisUpdate; thisUpdate is not
more than ``skew`` in the future; nextUpdate is present and in the future.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from ocspproxy.der import signature_bits_are_whole
from ocspproxy.ocsp import HASH_ALGORITHMS, CertKey, hash_name, issuer_key_hash, issuer_name_hash
from ocspproxy.staple import CertStatus, Staple

__all__ = ["ExpiredResponse", "InvalidResponse", "check_times", "validate_response"]


_RSA = (rsa.RSAPublicKey,)
_EC = (ec.EllipticCurvePublicKey,)
_KEY_KIND: dict[x509.ObjectIdentifier, tuple[type, ...]] = {
    SignatureAlgorithmOID.RSA_WITH_SHA1: _RSA,
    SignatureAlgorithmOID.RSA_WITH_SHA224: _RSA,
    SignatureAlgorithmOID.RSA_WITH_SHA256: _RSA,
    SignatureAlgorithmOID.RSA_WITH_SHA384: _RSA,
    SignatureAlgorithmOID.RSA_WITH_SHA512: _RSA,
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: _EC,
    SignatureAlgorithmOID.ECDSA_WITH_SHA224: _EC,
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: _EC,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: _EC,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: _EC,
    SignatureAlgorithmOID.ED25519: (ed25519.Ed25519PublicKey,),
    SignatureAlgorithmOID.ED448: (ed448.Ed448PublicKey,),
}


class InvalidResponse(Exception):
    """The upstream answer must not be stored or served; str() says why."""


class ExpiredResponse(InvalidResponse):
    """A response that was valid once: its nextUpdate has passed."""


_STATUS = {
    ocsp.OCSPCertStatus.GOOD: CertStatus.GOOD,
    ocsp.OCSPCertStatus.REVOKED: CertStatus.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: CertStatus.UNKNOWN,
}


def validate_response(
    der: bytes,
    *,
    key: CertKey,
    issuer: x509.Certificate,
    now: datetime,
    skew: timedelta,
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
        not_after = _verify_signer(resp, issuer, single.this_update_utc) if check_signature else None
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        produced_at = resp.produced_at_utc
        status = _STATUS[single.certificate_status]
        revoked_at = single.revocation_time_utc if status is CertStatus.REVOKED else None
    except InvalidResponse:
        raise
    except Exception as exc:
        # Hostile bytes can make a parser fail in ways no one listed (cryptography raises
        # TypeError for some Name contents): at this trust boundary any failure means invalid.
        raise InvalidResponse(f"unreadable response: {type(exc).__name__}: {exc}") from exc

    if next_update is None:
        raise InvalidResponse("no nextUpdate: cannot tell how long it may be served")
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
        raise InvalidResponse(f"thisUpdate {this_update.isoformat()} is in the future")
    if next_update <= this_update:
        raise InvalidResponse("nextUpdate is not after thisUpdate")
    if not_after is not None and not_after < next_update:
        next_update = not_after
    if next_update <= now:
        raise ExpiredResponse(f"expired: nextUpdate {next_update.isoformat()} has passed")
    return next_update


def _find_single(resp: ocsp.OCSPResponse, key: CertKey, issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    # Match under each SingleResponse's own hash algorithm: some responders answer a SHA-256
    # CertID with a SHA-1 one; what matters is that it names the same certificate.
    for single in resp.responses:
        if single.serial_number != key.serial:
            continue
        try:
            alg = hash_name(single.hash_algorithm)
        except UnsupportedAlgorithm:
            continue
        if single.issuer_key_hash == issuer_key_hash(
            issuer, alg
        ) and single.issuer_name_hash == issuer_name_hash(issuer, alg):
            return single
    raise InvalidResponse("no SingleResponse for the requested certificate (CertID mismatch)")


def _responder_matches(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_key_hash is not None:
        return resp.responder_key_hash == issuer_key_hash(cert, "sha1")
    return resp.responder_name == cert.subject


def _verify_signer(
    resp: ocsp.OCSPResponse, issuer: x509.Certificate, this_update: datetime
) -> datetime | None:
    """Check the signature; return the delegated responder's notAfter (None when the issuer signed)."""
    failures: list[str] = []
    if _responder_matches(resp, issuer):
        try:
            _verify_signature(resp, issuer)
            return None
        except InvalidResponse as exc:
            failures.append(f"issuer: {exc}")
    for cert in resp.certificates:
        if cert == issuer or not _responder_matches(resp, cert):
            continue  # the issuer itself, included by some responders, was tried above
        try:
            _check_delegate(cert, issuer, this_update)
            _verify_signature(resp, cert)
            return cert.not_valid_after_utc
        except InvalidResponse as exc:
            failures.append(f"responder {cert.subject.rfc4514_string()}: {exc}")
    if not failures:
        raise InvalidResponse("signer is neither the issuer nor a certificate in the response")
    raise InvalidResponse("; ".join(failures))


def _check_delegate(cert: x509.Certificate, issuer: x509.Certificate, this_update: datetime) -> None:
    try:
        if not signature_bits_are_whole(cert.public_bytes(serialization.Encoding.DER), ocsp_response=False):
            raise InvalidResponse("responder certificate signature has unused bits")
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise InvalidResponse("responder certificate not issued by the issuer") from exc
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise InvalidResponse("responder certificate lacks id-kp-OCSPSigning")
    if not cert.not_valid_before_utc <= this_update <= cert.not_valid_after_utc:
        raise InvalidResponse("responder certificate not valid at thisUpdate")


def _verify_signature(resp: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key = signer.public_key()
    oid = resp.signature_algorithm_oid
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        # cryptography does not expose the PSS parameters of an OCSP response to verify with.
        raise InvalidResponse("RSASSA-PSS signatures are not supported")
    # signatureAlgorithm is outside the signed bytes: it must name the signer's kind of key.
    kind = _KEY_KIND.get(oid)
    if kind is None:
        raise InvalidResponse(f"unsupported signature algorithm {oid.dotted_string}")
    if not isinstance(key, kind):
        raise InvalidResponse(f"signature algorithm {oid.dotted_string} does not fit the signer's key")
    try:
        algorithm = resp.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey):
            if algorithm is None or algorithm.name.lower().replace("-", "") not in HASH_ALGORITHMS:
                raise InvalidResponse("weak or missing signature hash")
            key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(algorithm, hashes.HashAlgorithm):
                raise InvalidResponse("missing signature hash")
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(resp.signature, resp.tbs_response_bytes)
        else:
            raise InvalidResponse(f"unsupported signer key type {type(key).__name__}")
    except InvalidSignature as exc:
        raise InvalidResponse("bad signature") from exc
    except UnsupportedAlgorithm as exc:
        raise InvalidResponse(f"unsupported signature algorithm: {exc}") from exc
