"""Response validation with a fixed clock."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from ocspproxy.staple import CertStatus
from ocspproxy.validate import ExpiredResponse, InvalidResponse, validate_response
from tests.pki import TestCA, _key, make_cert, now

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


def test_sha1_request_answered_with_sha256_certid_matches() -> None:
    assert check(CA.respond(SERIAL, alg="sha256")).key == KEY


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"signer": "rogue", "by_name": True}, "bad signature"),
        ({"signer": "rogue-included"}, "not issued by the issuer"),
        ({"signer": "undelegated"}, "OCSPSigning"),
        ({"signer": "root"}, "signer"),
        ({"serial_in_response": SERIAL + 1}, "CertID"),
        ({"issuer_for_certid": CA.root}, "CertID"),
        ({"validity": None}, "nextUpdate"),
        ({"this_update": now() + dt.timedelta(minutes=10)}, "future"),
    ],
)
def test_rejections(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidResponse, match=reason):
        check(CA.respond(SERIAL, **kwargs))  # type: ignore[arg-type]


def test_this_update_within_skew_is_accepted() -> None:
    check(CA.respond(SERIAL, this_update=now() + dt.timedelta(minutes=4)))


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


def test_delegated_responder_not_yet_valid_at_this_update_is_rejected() -> None:
    key = _key()
    later = make_cert(
        subject="Future responder",
        key=key,
        issuer=CA.cert,
        issuer_key=CA.key,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        not_before=now() + dt.timedelta(days=1),
    )
    ca = TestCA()
    ca.key, ca.cert, ca.responder, ca.responder_key = CA.key, CA.cert, later, key
    with pytest.raises(InvalidResponse, match="not valid at thisUpdate"):
        check(ca.respond(SERIAL, signer="delegate"))


@pytest.mark.parametrize("der", [b"", b"garbage", b"\x30\x03\x0a\x01\x03"])
def test_garbage_and_errors_are_invalid(der: bytes) -> None:
    with pytest.raises(InvalidResponse):
        check(der)
