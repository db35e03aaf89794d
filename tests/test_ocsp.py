"""Request parsing, GET decoding and error responses."""

from __future__ import annotations

import base64
import contextlib
import pickle
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.x509 import ocsp
from hypothesis import given
from hypothesis import strategies as st

from ocspproxy.core.ocsp import (
    CertKey,
    MalformedRequest,
    ResponseStatus,
    build_request,
    decode_get_path,
    error_response,
    parse_request,
)
from tests.pki import TestCA, pem

CA = TestCA()
SERIAL = 0x1234_5678_9ABC_DEF0_1234
DER = CA.request(SERIAL)


def test_parse_request_reads_the_certid() -> None:
    cert_id = parse_request(DER)
    assert cert_id == CA.cert_id(SERIAL)
    assert cert_id.key.alg == "sha1"


def test_parse_request_sha256() -> None:
    assert parse_request(CA.request(SERIAL, alg="sha256")) == CA.cert_id(SERIAL, "sha256")


def test_nonce_does_not_change_the_certid() -> None:
    assert parse_request(CA.request(SERIAL, nonce=True)) == parse_request(DER)


@pytest.mark.parametrize("bad", [b"", b"\x30", b"\x30\x03\x0a\x01\x00", DER[:-3], b"garbage" * 10])
def test_parse_request_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(bad)


def test_request_with_several_certids_is_malformed(tmp_path: Path) -> None:
    leaves = [CA.leaf(), CA.leaf()]
    (tmp_path / "ca.pem").write_bytes(pem(CA.cert))
    args = ["openssl", "ocsp", "-issuer", str(tmp_path / "ca.pem"), "-no_nonce"]
    args += ["-reqout", str(tmp_path / "r")]
    for i, leaf in enumerate(leaves):
        (tmp_path / f"{i}.pem").write_bytes(pem(leaf.cert))
        args += ["-cert", str(tmp_path / f"{i}.pem")]
    subprocess.run(args, check=True, capture_output=True)
    with pytest.raises(MalformedRequest, match="single"):
        parse_request((tmp_path / "r").read_bytes())


def test_build_request_round_trips() -> None:
    cert_id = CA.cert_id(SERIAL, "sha256")
    assert parse_request(build_request(cert_id.key, cert_id.issuer_name_hash)) == cert_id


B64 = base64.b64encode(DER).decode()


@pytest.mark.parametrize(
    "path",
    [
        "/" + B64,
        "/" + quote(B64, safe=""),  # fully percent-encoded
        "/" + B64.rstrip("="),  # padding dropped
        "/ocsp/" + B64,  # a path prefix
        "/a/b/c/" + quote(B64, safe="/"),
        "/" + base64.urlsafe_b64encode(DER).decode(),
        "/" + B64.replace("+", " "),  # '+' decoded to a space by something on the way
        "/" + B64 + "?ignored=1",
    ],
)
def test_decode_get_path_variants(path: str) -> None:
    assert decode_get_path(path) == DER


def test_decode_get_path_with_slash_in_base64() -> None:
    der = next(d for d in (CA.request(s) for s in range(1, 5000)) if "/" in base64.b64encode(d).decode())
    assert decode_get_path("/" + base64.b64encode(der).decode()) == der
    assert decode_get_path("/prefix/" + base64.b64encode(der).decode()) == der


@pytest.mark.parametrize("path", ["/", "/ocsp/", "/!!!", "/" + "A" * 100, "/" + "x" * 5000])
def test_decode_get_path_rejects(path: str) -> None:
    with pytest.raises(MalformedRequest):
        decode_get_path(path)


@given(st.text(max_size=300))
def test_decode_get_path_never_crashes(path: str) -> None:
    try:
        der = decode_get_path("/" + path)
    except MalformedRequest:
        return
    parse_request(der)  # whatever decodes is a parseable request


@given(st.binary(max_size=400))
def test_parse_request_never_crashes(data: bytes) -> None:
    with contextlib.suppress(MalformedRequest):
        parse_request(data)


@pytest.mark.parametrize(
    "status",
    [s for s in ResponseStatus if s is not ResponseStatus.SUCCESSFUL],
)
def test_error_responses_parse_with_the_right_status(status: ResponseStatus) -> None:
    parsed = ocsp.load_der_ocsp_response(error_response(status))
    assert parsed.response_status.value == status.value


def test_cert_keys_hash_equal_when_equal_and_survive_pickling() -> None:
    a = CertKey(alg="sha1", issuer_key_hash=bytes(20), serial=7)
    b = CertKey(alg="sha1", issuer_key_hash=bytes(20), serial=7)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != CertKey(alg="sha1", issuer_key_hash=bytes(20), serial=8)
    again = pickle.loads(pickle.dumps(a))
    assert again == a and hash(again) == hash(a) and repr(again) == repr(a)
