"""Invariants of the three untrusted-input parsers, shared by the atheris targets and the hypothesis
properties in ``tests/test_properties.py``.

* ``check_get_path``: ``decode_get_path`` raises nothing but ``MalformedRequest``, and whatever it returns
  is a request ``check_request`` accepts.
* ``check_request``: ``parse_request`` raises nothing but ``MalformedRequest``; a CertId it returns agrees
  with ``cryptography``'s own reading and survives ``build_request``.
* ``check_response``: ``validate_response`` raises nothing but ``InvalidResponse``, and every response it
  accepts — for the requested certificate or for any other — passes ``independent_problems``, a second
  verification written from RFC 6960 with the strict DER reader in ``fuzz/der.py`` (only the signature
  arithmetic comes from ``cryptography``). An accepted response that fails it is a forged or broken
  staple ocspproxy would serve.

A violated invariant raises ``InvariantViolation`` (an ``AssertionError``): a crash for the fuzzer, a
failure for pytest. Problems already reported against ocspproxy are listed in ``KNOWN_BUGS``; they are
counted in ``STATS`` instead of failing, unless ``FUZZ_STRICT=1``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from fuzz.verify import independent_problems
from ocspproxy.core.ocsp import (
    HASH_ALGORITHMS,
    CertId,
    CertKey,
    MalformedRequest,
    build_request,
    decode_get_path,
    issuer_key_hash,
    parse_request,
)
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import InvalidResponse, validate_response

__all__ = [
    "KNOWN_BUGS",
    "STATS",
    "GetEncoding",
    "InvariantViolation",
    "ResponseContext",
    "check_get_path",
    "check_get_round_trip",
    "check_request",
    "check_response",
    "encode_get_path",
    "load_context",
    "make_request",
]

FUZZ_DIR = Path(__file__).resolve().parent

# Problems ocspproxy is known to accept, tolerated by the checks until fixed (see fuzz/README.md).
# Every bug found so far is fixed and pinned by a regression test in tests/test_properties.py.
KNOWN_BUGS: frozenset[str] = frozenset()

# What the checks saw; the fuzz targets print it, the tests assert on it.
STATS: Counter[str] = Counter()


class InvariantViolation(AssertionError):
    """An invariant of the parsers does not hold: a bug in ocspproxy (or in this oracle)."""


# ---------------------------------------------------------------------------------------------- requests


def check_request(data: bytes) -> CertId | None:
    """parse_request(data) raises only MalformedRequest; a CertId it returns is consistent."""
    try:
        cert_id = parse_request(data)
    except MalformedRequest:
        STATS["request.malformed"] += 1
        return None
    except Exception as exc:
        raise InvariantViolation(f"parse_request raised {type(exc).__name__}: {exc}") from exc
    STATS["request.parsed"] += 1
    key = cert_id.key
    if key.alg not in HASH_ALGORITHMS:
        raise InvariantViolation(f"CertId with hash algorithm {key.alg!r}")
    size = hashlib.new(key.alg).digest_size
    if len(key.issuer_key_hash) != size or len(cert_id.issuer_name_hash) != size:
        raise InvariantViolation("CertId hash lengths do not match the algorithm")
    theirs = x509_ocsp.load_der_ocsp_request(data)  # parse_request accepted it, so this must load too
    if (theirs.serial_number, theirs.issuer_key_hash, theirs.issuer_name_hash) != (
        key.serial,
        key.issuer_key_hash,
        cert_id.issuer_name_hash,
    ):
        raise InvariantViolation("parse_request disagrees with cryptography about the CertID")
    if key.serial < 0 and "negative-serial" in KNOWN_BUGS:
        STATS["request.known_bug.negative-serial"] += 1
        return cert_id
    try:
        again = parse_request(build_request(key, cert_id.issuer_name_hash))
    except Exception as exc:
        raise InvariantViolation(f"build_request of a parsed CertId does not parse: {exc!r}") from exc
    if again != cert_id:
        raise InvariantViolation("build_request/parse_request round trip changed the CertId")
    return cert_id


# --------------------------------------------------------------------------------------------- GET paths


def check_get_path(path: str, *, max_length: int = 4096) -> bytes | None:
    """decode_get_path raises only MalformedRequest; what it returns is a request parse_request reads."""
    try:
        data = decode_get_path(path, max_length=max_length)
    except MalformedRequest:
        STATS["get.malformed"] += 1
        return None
    except Exception as exc:
        raise InvariantViolation(f"decode_get_path raised {type(exc).__name__}: {exc}") from exc
    STATS["get.decoded"] += 1
    if check_request(data) is None:
        raise InvariantViolation("decode_get_path returned bytes parse_request rejects")
    return data


# Characters a path prefix is built from (RFC 3986 unreserved and a few sub-delims). Prefixes are kept
# far shorter than any base64 OCSP request (>= 80 characters), so none can be one by itself.
PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*,;=:@"
MAX_PREFIX = 48


@dataclass(frozen=True)
class GetEncoding:
    """One way a client may put a DER request into an RFC 6960 GET path."""

    urlsafe: bool = False
    padding: bool = True
    # Per base64 character (cycled): percent-encode it? Empty: none; (True,): all of them.
    percent: tuple[bool, ...] = ()
    lower_hex: bool = False
    plus_as_space: bool = False  # a '+' decoded to ' ' by something on the way (std base64 only)
    prefix: tuple[str, ...] = ()  # path segments before the base64
    query: str = ""

    def valid(self) -> bool:
        prefix = "/".join(self.prefix)
        return len(prefix) <= MAX_PREFIX and all(c in PREFIX_ALPHABET for c in prefix.replace("/", ""))


def encode_get_path(data: bytes, enc: GetEncoding) -> str:
    text = (base64.urlsafe_b64encode if enc.urlsafe else base64.b64encode)(data).decode()
    if not enc.padding:
        text = text.rstrip("=")
    if enc.plus_as_space and not enc.urlsafe:
        text = text.replace("+", " ")
    if enc.percent:
        out = []
        for i, char in enumerate(text):
            if enc.percent[i % len(enc.percent)] or char == " ":
                escaped = quote(char, safe="")
                if escaped == char:
                    escaped = f"%{ord(char):02X}"
                out.append(escaped.lower() if enc.lower_hex else escaped)
            else:
                out.append(char)
        text = "".join(out)
    elif " " in text:
        text = text.replace(" ", "%20")
    path = "/" + "".join(segment + "/" for segment in enc.prefix) + text
    return path + ("?" + enc.query if enc.query else "")


def make_request(issuer: x509.Certificate, serial: int, alg: str = "sha1", *, nonce: bool = False) -> bytes:
    """A DER OCSP request for ``serial`` under ``issuer`` (as tests/pki.py TestCA.request builds it)."""
    name_hash = hashlib.new(alg, issuer.subject.public_bytes()).digest()
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, issuer_key_hash(issuer, alg), serial, HASH_ALGORITHMS[alg]()
    )
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(b"0123456789abcdef"), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def check_get_round_trip(data: bytes, enc: GetEncoding) -> str:
    """A valid request ``data`` put into a GET path as ``enc`` says decodes to exactly ``data``."""
    path = encode_get_path(data, enc)
    try:
        decoded = decode_get_path(path, max_length=max(4096, len(path)))
    except Exception as exc:
        raise InvariantViolation(f"decode_get_path({path!r}) raised {type(exc).__name__}: {exc}") from exc
    if decoded != data:
        raise InvariantViolation(f"decode_get_path({path!r}) returned other bytes than the request")
    STATS["get.round_trip"] += 1
    return path


# --------------------------------------------------------------------------------------------- responses


@dataclass
class ResponseContext:
    """What a response is checked against: the certificate asked for, its issuer, the responder
    certificates that issuer really delegated to, the clock, and other certificates (other serials,
    other issuers) the same bytes must never be accepted for."""

    key: CertKey
    issuer: x509.Certificate
    responders: Sequence[x509.Certificate]
    now: dt.datetime
    skew: dt.timedelta = dt.timedelta(seconds=300)
    without_next_update: dt.timedelta = dt.timedelta(hours=1)
    others: Sequence[tuple[CertKey, x509.Certificate, Sequence[x509.Certificate]]] = ()


def check_response(data: bytes, ctx: ResponseContext) -> Staple | None:
    """validate_response raises only InvalidResponse, and accepts nothing the independent check refuses,
    neither for ctx.key nor for any of ctx.others. Returns the staple accepted for ctx.key, if any."""
    accepted = _validate_checked(data, ctx.key, ctx.issuer, ctx.responders, ctx, "requested")
    for key, issuer, responders in ctx.others:
        _validate_checked(data, key, issuer, responders, ctx, "other")
    return accepted


def _validate_checked(
    data: bytes,
    key: CertKey,
    issuer: x509.Certificate,
    responders: Sequence[x509.Certificate],
    ctx: ResponseContext,
    which: str,
) -> Staple | None:
    try:
        staple = validate_response(
            data,
            key=key,
            issuer=issuer,
            now=ctx.now,
            skew=ctx.skew,
            without_next_update=ctx.without_next_update,
        )
    except InvalidResponse:
        STATS[f"response.{which}.rejected"] += 1
        return None
    except TypeError as exc:
        if "name-typeerror" not in KNOWN_BUGS or "X500_UNIQUE_IDENTIFIER" not in str(exc):
            raise InvariantViolation(f"validate_response raised TypeError: {exc}") from exc
        STATS["response.known_bug.name-typeerror"] += 1
        return None
    except Exception as exc:
        raise InvariantViolation(f"validate_response raised {type(exc).__name__}: {exc}") from exc
    problems = independent_problems(
        data,
        key=key,
        issuer=issuer,
        responders=responders,
        now=ctx.now,
        skew=ctx.skew,
        staple=staple,
        without_next_update=ctx.without_next_update,
    )
    unknown = [p for p in problems if p.split(":", 1)[0] not in KNOWN_BUGS]
    if unknown:
        STATS["response.accepted_invalid"] += 1
        raise InvariantViolation(
            f"validate_response accepted, for the {which} certificate {key}, a response that does not "
            f"verify: {'; '.join(unknown)}"
        )
    if problems:
        for problem in problems:
            STATS["response.known_bug." + problem.split(":", 1)[0]] += 1
        STATS[f"response.{which}.accepted_known_bug"] += 1
    else:
        STATS[f"response.{which}.accepted"] += 1
    return staple


# ------------------------------------------------------------------------------------------ fuzz fixture

CA_DIR = FUZZ_DIR / "ca"
CORPUS_DIR = FUZZ_DIR / "corpus"


def load_context(ca_dir: Path = CA_DIR) -> ResponseContext:
    """The committed test PKI of fuzz/ca (written by fuzz/make_corpus.py) as a ResponseContext."""
    meta = json.loads((ca_dir / "meta.json").read_text())
    issuer = x509.load_pem_x509_certificate((ca_dir / "issuer.pem").read_bytes())
    responders = x509.load_pem_x509_certificates((ca_dir / "responder.pem").read_bytes())
    other = x509.load_pem_x509_certificate((ca_dir / "other-issuer.pem").read_bytes())
    other_responders = x509.load_pem_x509_certificates((ca_dir / "other-responder.pem").read_bytes())
    serial = int(meta["serial"])

    def key_for(cert: x509.Certificate, number: int) -> CertKey:
        return CertKey(alg="sha1", issuer_key_hash=issuer_key_hash(cert, "sha1"), serial=number)

    return ResponseContext(
        key=key_for(issuer, serial),
        issuer=issuer,
        responders=responders,
        now=dt.datetime.fromisoformat(meta["now"]),
        skew=dt.timedelta(seconds=int(meta["skew"])),
        others=[
            (key_for(issuer, serial + 1), issuer, responders),
            (key_for(issuer, serial - 1), issuer, responders),
            (key_for(other, serial), other, other_responders),
        ],
    )
