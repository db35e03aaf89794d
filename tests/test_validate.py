"""Response validation with a fixed clock."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ocspproxy.core.staple import CertStatus
from ocspproxy.core.validate import WITHOUT_NEXT_UPDATE, ExpiredResponse, InvalidResponse, validate_response
from tests import derbuild
from tests.pki import TestCA, _key, make_cert, now, replace_signature, resign_pss, rsa_ca

CA = TestCA()
SERIAL = 4242
KEY = CA.cert_id(SERIAL).key
SKEW = dt.timedelta(seconds=300)


def check(der: bytes, at: dt.datetime | None = None):
    return validate_response(der, key=KEY, issuer=CA.cert, now=at or now(), skew=SKEW)


def test_issuer_signed_good() -> None:
    staple = check(CA.respond(SERIAL))
    assert staple.status is CertStatus.GOOD and staple.key == KEY


def test_revoked_carries_its_time() -> None:
    staple = check(CA.respond(SERIAL, status="revoked"))
    assert staple.status is CertStatus.REVOKED and staple.revocation_time is not None


def test_sha1_request_answered_with_sha256_certid_is_refused() -> None:
    """mod_ssl asks with SHA-1 and looks for its status under the SHA-1 CertID only."""
    with pytest.raises(InvalidResponse, match="SHA256 CertID for a SHA1 request"):
        check(CA.respond(SERIAL, alg="sha256"))


def test_sha256_request_answered_with_sha1_certid_is_refused() -> None:
    """Some CAs answer every request in SHA-1: useless to a client that asked with SHA-256."""
    key = CA.cert_id(SERIAL, "sha256").key
    with pytest.raises(InvalidResponse, match="SHA1 CertID for a SHA256 request"):
        validate_response(CA.respond(SERIAL, alg="sha1"), key=key, issuer=CA.cert, now=now(), skew=SKEW)
    ok = validate_response(CA.respond(SERIAL, alg="sha256"), key=key, issuer=CA.cert, now=now(), skew=SKEW)
    assert ok.key == key


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"signer": "rogue", "by_name": True}, "bad signature"),
        ({"signer": "rogue-included"}, "not issued by the issuer"),
        ({"signer": "undelegated"}, "OCSPSigning"),
        ({"signer": "serverauth"}, "OCSPSigning"),
        ({"signer": "root"}, "signer"),
        ({"serial_in_response": SERIAL + 1}, "CertID"),
        ({"issuer_for_certid": CA.root}, "CertID"),
        ({"wrong_name_hash": True}, "CertID"),
        ({"this_update": now() + dt.timedelta(days=1)}, "future"),
    ],
)
def test_rejections(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidResponse, match=reason):
        check(CA.respond(SERIAL, **kwargs))  # type: ignore[arg-type]


def test_this_update_within_skew_is_accepted() -> None:
    check(CA.respond(SERIAL, this_update=now() + dt.timedelta(minutes=4)))


def test_skew_is_the_one_given() -> None:
    """Apache refuses a thisUpdate beyond its SSLStaplingResponseTimeSkew; ocspproxy gives mod_ssl
    the same skew it validates with, so a response it accepts is one Apache accepts."""
    der = CA.respond(SERIAL, this_update=now() + dt.timedelta(seconds=120))
    with pytest.raises(InvalidResponse, match="future"):
        validate_response(der, key=KEY, issuer=CA.cert, now=now(), skew=dt.timedelta(seconds=60))
    validate_response(
        der, key=KEY, issuer=CA.cert, now=now() + dt.timedelta(seconds=61), skew=dt.timedelta(seconds=60)
    )


def test_no_next_update_is_served_for_a_bounded_time_after_this_update() -> None:
    """`openssl ocsp` without -ndays/-nmin omits nextUpdate ("newer information is always
    available"): served for without_next_update after thisUpdate, never forever."""
    this_update = now() - dt.timedelta(minutes=10)
    der = CA.respond(SERIAL, this_update=this_update, validity=None)
    assert check(der).next_update == this_update + WITHOUT_NEXT_UPDATE == this_update + dt.timedelta(hours=1)
    staple = validate_response(
        der, key=KEY, issuer=CA.cert, now=now(), skew=SKEW, without_next_update=dt.timedelta(minutes=30)
    )
    assert staple.next_update == this_update + dt.timedelta(minutes=30)
    with pytest.raises(ExpiredResponse):
        validate_response(
            der, key=KEY, issuer=CA.cert, now=now(), skew=SKEW, without_next_update=dt.timedelta(minutes=5)
        )


def test_expired_is_its_own_kind() -> None:
    der = CA.respond(SERIAL, this_update=now() - dt.timedelta(hours=2), validity=dt.timedelta(hours=1))
    with pytest.raises(ExpiredResponse):
        check(der)


def test_tampered_signature_is_rejected() -> None:
    der = bytearray(CA.respond(SERIAL))
    der[-5] ^= 0x01
    with pytest.raises(InvalidResponse):
        check(bytes(der))


def test_delegated_responder_caps_validity_at_its_not_after() -> None:
    short = make_cert(
        subject="Short-lived responder",
        key=CA.responder_key,
        issuer=CA.cert,
        issuer_key=CA.key,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        not_after=now() + dt.timedelta(minutes=30),
    )
    ca = TestCA()
    ca.key, ca.cert, ca.responder, ca.responder_key = CA.key, CA.cert, short, CA.responder_key
    staple = check(ca.respond(SERIAL, signer="delegate", validity=dt.timedelta(hours=6)))
    assert staple.next_update == short.not_valid_after_utc


def _delegated(**cert: object) -> TestCA:
    """CA's issuer with a responder certificate made as told (key, not_before, not_after, sign_hash)."""
    key = _key()
    responder = make_cert(
        subject="Rotated responder",
        key=key,
        issuer=CA.cert,
        issuer_key=CA.key,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        **cert,  # type: ignore[arg-type]
    )
    ca = TestCA()
    ca.key, ca.cert, ca.responder, ca.responder_key = CA.key, CA.cert, responder, key
    return ca


def test_delegate_issued_after_a_backdated_this_update_is_accepted() -> None:
    """GlobalSign-style: responses pre-produced with thisUpdate hours before producedAt, signed by a
    delegate rotated in meanwhile. Valid when produced and now is what counts (OpenSSL checks the
    signer at the current time)."""
    ca = _delegated(not_before=now() - dt.timedelta(hours=1))
    der = ca.respond(
        SERIAL, signer="delegate", this_update=now() - dt.timedelta(hours=3), validity=dt.timedelta(days=1)
    )
    assert check(der).status is CertStatus.GOOD


def test_delegate_not_yet_valid_when_the_response_was_produced_is_rejected() -> None:
    ca = _delegated(not_before=now() + dt.timedelta(days=1))
    with pytest.raises(InvalidResponse, match="not valid when the response was produced"):
        check(ca.respond(SERIAL, signer="delegate"))


def test_delegate_expired_now_is_rejected() -> None:
    ca = _delegated(not_before=now() - dt.timedelta(days=2), not_after=now() + dt.timedelta(minutes=5))
    der = ca.respond(SERIAL, signer="delegate")
    check(der)  # valid now
    with pytest.raises(InvalidResponse, match="responder certificate not valid now"):
        check(der, at=now() + dt.timedelta(minutes=6))


def test_delegate_signed_with_sha1_is_accepted() -> None:
    """GlobalSign's and CAcert's delegates in OpenSSL's own OCSP tests are SHA-1-signed, and
    `openssl ocsp` verifies them."""
    ca = _delegated(sign_hash=hashes.SHA1())
    assert ca.responder.signature_hash_algorithm is not None
    assert ca.responder.signature_hash_algorithm.name == "sha1"
    assert check(ca.respond(SERIAL, signer="delegate")).status is CertStatus.GOOD


def test_delegate_of_another_issuer_is_not_issued_by_the_issuer() -> None:
    with pytest.raises(InvalidResponse, match="not issued by the issuer"):
        check(CA.respond(SERIAL, signer="rogue-included"))


@pytest.mark.parametrize(
    "digest", [hashes.SHA1(), hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]
)
def test_every_hash_openssl_verifies_is_accepted_ecdsa(digest: hashes.HashAlgorithm) -> None:
    assert check(CA.respond(SERIAL, sign_hash=digest)).status is CertStatus.GOOD


RSA = rsa_ca()
RSA_KEY = RSA.cert_id(SERIAL).key


def check_rsa(der: bytes) -> None:
    validate_response(der, key=RSA_KEY, issuer=RSA.cert, now=now(), skew=SKEW)


@pytest.mark.parametrize(
    "digest", [hashes.SHA1(), hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]
)
def test_every_hash_openssl_verifies_is_accepted_rsa(digest: hashes.HashAlgorithm) -> None:
    check_rsa(RSA.respond(SERIAL, sign_hash=digest))


@pytest.mark.parametrize(
    ("digest", "salt"),
    [
        (hashes.SHA256(), 32),
        (hashes.SHA256(), 0),
        (hashes.SHA256(), 222),
        (hashes.SHA1(), 20),
        (hashes.SHA384(), 48),
    ],
)
def test_rsassa_pss_is_accepted(digest: hashes.HashAlgorithm, salt: int) -> None:
    """`-rsigopt rsa_padding_mode:pss` (OpenSSL's default salt is the maximum: 222 for 2048 bits)."""
    check_rsa(RSA.respond(SERIAL, sign_hash=digest, pss_salt=salt))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"declared_salt": 30}, "bad signature"),  # the parameters name another salt length
        ({"trailer": 2}, "trailer field 2"),
    ],
)
def test_rsassa_pss_with_wrong_parameters_is_refused(change: dict[str, int], reason: str) -> None:
    der = RSA.respond(SERIAL)
    pss = resign_pss(der, RSA.key, hashes.SHA256(), salt=32, **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidResponse, match=reason):
        check_rsa(pss)


def test_md5_signatures_are_refused_although_openssl_still_verifies_them() -> None:
    """The one deliberate exception to "what openssl ocsp verifies is accepted" (see
    ocspproxy/core/signature.py); tests/test_vectors.py checks that OpenSSL does verify this one."""
    with pytest.raises(InvalidResponse, match="MD5 signatures are refused"):
        check_rsa(RSA.respond(SERIAL, sign_hash=hashes.MD5()))


def test_delegate_signed_with_md5_names_the_algorithm_not_the_issuer() -> None:
    key = _key()
    responder = make_cert(
        subject="MD5 responder",
        key=key,
        issuer=RSA.cert,
        issuer_key=RSA.key,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        sign_hash=hashes.MD5(),
    )
    ca = rsa_ca()
    ca.key, ca.cert, ca.responder, ca.responder_key = RSA.key, RSA.cert, responder, key
    with pytest.raises(InvalidResponse, match="responder certificate signature: MD5") as info:
        check_rsa(ca.respond(SERIAL, signer="delegate"))
    assert "not issued by the issuer" not in str(info.value)


def test_rsassa_pss_without_parameters_is_refused() -> None:
    der = RSA.respond(SERIAL, pss_salt=32)
    resp = ocsp.load_der_ocsp_response(der)
    bare = replace_signature(der, derbuild.sequence(derbuild.oid("1.2.840.113549.1.1.10")), resp.signature)
    with pytest.raises(InvalidResponse, match="RSASSA-PSS parameters unusable"):
        check_rsa(bare)


def test_signature_algorithm_of_another_key_kind_is_refused() -> None:
    """signatureAlgorithm is outside the signed bytes: an ECDSA OID on an RSA signature is refused."""
    der = RSA.respond(SERIAL)
    resp = ocsp.load_der_ocsp_response(der)
    swapped = replace_signature(der, derbuild.sequence(derbuild.oid("1.2.840.10045.4.3.2")), resp.signature)
    with pytest.raises(InvalidResponse, match="does not fit the signer's RSA key"):
        check_rsa(swapped)


@pytest.mark.parametrize("der", [b"", b"garbage", b"\x30\x03\x0a\x01\x03"])
def test_garbage_and_errors_are_invalid(der: bytes) -> None:
    with pytest.raises(InvalidResponse):
        check(der)
