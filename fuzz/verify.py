"""A second verification of an OCSP response, written from RFC 6960 with the strict DER reader in
``fuzz/der.py`` (only the signature arithmetic comes from ``cryptography``): what
``fuzz/oracle.check_response`` holds every response ocspproxy accepts against. An accepted response
it finds a problem with is a forged or broken staple ocspproxy would serve.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from fuzz import der
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import CertStatus, Staple

__all__ = ["independent_problems"]


_HASH_OIDS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha224": hashes.SHA224(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
# signatureAlgorithm -> (key type, hash); RFC 5758 (ECDSA), RFC 4055 (RSA, RSASSA-PSS), RFC 8410
# (EdDSA). What `openssl ocsp` verifies, less MD5 (refused on purpose: ocspproxy/core/signature.py).
_SIG_ALGS: dict[str, tuple[str, str | None]] = {
    "1.2.840.10045.4.1": ("ec", "sha1"),
    "1.2.840.10045.4.3.1": ("ec", "sha224"),
    "1.2.840.10045.4.3.2": ("ec", "sha256"),
    "1.2.840.10045.4.3.3": ("ec", "sha384"),
    "1.2.840.10045.4.3.4": ("ec", "sha512"),
    "1.2.840.113549.1.1.5": ("rsa", "sha1"),
    "1.2.840.113549.1.1.14": ("rsa", "sha224"),
    "1.2.840.113549.1.1.11": ("rsa", "sha256"),
    "1.2.840.113549.1.1.12": ("rsa", "sha384"),
    "1.2.840.113549.1.1.13": ("rsa", "sha512"),
    "1.2.840.113549.1.1.10": ("rsa-pss", None),
    "1.3.101.112": ("ed25519", None),
    "1.3.101.113": ("ed448", None),
}
_OCSP_BASIC = "1.3.6.1.5.5.7.48.1.1"
_TIME = re.compile(rb"^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$")


class _Problem(Exception):
    pass


def _need(condition: bool, problem: str) -> None:
    if not condition:
        raise _Problem(problem)


def _kids(tlv: der.Tlv, tag: int, what: str) -> list[der.Tlv]:
    _need(tlv.tag == tag, f"structure: {what} has tag {tlv.tag:#x}, not {tag:#x}")
    return der.children(tlv)


def _time(tlv: der.Tlv) -> dt.datetime:
    match = _TIME.match(tlv.content)
    _need(tlv.tag == 0x18 and match is not None, "structure: not a DER GeneralizedTime")
    assert match is not None
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError:
        raise _Problem("structure: impossible date") from None


@dataclass(frozen=True)
class _Cert:
    raw: bytes
    tbs: bytes
    sig_alg: str
    sig_params: der.Tlv | None
    inner_sig_alg: str
    unused_bits: int
    signature: bytes
    subject: bytes
    key_bits: bytes


def _cert(raw: bytes) -> _Cert:
    cert, sig_alg, sig = der.children(der.parse(raw))
    tbs = der.children(cert)
    if tbs[0].tag == 0xA0:
        tbs = tbs[1:]
    _serial, inner_alg, _issuer, _validity, subject, spki = tbs[:6]
    _alg, bits = der.children(spki)
    _need(sig.tag == der.BIT_STRING and len(sig.content) > 1, "structure: certificate signature")
    alg_parts = der.children(sig_alg)
    return _Cert(
        raw=raw,
        tbs=cert.raw,
        sig_alg=der.decode_oid(alg_parts[0]),
        sig_params=alg_parts[1] if len(alg_parts) > 1 else None,
        inner_sig_alg=der.decode_oid(der.children(inner_alg)[0]),
        unused_bits=sig.content[0],
        signature=sig.content[1:],
        subject=subject.raw,
        key_bits=bits.content[1:],
    )


def _pss(params: der.Tlv | None, what: str) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    """RSASSA-PSS-params (RFC 4055: every field defaults; the whole SEQUENCE must be there)."""
    _need(params is not None and params.tag == 0x30, f"sigalg: {what}: RSASSA-PSS without parameters")
    assert params is not None
    digest, mgf_digest, salt, trailer = "sha1", "sha1", 20, 1
    for field in der.children(params):
        (inner,) = der.children(field)
        if field.tag == 0xA0:
            digest = _HASH_OIDS.get(der.decode_oid(der.children(inner)[0]), "?")
        elif field.tag == 0xA1:
            mgf_oid, mgf_alg = der.children(inner)
            _need(der.decode_oid(mgf_oid) == "1.2.840.113549.1.1.8", f"sigalg: {what}: not MGF1")
            mgf_digest = _HASH_OIDS.get(der.decode_oid(der.children(mgf_alg)[0]), "?")
        elif field.tag == 0xA2:
            salt = der.decode_int(inner)
        elif field.tag == 0xA3:
            trailer = der.decode_int(inner)
        else:
            raise _Problem(f"sigalg: {what}: unexpected RSASSA-PSS field")
    _need(digest in _HASHES and mgf_digest in _HASHES, f"sigalg: {what}: RSASSA-PSS hash")
    _need(trailer == 1 and salt >= 0, f"sigalg: {what}: RSASSA-PSS trailer or salt")
    return padding.PSS(mgf=padding.MGF1(_HASHES[mgf_digest]), salt_length=salt), _HASHES[digest]


def _verify(
    public_key: object,
    sig_alg: str,
    signature: bytes,
    signed: bytes,
    what: str,
    params: der.Tlv | None = None,
) -> list[str]:
    """[] if signature verifies; 'sigalg-key-mismatch' when only the named key type is wrong."""
    kind, hash_name = _SIG_ALGS.get(sig_alg, ("?", None))
    _need(kind != "?", f"sigalg: {what} signature algorithm {sig_alg} not allowed")
    actual = {
        ec.EllipticCurvePublicKey: "ec",
        rsa.RSAPublicKey: "rsa",
        ed25519.Ed25519PublicKey: "ed25519",
        ed448.Ed448PublicKey: "ed448",
    }
    key_kind = next((k for cls, k in actual.items() if isinstance(public_key, cls)), "other")
    problems = []
    if key_kind != kind.removesuffix("-pss"):
        problems.append(f"sigalg-key-mismatch: {what} names a {kind} signature, the key is {key_kind}")
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            _need(hash_name in _HASHES, f"sigalg: {what}: ECDSA without a hash")
            assert hash_name is not None
            public_key.verify(signature, signed, ec.ECDSA(_HASHES[hash_name]))
        elif isinstance(public_key, rsa.RSAPublicKey) and kind == "rsa-pss":
            pss, digest = _pss(params, what)
            public_key.verify(signature, signed, pss, digest)
        elif isinstance(public_key, rsa.RSAPublicKey):
            _need(hash_name in _HASHES, f"sigalg: {what}: RSA without a hash")
            assert hash_name is not None
            public_key.verify(signature, signed, padding.PKCS1v15(), _HASHES[hash_name])
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public_key.verify(signature, signed)
        else:
            raise _Problem(f"signature: {what}: unexpected key type {type(public_key).__name__}")
    except (InvalidSignature, ValueError):
        raise _Problem(f"signature: {what} does not verify") from None
    return problems


def independent_problems(
    data: bytes,
    *,
    key: CertKey,
    issuer: x509.Certificate,
    responders: Sequence[x509.Certificate],
    now: dt.datetime,
    skew: dt.timedelta,
    staple: Staple,
    without_next_update: dt.timedelta = dt.timedelta(hours=1),
) -> list[str]:
    """Why ``data`` must not have been accepted as ``staple`` for ``key`` ([] when it is right to).

    Problems are "code: detail"; codes in ``fuzz/oracle.KNOWN_BUGS`` are tolerated by its checks.
    """
    try:
        return _problems(
            data,
            key,
            issuer,
            {c.public_bytes(Encoding.DER): c for c in responders},
            now,
            skew,
            staple,
            without_next_update,
        )
    except _Problem as problem:
        return [str(problem)]
    except der.DerError as exc:
        return [f"structure: {exc}"]
    except (ValueError, IndexError) as exc:  # an element with the wrong number of parts
        return [f"structure: {exc!r}"]


def _problems(
    data: bytes,
    key: CertKey,
    issuer: x509.Certificate,
    responders: dict[bytes, x509.Certificate],
    now: dt.datetime,
    skew: dt.timedelta,
    staple: Staple,
    without_next_update: dt.timedelta,
) -> list[str]:
    problems: list[str] = []
    _need(staple.der == data, "staple: its bytes are not the response's")
    _need(staple.key == key, "staple: for another key")

    # OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT ResponseBytes }
    status, wrapped = _kids(der.parse(data), 0x30, "OCSPResponse")
    _need(status.tag == 0x0A and status.content == b"\x00", "status: not successful")
    (response_bytes,) = _kids(wrapped, 0xA0, "responseBytes")
    oid, octets = _kids(response_bytes, 0x30, "ResponseBytes")
    _need(der.decode_oid(oid) == _OCSP_BASIC and octets.tag == 0x04, "structure: not id-pkix-ocsp-basic")

    # BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature BIT STRING,
    #                                  certs [0] EXPLICIT SEQUENCE OF Certificate OPTIONAL }
    basic = _kids(der.parse(octets.content), 0x30, "BasicOCSPResponse")
    _need(len(basic) in (3, 4), "structure: BasicOCSPResponse")
    tbs, sig_alg_seq, sig = basic[:3]
    sig_alg_parts = _kids(sig_alg_seq, 0x30, "signatureAlgorithm")
    sig_alg = der.decode_oid(sig_alg_parts[0])
    sig_params = sig_alg_parts[1] if len(sig_alg_parts) > 1 else None
    _need(sig.tag == der.BIT_STRING and len(sig.content) > 1, "structure: signature")
    if sig.content[0]:
        problems.append(f"unused-bits: the response signature BIT STRING has {sig.content[0]} unused bits")
    certs: list[bytes] = []
    if len(basic) == 4:
        (seq,) = _kids(basic[3], 0xA0, "certs")
        certs = [c.raw for c in _kids(seq, 0x30, "certs")]

    # ResponseData ::= SEQUENCE { version [0] DEFAULT v1, responderID, producedAt, responses, [1] ext }
    fields = _kids(tbs, 0x30, "tbsResponseData")
    if fields and fields[0].tag == 0xA0:
        fields = fields[1:]
    _need(len(fields) in (3, 4), "structure: ResponseData")
    responder_id, produced, singles = fields[:3]
    produced_at = _time(produced)

    issuer_der = _cert(issuer.public_bytes(Encoding.DER))

    def names(cert: _Cert) -> bool:
        (inner,) = der.children(responder_id)
        if responder_id.tag == 0xA1:
            return inner.raw == cert.subject
        _need(responder_id.tag == 0xA2 and inner.tag == 0x04, "structure: ResponderID")
        return inner.content == hashlib.sha1(cert.key_bits).digest()

    # The signer: the issuer itself, or a responder certificate the issuer really delegated to.
    cap: dt.datetime | None = None
    validity = (now, now)
    if names(issuer_der):
        problems += _verify(issuer.public_key(), sig_alg, sig.content[1:], tbs.raw, "response", sig_params)
    else:
        signer = None
        for raw in certs:
            cert = _cert(raw)
            if not names(cert):
                continue
            trusted = responders.get(raw)
            if trusted is None and cert.unused_bits:
                # The same certificate with its signature BIT STRING's unused-bits octet changed?
                sig_start = len(raw) - len(cert.signature) - 1
                restored = raw[:sig_start] + b"\x00" + raw[sig_start + 1 :]
                trusted = responders.get(restored)
                if trusted is not None:
                    problems.append(
                        f"unused-bits: the responder certificate's signature: {cert.unused_bits} unused bits"
                    )
            if trusted is not None:
                signer = trusted
                if cert.sig_alg != cert.inner_sig_alg:
                    problems.append("sigalg: certificate signatureAlgorithm differs from its tbsCertificate")
                break
        _need(signer is not None, "signer: neither the issuer nor a responder certificate it delegated to")
        assert signer is not None
        problems += _verify(signer.public_key(), sig_alg, sig.content[1:], tbs.raw, "response", sig_params)
        validity = (signer.not_valid_before_utc, signer.not_valid_after_utc)
        cap = signer.not_valid_after_utc

    # The SingleResponse with exactly the requested CertID, hash algorithm included.
    match = None
    for single in _kids(singles, 0x30, "responses"):
        parts = _kids(single, 0x30, "SingleResponse")
        cert_id = _kids(parts[0], 0x30, "CertID")
        alg_parts = _kids(cert_id[0], 0x30, "hashAlgorithm")
        alg = _HASH_OIDS.get(der.decode_oid(alg_parts[0]))
        if alg != key.alg or der.decode_int(cert_id[3]) != key.serial:
            continue
        if (cert_id[1].content, cert_id[2].content) == (
            hashlib.new(alg, issuer_der.subject).digest(),
            hashlib.new(alg, issuer_der.key_bits).digest(),
        ):
            match = parts
            break
    _need(match is not None, "certid: no SingleResponse names the requested certificate")
    assert match is not None
    cert_status, this = match[1], _time(match[2])
    next_tlv = next((p for p in match[3:] if p.tag == 0xA0), None)
    # No nextUpdate ("newer information is always available"): served for a bounded time.
    next_update = this + without_next_update if next_tlv is None else _time(der.children(next_tlv)[0])
    state = {0x80: CertStatus.GOOD, 0xA1: CertStatus.REVOKED, 0x82: CertStatus.UNKNOWN}.get(cert_status.tag)
    _need(state is not None, "status: unknown CertStatus")
    _need(state == staple.status, f"status: staple says {staple.status}, response says {state}")
    if state is CertStatus.REVOKED:
        _need(staple.revocation_time == _time(der.children(cert_status)[0]), "status: revocation time")
    if cap is not None:
        _need(
            validity[0] <= produced_at <= validity[1] and validity[0] <= now <= validity[1],
            "signer: responder certificate not valid when the response was produced, or now",
        )
    effective = min(next_update, cap) if cap is not None else next_update
    _need(this <= now + skew, "time: thisUpdate in the future")
    _need(this < next_update, "time: nextUpdate not after thisUpdate")
    _need(effective > now, "time: expired")
    _need(
        (staple.this_update, staple.next_update, staple.produced_at) == (this, effective, produced_at),
        "staple: times differ from the response's",
    )
    return problems
