"""OCSP wire format: CertID keys, request parsing, GET decoding and error responses.

Pure functions only; nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass, field
from enum import IntEnum
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

__all__ = [
    "HASH_ALGORITHMS",
    "CertId",
    "CertKey",
    "MalformedRequest",
    "ResponseStatus",
    "build_request",
    "decode_get_path",
    "error_response",
    "hash_name",
    "issuer_key_hash",
    "issuer_name_hash",
    "parse_key",
    "parse_request",
]

# Hash algorithms we accept in CertIDs (RFC 6960 clients use SHA-1; some use SHA-256).
HASH_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class ResponseStatus(IntEnum):
    """OCSPResponseStatus (RFC 6960 §4.2.1)."""

    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


class MalformedRequest(ValueError):
    """The bytes are not a usable OCSP request."""


@dataclass(frozen=True, slots=True, order=True)
class CertKey:
    """Identifies one staple: the CertID without the issuer name hash.

    The issuer name hash is checked against the known issuer when a request comes in; keeping it out of
    the key keeps file names short and still unique (a key hash names one issuer key).
    """

    alg: str
    issuer_key_hash: bytes
    serial: int
    # Computed once: a key is hashed in several dicts each time it is looked up or stored, and
    # start-up does that 100,000 times over.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.alg, self.issuer_key_hash, self.serial)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[CertKey], tuple[str, bytes, int]]:
        # Rebuilt, never restored: the cached hash belongs to this process (hash randomisation).
        return (CertKey, (self.alg, self.issuer_key_hash, self.serial))

    def __str__(self) -> str:
        return f"{self.alg}-{self.issuer_key_hash.hex()}-{self.serial:x}"


_KEY_TEXT = re.compile(r"^(sha1|sha256|sha384|sha512)-([0-9a-f]{40,128})-([0-9a-f]{1,80})$")


def parse_key(text: str) -> CertKey:
    """The key ``str(key)`` spelt (a file name, a shared store's key); ValueError when text is not
    one, or its key hash has the wrong length for its algorithm."""
    match = _KEY_TEXT.match(text)
    if match is None:
        raise ValueError(f"not a staple key: {text[:120]!r}")
    alg, key_hash, serial = match.groups()
    if len(key_hash) != 2 * HASH_ALGORITHMS[alg]().digest_size:
        raise ValueError(f"{text[:120]!r}: the key hash does not match its hash algorithm")
    return CertKey(alg=alg, issuer_key_hash=bytes.fromhex(key_hash), serial=int(serial, 16))


@dataclass(frozen=True, slots=True)
class CertId:
    """A CertID as a client sent it."""

    key: CertKey
    issuer_name_hash: bytes


def hash_name(alg: hashes.HashAlgorithm) -> str:
    name = alg.name.lower().replace("-", "")
    if name not in HASH_ALGORITHMS:
        raise UnsupportedAlgorithm(f"hash algorithm {alg.name} not supported in CertIDs")
    return name


def _digest(alg: str, data: bytes) -> bytes:
    return hashlib.new(alg, data).digest()


# Cached: the same few issuers are hashed for every certificate and every response they sign.
@functools.lru_cache(maxsize=4096)
def issuer_name_hash(issuer: x509.Certificate, alg: str) -> bytes:
    return _digest(alg, issuer.subject.public_bytes())


@functools.lru_cache(maxsize=4096)
def issuer_key_hash(issuer: x509.Certificate, alg: str) -> bytes:
    """Hash of the subjectPublicKey BIT STRING value, as CertID defines it. Read from the
    certificate's own bytes: a key of a type cryptography cannot load (GOST, say) still has one."""
    return _digest(alg, _spki_key_bits(_certificate_spki(issuer.public_bytes(serialization.Encoding.DER))))


def _certificate_spki(cert: bytes) -> bytes:
    """The SubjectPublicKeyInfo element of a DER certificate (its seventh tbsCertificate field,
    counting the optional [0] version)."""
    _, tbs_at, _ = _der_header(cert, 0)
    _, pos, _ = _der_header(cert, tbs_at)
    fields = 0
    while True:
        tag, start, length = _der_header(cert, pos)
        if fields == 0 and tag != 0xA0:
            fields = 1  # no version field
        if fields == 6:
            return cert[pos : start + length]
        fields += 1
        pos = start + length


def _der_header(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, content start, content length) of the DER element at pos."""
    tag = data[pos]
    first = data[pos + 1]
    if first < 0x80:
        return tag, pos + 2, first
    count = first & 0x7F
    length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
    return tag, pos + 2 + count, length


def _spki_key_bits(spki: bytes) -> bytes:
    # SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
    _, body, _ = _der_header(spki, 0)
    _, alg_start, alg_len = _der_header(spki, body)
    tag, bits_start, bits_len = _der_header(spki, alg_start + alg_len)
    if tag != 0x03:
        raise ValueError("SubjectPublicKeyInfo without a BIT STRING")
    return spki[bits_start + 1 : bits_start + bits_len]  # skip the unused-bits octet


# mod_ssl sends the same bytes for a certificate every time: parsing each distinct request once
# takes a tenth of the cost of a cache hit away. Failures are not cached (exceptions never are).
@functools.lru_cache(maxsize=65536)
def parse_request(der: bytes) -> CertId:
    """Parse a DER OCSPRequest with exactly one CertID. Extensions (nonces) are ignored."""
    if not der:
        raise MalformedRequest("empty request")
    try:
        req = ocsp.load_der_ocsp_request(der)
        alg = hash_name(req.hash_algorithm)
        key = CertKey(alg=alg, issuer_key_hash=req.issuer_key_hash, serial=req.serial_number)
        name_hash = req.issuer_name_hash
    except UnsupportedAlgorithm as exc:
        raise MalformedRequest(str(exc)) from exc
    except (ValueError, TypeError, NotImplementedError) as exc:
        # cryptography refuses requests with several CertIDs; one staple answers one certificate.
        raise MalformedRequest(f"not a single-certificate OCSP request: {exc}") from exc
    if len(key.issuer_key_hash) != hashlib.new(alg).digest_size or len(name_hash) != len(key.issuer_key_hash):
        raise MalformedRequest("CertID hash lengths do not match its algorithm")
    # Serials are positive (RFC 5280); allow some CAs' overlong ones, not absurd sizes.
    if key.serial < 0 or key.serial.bit_length() > _MAX_SERIAL_BITS:
        raise MalformedRequest("CertID serial is negative or too long")
    return CertId(key=key, issuer_name_hash=name_hash)


_MAX_SERIAL_BITS = 64 * 8
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/_-]+=*$")


def _b64(text: str) -> bytes | None:
    text = text.replace(" ", "+")  # a '+' that something decoded as form data
    if not text or not _B64_CHARS.match(text):
        return None
    text = text.rstrip("=")
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _der_length_from_b64_head(head: str) -> int | None:
    """Total DER length announced by the first bytes of a base64 text, or None if not a SEQUENCE."""
    raw = _b64(head[:8])
    if raw is None or len(raw) < 2 or raw[0] != 0x30:
        return None
    first = raw[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 3 or len(raw) < 2 + count:
        return None
    return 2 + count + int.from_bytes(raw[2 : 2 + count], "big")


def decode_get_path(raw_path: str, *, max_length: int = 4096) -> bytes:
    """Decode an RFC 6960 Appendix A GET path into DER request bytes.

    Accepts a path prefix before the base64 (e.g. ``/ocsp/MEIw...``), percent-encoding, '/' and '+'
    inside the base64, URL-safe base64 and missing padding. The base64 may contain '/', so any
    segment could start it: a suffix is decoded only when the DER length its first bytes announce
    matches its own length, which keeps the work linear in the path length.
    """
    if len(raw_path) > max_length:
        raise MalformedRequest("GET path too long")
    segments = [unquote(part) for part in raw_path.split("?", 1)[0].lstrip("/").split("/")]
    count = len(segments)
    tail_length = [0] * (count + 1)  # len("/".join(segments[i:]))
    for i in range(count - 1, -1, -1):
        tail_length[i] = len(segments[i]) + tail_length[i + 1] + (1 if i < count - 1 else 0)
    padding = len(segments[-1]) - len(segments[-1].rstrip("="))
    for i in range(count):
        head, j = segments[i], i + 1
        while len(head) < 8 and j < count:  # the first 8 characters may span a '/'
            head += "/" + segments[j]
            j += 1
        total = _der_length_from_b64_head(head)
        if total is None or -(-total * 4 // 3) != tail_length[i] - padding:
            continue
        der = _b64("/".join(segments[i:]))
        if der is None:
            continue
        try:
            parse_request(der)
        except MalformedRequest:
            continue
        return der
    raise MalformedRequest("GET path holds no base64 OCSP request")


def build_request(key: CertKey, issuer_name_hash: bytes) -> bytes:
    """A DER OCSPRequest for one CertID, without a nonce (cacheable, RFC 5019)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        issuer_name_hash, key.issuer_key_hash, key.serial, HASH_ALGORITHMS[key.alg]()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def error_response(status: ResponseStatus) -> bytes:
    """An unsigned OCSPResponse carrying only an error status: SEQUENCE { ENUMERATED status }."""
    if status is ResponseStatus.SUCCESSFUL:
        raise ValueError("a successful response needs a body")
    return bytes([0x30, 0x03, 0x0A, 0x01, int(status)])
