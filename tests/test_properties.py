"""Property tests of the three parsers that face untrusted input, and a short run of each fuzz target.

- ``decode_get_path`` (client GET paths) and ``parse_request`` (client POST bodies) raise nothing but
  ``MalformedRequest`` on any text or bytes, and every GET encoding of a valid request decodes to exactly
  its DER.
- ``validate_response`` (upstream answers) raises nothing but ``InvalidResponse``, and a mutated response
  it accepts must still verify by an independent check (``fuzz.verify.independent_problems``); nothing it
  accepts for one certificate is accepted for another serial or another issuer.

The invariants live in ``fuzz/oracle.py`` and are shared with the atheris targets in ``fuzz/``. The
bugs these properties found in ocspproxy (all fixed) are pinned by the regression tests at the end of
the property section.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fuzz import der, harness, oracle, verify
from fuzz.oracle import GetEncoding, ResponseContext
from ocspproxy.core.ocsp import CertKey, MalformedRequest, build_request, decode_get_path, parse_request
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.core.validate import InvalidResponse, validate_response
from tests.pki import TestCA, _key, make_cert, now

ROOT = Path(__file__).resolve().parent.parent
CA, CA2 = TestCA(), TestCA()
SERIAL = 0x0123_4567_89AB_CDEF
NOW = now()
SKEW = dt.timedelta(seconds=300)


def fast(examples: int) -> settings:
    """Hypothesis settings: a fixed number of examples, no per-example deadline (CI machines vary)."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def respond(ca: TestCA, serial: int, **kwargs: Any) -> bytes:
    """ca.respond with thisUpdate a minute before NOW (the clock every check here uses)."""
    kwargs.setdefault("this_update", NOW - dt.timedelta(minutes=1))
    return ca.respond(serial, **kwargs)


def key_of(ca: TestCA, serial: int, alg: str = "sha1") -> CertKey:
    return ca.cert_id(serial, alg).key


CTX = ResponseContext(
    key=key_of(CA, SERIAL),
    issuer=CA.cert,
    responders=[CA.responder],
    now=NOW,
    skew=SKEW,
    others=[
        (key_of(CA, SERIAL + 1), CA.cert, [CA.responder]),
        (key_of(CA, SERIAL - 1), CA.cert, [CA.responder]),
        (key_of(CA2, SERIAL), CA2.cert, [CA2.responder]),
    ],
)
VALID = {
    "issuer": respond(CA, SERIAL),
    "issuer-revoked": respond(CA, SERIAL, status="revoked"),
    "issuer-unknown": respond(CA, SERIAL, status="unknown"),
    "issuer-by-name": respond(CA, SERIAL, by_name=True),
    "issuer-sha1-signature": respond(CA, SERIAL, sign_hash=hashes.SHA1()),
    "issuer-sha224-signature": respond(CA, SERIAL, sign_hash=hashes.SHA224()),
    "no-next-update": respond(CA, SERIAL, validity=None),
    "delegate": respond(CA, SERIAL, signer="delegate"),
    "delegate-sha512-signature-by-name": respond(
        CA, SERIAL, signer="delegate", sign_hash=hashes.SHA512(), by_name=True
    ),
}
INVALID = {
    "rogue": respond(CA, SERIAL, signer="rogue", by_name=True),
    "rogue-included": respond(CA, SERIAL, signer="rogue-included"),
    "undelegated": respond(CA, SERIAL, signer="undelegated"),
    "root": respond(CA, SERIAL, signer="root"),
    "other-serial": respond(CA, SERIAL, serial_in_response=SERIAL + 2),
    "other-issuer": respond(CA2, SERIAL),
    "certid-of-root": respond(CA, SERIAL, issuer_for_certid=CA.root),
    "expired": respond(CA, SERIAL, this_update=NOW - dt.timedelta(hours=2)),
    "no-next-update-too-old": respond(CA, SERIAL, this_update=NOW - dt.timedelta(hours=2), validity=None),
    "future": respond(CA, SERIAL, this_update=NOW + dt.timedelta(minutes=10)),
    "sha256-certid-for-sha1": respond(CA, SERIAL, alg="sha256", by_name=True),
    "serverauth-delegate": respond(CA, SERIAL, signer="serverauth"),
    "wrong-name-hash": respond(CA, SERIAL, wrong_name_hash=True),
}
RESPONSES = [*VALID.values(), *INVALID.values()]
REQUESTS = [
    CA.request(SERIAL),
    CA.request(SERIAL, "sha256", nonce=True),
    CA.request(0, "sha384"),
    CA.request(2**159, "sha512", nonce=True),
]


def validate(data: bytes, key: CertKey = CTX.key, issuer: TestCA = CA) -> Staple:
    return validate_response(data, key=key, issuer=issuer.cert, now=NOW, skew=SKEW)


def mutations(bases: list[bytes], max_ops: int = 3) -> st.SearchStrategy[bytes]:
    """A base input with 1..max_ops of fuzz.harness.MUTATIONS applied."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(st.sampled_from(bases))
        for _ in range(draw(st.integers(1, max_ops))):
            op = draw(st.sampled_from(harness.MUTATIONS))
            pos, value = draw(st.integers(0, 1 << 16)), draw(st.integers(0, 1 << 32))
            data = harness.mutate(data, op, pos, value, draw(st.sampled_from(bases)))
        return data

    return build()


def nested(depth: int, style: str, tag: int = 0x30, core: bytes = b"") -> bytes:
    """depth nested headers of tag around core: consistent lengths ("definite"), the same one octet
    short ("short"), indefinite lengths, or four-octet lengths of 0xFFFFFFFF ("huge")."""
    if style == "indefinite":
        return bytes([tag, 0x80]) * depth + core + b"\x00\x00" * depth
    if style == "huge":
        return bytes([tag, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]) * depth + core
    headers, size = [], len(core)
    for _ in range(depth):
        header = der.header(tag, size)
        headers.append(header)
        size += len(header)
    data = b"".join(reversed(headers)) + core
    return data[:-1] if style == "short" else data


def test_nested_helper_builds_consistent_der() -> None:
    data = nested(300, "definite", core=b"\x05\x00")
    assert der.parse(data).end == len(data) and len(list(der.walk(data, max_depth=400))) == 301


# ------------------------------------------------------------------------------------- GET paths

PATH_TOKENS = [
    *"/%+= ?#&;-_.~AZaz09\n\t\x00é",
    "//",
    "%2",
    "%2F",
    "%2f",
    "%41",
    "%00",
    "%zz",
    "%C3%A9",
    "%FF",
    "%25",
    "%3D%3D",
    "MEIw",
    "ocsp",
    "==",
    "\udcff",
    "\U0001f600",
]


@fast(300)
@given(st.one_of(st.text(max_size=600), st.lists(st.sampled_from(PATH_TOKENS), max_size=300).map("".join)))
def test_get_path_any_text_is_decoded_or_malformed(path: str) -> None:
    oracle.check_get_path(path)
    oracle.check_get_path("/" + path, max_length=1 << 20)


@fast(30)
@given(st.lists(st.text(alphabet="AB+/%41=-_", max_size=6), min_size=100, max_size=400))
def test_get_path_with_many_segments(segments: list[str]) -> None:
    # Up to ~3 KiB here; the 16 KiB case is a regression test below (decoding was once quadratic).
    oracle.check_get_path("/" + "/".join(segments))


@fast(25)
@given(
    st.lists(
        # Few '/' (decode_get_path is quadratic in segments); long segments of anything else.
        st.tuples(st.sampled_from(["A", "MEIw", "%41", "+", "%2F", "=", "é", "?"]), st.integers(1, 35_000)),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from([4096, 1 << 20]),
    st.booleans(),
)
def test_get_path_of_100_kib(chunks: list[tuple[str, int]], max_length: int, with_request: bool) -> None:
    path = "/" + "/".join(chunk * count for chunk, count in chunks)[: 100 * 1024]
    if with_request:
        path += "/" + base64.b64encode(REQUESTS[0]).decode()
    decoded = oracle.check_get_path(path, max_length=max_length)
    if max_length < len(path):
        assert decoded is None  # "too long", before any work
    elif with_request and "?" not in path:
        assert decoded == REQUESTS[0]


ENCODINGS = st.builds(
    GetEncoding,
    urlsafe=st.booleans(),
    padding=st.booleans(),
    percent=st.one_of(
        st.just(()), st.just((True,)), st.lists(st.booleans(), min_size=1, max_size=64).map(tuple)
    ),
    lower_hex=st.booleans(),
    plus_as_space=st.booleans(),
    prefix=st.lists(st.text(alphabet=oracle.PREFIX_ALPHABET, max_size=10), max_size=4).map(tuple),
    query=st.sampled_from(["", "a=b", "x=%2F/MEIw&y", "?"]),
).filter(GetEncoding.valid)


@fast(300)
@given(
    st.integers(0, 2**159),
    st.sampled_from(["sha1", "sha256", "sha384", "sha512"]),
    st.booleans(),
    ENCODINGS,
)
@example(2**159, "sha1", False, GetEncoding(prefix=("MEIw", "ocsp"), percent=(True,)))
@example(0, "sha512", True, GetEncoding(urlsafe=True, padding=False, prefix=("abc",)))
def test_every_get_encoding_of_a_request_decodes_to_its_der(
    serial: int, alg: str, nonce: bool, enc: GetEncoding
) -> None:
    request = CA.request(serial, alg, nonce=nonce)
    oracle.check_get_round_trip(request, enc)


@pytest.mark.parametrize("request_der", REQUESTS, ids=["sha1", "sha256-nonce", "sha384-0", "sha512-2^159"])
def test_get_path_of_every_truncated_request_is_malformed(request_der: bytes) -> None:
    for end in range(len(request_der)):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            assert oracle.check_get_path("/ocsp/" + encode(request_der[:end]).decode()) is None


# ---------------------------------------------------------------------------------- DER requests


@fast(300)
@given(st.binary(max_size=1000))
def test_request_any_bytes_are_parsed_or_malformed(data: bytes) -> None:
    oracle.check_request(data)


@fast(400)
@given(mutations(REQUESTS))
def test_mutated_requests_are_parsed_or_malformed(data: bytes) -> None:
    event("parsed" if oracle.check_request(data) is not None else "malformed")


@pytest.mark.parametrize("request_der", REQUESTS, ids=["sha1", "sha256-nonce", "sha384-0", "sha512-2^159"])
def test_every_truncated_request_is_malformed(request_der: bytes) -> None:
    assert oracle.check_request(request_der) is not None
    for end in range(len(request_der)):
        with pytest.raises(MalformedRequest):
            parse_request(request_der[:end])


@fast(30)
@given(
    st.integers(1, 12_000),
    st.sampled_from(["definite", "short", "indefinite", "huge"]),
    st.sampled_from([0x30, 0x31, 0xA0, 0xA2, 0x24]),
    st.sampled_from([b"", REQUESTS[0], b"\x05\x00"]),
)
@example(10_000, "definite", 0x30, b"")
@example(10_000, "definite", 0x30, REQUESTS[0])
@example(10_000, "indefinite", 0x30, b"")
@example(10_000, "huge", 0x30, b"")
def test_deeply_nested_der_is_malformed(depth: int, style: str, tag: int, core: bytes) -> None:
    data = nested(depth, style, tag, core)
    assert oracle.check_request(data) is None
    # URL-safe base64: no '/' (std base64 of these headers has many, and decode_get_path is quadratic
    # in path segments: see test_decode_get_path_of_a_16_kib_path_with_many_segments_is_fast).
    assert oracle.check_get_path("/" + base64.urlsafe_b64encode(data).decode(), max_length=1 << 20) is None
    assert oracle.check_response(data, CTX) is None


@fast(200)
@given(
    st.sampled_from([*REQUESTS, *RESPONSES[:2]]),
    st.integers(0, 1 << 16),
    st.integers(1, 8),
    st.integers(0, (1 << 64) - 1),
)
@example(REQUESTS[0], 0, 4, 0xFFFF_FFFF)
@example(REQUESTS[0], 0, 8, (1 << 64) - 1)
def test_huge_length_fields_are_malformed(base: bytes, pos: int, octets: int, length: int) -> None:
    """Give one DER element (chosen by pos) a long-form length of any value."""
    nodes = list(der.walk(base))
    node = nodes[pos % len(nodes)]
    value = (length % (1 << (8 * octets))).to_bytes(octets, "big")
    data = base[: node.start + 1] + bytes([0x80 | octets]) + value + base[node.body :]
    oracle.check_request(data)
    oracle.check_response(data, CTX)


# ------------------------------------------------------------------------------------ responses


def test_fixture_responses_are_accepted_or_rejected_as_labelled() -> None:
    for name, data in VALID.items():
        staple = oracle.check_response(data, CTX)
        assert staple is not None, name
        assert problems(data, staple) == [], name
    for name, data in INVALID.items():
        with pytest.raises(InvalidResponse):
            validate(data)
        assert oracle.check_response(data, CTX) is None, name


def problems(data: bytes, staple: Staple) -> list[str]:
    return verify.independent_problems(
        data, key=CTX.key, issuer=CA.cert, responders=[CA.responder], now=NOW, skew=SKEW, staple=staple
    )


def _staple_as_if_accepted(data: bytes) -> Staple:
    """What validate_response would have returned had it accepted data (to test the oracle)."""
    resp = x509_ocsp.load_der_ocsp_response(data)
    single = next(iter(resp.responses))
    return Staple(
        key=CTX.key,
        der=data,
        status=CertStatus(single.certificate_status.name.lower()),
        this_update=single.this_update_utc,
        next_update=single.next_update_utc or NOW + dt.timedelta(hours=1),
        produced_at=resp.produced_at_utc,
        revocation_time=single.revocation_time_utc,
    )


@pytest.mark.parametrize("name", INVALID)
def test_the_oracle_refuses_every_invalid_fixture(name: str) -> None:
    """The independent check is only worth something if it catches what ocspproxy must reject."""
    data = INVALID[name]
    assert problems(data, _staple_as_if_accepted(data)) != []


@fast(600)
@given(mutations(RESPONSES))
def test_mutated_responses_are_rejected_or_really_verify(data: bytes) -> None:
    """The property that matters: nothing accepted unless it still verifies (no forged staple)."""
    before = oracle.STATS["response.requested.accepted_known_bug"]
    staple = oracle.check_response(data, CTX)
    if staple is None:
        event("rejected")
    elif oracle.STATS["response.requested.accepted_known_bug"] > before:
        event("accepted with a known bug (see KNOWN_BUGS)")
    else:
        event("accepted and verified independently")


@fast(150)
@given(
    st.sampled_from(list(VALID)),
    st.one_of(st.integers(-(2**64), -1), st.integers(1, 2**64)),
    st.sampled_from(["sha1", "sha256"]),
)
def test_accepted_for_one_certificate_never_for_another(name: str, delta: int, alg: str) -> None:
    data = VALID[name]
    assert validate(data).key == CTX.key
    with pytest.raises(InvalidResponse):
        validate(data, key=key_of(CA, SERIAL + delta, alg))
    with pytest.raises(InvalidResponse):
        validate(data, key=key_of(CA2, SERIAL, alg), issuer=CA2)
    with pytest.raises(InvalidResponse):
        validate(data, key=key_of(CA2, SERIAL + delta, alg), issuer=CA2)


@pytest.mark.parametrize("name", list(VALID))
def test_every_truncated_response_is_rejected(name: str) -> None:
    data = VALID[name]
    for end in range(len(data)):
        assert oracle.check_response(data[:end], CTX) is None


# --------------------------------------------------------------- regressions: bugs these properties found


def _signature_bit_strings(data: bytes) -> list[der.Tlv]:
    """The ECDSA signature BIT STRINGs in a response: the response's first, then its certificates'."""
    return [n for n in der.walk(data) if n.tag == der.BIT_STRING and n.content[:2] == b"\x00\x30"]


def _with_unused_bits(data: bytes, node: der.Tlv) -> bytes:
    last = data[node.end - 1]
    unused = min(7, (last & -last).bit_length() - 1) if last else 7  # as many as are zero
    assert unused >= 1, "needs a signature whose last octet is even"
    return data[: node.body] + bytes([unused]) + data[node.body + 1 :]


def _even_signature(make: Callable[[], bytes]) -> bytes:
    for _ in range(64):
        data = make()
        if not data[_signature_bit_strings(data)[0].end - 1] & 1:
            return data
    raise AssertionError("no signature ending in an even octet in 64 tries")


@pytest.mark.parametrize("signer", ["issuer", "delegate"])
def test_response_signature_with_unused_bits_is_rejected(signer: str) -> None:
    data = _even_signature(lambda: respond(CA, SERIAL, signer=signer))
    mutated = _with_unused_bits(data, _signature_bit_strings(data)[0])
    validate(data)
    with pytest.raises(InvalidResponse):
        validate(mutated)


def test_responder_certificate_signature_with_unused_bits_is_rejected() -> None:
    for _ in range(64):
        key = _key()
        cert = make_cert(
            subject="Responder",
            key=key,
            issuer=CA.cert,
            issuer_key=CA.key,
            eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        )
        ca = TestCA()
        ca.key, ca.cert, ca.responder, ca.responder_key = CA.key, CA.cert, cert, key
        data = respond(ca, SERIAL, signer="delegate")
        cert_sig = _signature_bit_strings(data)[1]
        if not data[cert_sig.end - 1] & 1:
            break
    mutated = _with_unused_bits(data, cert_sig)
    validate(data)
    with pytest.raises(InvalidResponse):
        validate(mutated)


def _rewrap(data: bytes, signature_algorithm: bytes) -> bytes:
    """data with BasicOCSPResponse.signatureAlgorithm (which no signature covers) replaced."""
    status, wrapped = der.children(der.parse(data))
    (response_bytes,) = der.children(wrapped)
    oid, octets = der.children(response_bytes)
    tbs, _alg, *rest = der.children(der.parse(octets.content))
    basic = der.encode(0x30, tbs.raw + signature_algorithm + b"".join(r.raw for r in rest))
    return der.encode(
        0x30, status.raw + der.encode(0xA0, der.encode(0x30, oid.raw + der.encode(0x04, basic)))
    )


SHA256_WITH_RSA = der.encode(0x30, der.encode(0x06, bytes.fromhex("2a864886f70d01010b")) + b"\x05\x00")


def test_rewrap_helper_keeps_a_response_intact() -> None:
    data = VALID["delegate"]
    algorithm = der.children(
        der.parse(der.children(der.children(der.children(der.parse(data))[1])[0])[1].content)
    )[1]
    assert _rewrap(data, algorithm.raw) == data


@pytest.mark.parametrize("signer", ["issuer", "delegate"])
def test_signature_algorithm_must_match_the_signer_key(signer: str) -> None:
    data = respond(CA, SERIAL, signer=signer)
    validate(data)
    with pytest.raises(InvalidResponse):
        validate(_rewrap(data, SHA256_WITH_RSA))


def test_name_with_a_bit_string_value_is_an_invalid_response() -> None:
    data = respond(CA, SERIAL, by_name=True)
    validate(data)
    responder_id = next(n for n in der.walk(data) if n.tag == 0xA1)
    value = next(n for n in der.walk(data) if n.tag == 0x0C and n.start > responder_id.start)
    mutated = data[: value.start] + b"\x03" + data[value.start + 1 :]
    with pytest.raises(InvalidResponse):
        validate(mutated)


def _negative_serial_request() -> bytes:
    data = CA.request(0x1234)
    serial = next(n for n in der.walk(data) if n.tag == 0x02 and n.content == b"\x12\x34")
    return data[: serial.body] + b"\x92\x34" + data[serial.end :]


def test_negative_serial_is_malformed_or_can_be_fetched() -> None:
    try:
        cert_id = parse_request(_negative_serial_request())
    except MalformedRequest:
        return
    build_request(cert_id.key, cert_id.issuer_name_hash)


class _TooSlow(Exception):
    pass


def _within(seconds: float, func: Callable[[], object]) -> None:
    """Run func, raising _TooSlow once it has taken longer than seconds (main thread: SIGALRM)."""
    if threading.current_thread() is not threading.main_thread():
        started = time.perf_counter()
        func()
        if time.perf_counter() - started > seconds:
            raise _TooSlow
        return

    def alarm(_signum: int, _frame: object) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        func()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_decode_get_path_of_a_long_path_with_few_segments_is_fast() -> None:
    path = "/" + "%41" * 5000 + "/" + base64.b64encode(REQUESTS[0]).decode()
    _within(0.5, lambda: decode_get_path(path, max_length=16 * 1024))


def test_decode_get_path_of_a_16_kib_path_with_many_segments_is_fast() -> None:
    path = "/" + "%41/" * 4095

    def decode() -> None:
        with pytest.raises(MalformedRequest):
            decode_get_path(path, max_length=16 * 1024)

    _within(0.5, decode)


def _two_singles_signed_by(ca: TestCA, first: bytes, second: bytes) -> bytes:
    """A delegate-signed response whose SingleResponses are those of first and second, re-signed."""

    def parts(data: bytes) -> tuple[der.Tlv, der.Tlv, list[der.Tlv]]:
        status, wrapped = der.children(der.parse(data))
        (response_bytes,) = der.children(wrapped)
        oid, octets = der.children(response_bytes)
        return status, oid, der.children(der.parse(octets.content))

    status, oid, basic = parts(first)
    fields = der.children(basic[0])
    singles = [der.children(der.children(parts(d)[2][0])[2])[0].raw for d in (first, second)]
    tbs = der.encode(0x30, fields[0].raw + fields[1].raw + der.encode(0x30, b"".join(singles)))
    signature = ca.responder_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    body = der.encode(0x30, tbs + basic[1].raw + der.encode(0x03, b"\x00" + signature) + basic[3].raw)
    return der.encode(0x30, status.raw + der.encode(0xA0, der.encode(0x30, oid.raw + der.encode(0x04, body))))


def _delegate_from(not_before: dt.datetime) -> TestCA:
    key = _key()
    cert = make_cert(
        subject="Rotated responder",
        key=key,
        issuer=CA.cert,
        issuer_key=CA.key,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        not_before=not_before,
    )
    ca = TestCA()
    ca.key, ca.cert, ca.responder, ca.responder_key = CA.key, CA.cert, cert, key
    return ca


def test_delegate_rotated_after_a_backdated_this_update_is_accepted() -> None:
    """A delegate valid from 10 minutes ago signs (now) a response whose thisUpdate is an hour old:
    valid when produced and now, so accepted, alone or beside another SingleResponse."""
    ca = _delegate_from(NOW - dt.timedelta(minutes=10))
    ours = respond(
        ca, SERIAL, signer="delegate", this_update=NOW - dt.timedelta(hours=1), validity=dt.timedelta(hours=3)
    )
    other = respond(ca, SERIAL + 5, signer="delegate")
    assert validate(ours).next_update == NOW + dt.timedelta(hours=2)
    assert validate(_two_singles_signed_by(ca, other, ours)).status is CertStatus.GOOD


def test_delegate_not_yet_valid_when_the_response_was_produced_is_refused() -> None:
    """Signed before the delegate's notBefore (producedAt is the signing time): refused, even once
    the delegate has become valid."""
    ca = _delegate_from(NOW + dt.timedelta(minutes=10))
    ours = respond(ca, SERIAL, signer="delegate", validity=dt.timedelta(hours=3))
    for at in (NOW, NOW + dt.timedelta(minutes=20)):
        with pytest.raises(InvalidResponse, match="not valid when the response was produced"):
            validate_response(ours, key=CTX.key, issuer=CA.cert, now=at, skew=SKEW)
    assert oracle.check_response(ours, CTX) is None


# ------------------------------------------------------------------------------------- fuzz targets

TARGETS = ["fuzz_get_path", "fuzz_request", "fuzz_response"]
FUZZ_SECONDS = 3
FALLBACK_INPUTS = 300


def test_fuzz_seeds_are_what_they_claim() -> None:
    """The committed PKI and seeds still fit each other (so fuzz_response starts from valid answers)."""
    ctx = oracle.load_context()
    for path in sorted((oracle.CORPUS_DIR / "fuzz_response").iterdir()):
        staple = oracle.check_response(path.read_bytes(), ctx)
        assert (staple is not None) == path.name.startswith(("issuer-", "delegate-")), path.name
    for path in sorted((oracle.CORPUS_DIR / "fuzz_request").iterdir()):
        parsed = oracle.check_request(path.read_bytes())
        assert (parsed is not None) == path.name.startswith("sha"), path.name
    for path in sorted((oracle.CORPUS_DIR / "fuzz_get_path").iterdir()):
        decoded = oracle.check_get_path(path.read_text())
        assert (decoded is not None) == (path.name != "junk"), path.name


def test_fuzz_run_script_is_valid_bash() -> None:
    script = ROOT / "fuzz" / "run"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.fixture(scope="module", autouse=True)
def atheris_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], Path]]]:
    """Each target under atheris for FUZZ_SECONDS, all three at once, started with the module's first
    test so they run alongside the properties; {} when atheris is missing."""
    if not harness.atheris_available():
        yield {}
        return
    runs = {}
    for target in TARGETS:
        work = tmp_path_factory.mktemp(target)
        (work / "corpus").mkdir()
        with (work / "log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"fuzz.{target}",
                    f"-max_total_time={FUZZ_SECONDS}",
                    "-print_final_stats=1",
                    f"-artifact_prefix={work}/",
                    str(work / "corpus"),
                    str(oracle.CORPUS_DIR / target),
                ],
                cwd=ROOT,
                env={**os.environ, "FUZZ_STATS": str(work / "stats.json")},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        runs[target] = (proc, work)
    yield runs
    for proc, _work in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(target: str, atheris_runs: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Runs the harness in-process over its seeds and random inputs (what CI can always do), then
    checks the atheris run of it; never skipped: without atheris the in-process run is the test."""
    module = importlib.import_module(f"fuzz.{target}")
    ran = harness.run_without_atheris(module.one_input, target, FALLBACK_INPUTS, seed=len(target))
    assert ran > FALLBACK_INPUTS
    if not atheris_runs:
        message = f"atheris is not importable: {target} ran in-process over seeds + {FALLBACK_INPUTS} inputs"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; scripts/test installs it (.[fuzz]) for the short CI run")
        warnings.warn(message, stacklevel=1)
        return
    proc, work = atheris_runs[target]
    proc.wait(timeout=FUZZ_SECONDS + 60)
    log = (work / "log").read_text(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    runs = [line for line in log.splitlines() if line.startswith("Done ")]
    assert runs and int(runs[-1].split()[1]) > 0, log[-2000:]
    stats = json.loads((work / "stats.json").read_text())
    assert stats.get("response.accepted_invalid", 0) == 0
