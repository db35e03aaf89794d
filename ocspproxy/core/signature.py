"""Checking one signature the way OpenSSL checks an OCSP response's or a certificate's (pure).

The algorithms are those ``openssl ocsp`` verifies: RSA (PKCS #1 v1.5) and ECDSA with SHA-1,
SHA-224, SHA-256, SHA-384, SHA-512 and SHA-3, RSASSA-PSS with its parameters, DSA, Ed25519 and
Ed448. One deliberate exception: MD5 (and MD2, MD4) signatures are refused, although OpenSSL 3.0's
``openssl ocsp`` still verifies MD5 ones; MD5 signatures can be forged by collision, and no CA has
been allowed to make them since 2008.

The signatureAlgorithm a signature comes with lies outside the signed bytes, so it is checked
against the signer's key: it must name that kind of key.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ocspproxy.core.der import DERError, pss_params

__all__ = ["BadSignature", "verify_signature"]


class BadSignature(Exception):
    """The signature is not acceptable; str() says why (an algorithm, a parameter, the maths)."""


_HASH_OIDS: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.14.3.2.26": hashes.SHA1,
    "2.16.840.1.101.3.4.2.4": hashes.SHA224,
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
    "2.16.840.1.101.3.4.2.7": hashes.SHA3_224,
    "2.16.840.1.101.3.4.2.8": hashes.SHA3_256,
    "2.16.840.1.101.3.4.2.9": hashes.SHA3_384,
    "2.16.840.1.101.3.4.2.10": hashes.SHA3_512,
}
_RSA_PKCS1: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.113549.1.1.5": hashes.SHA1,
    "1.3.14.3.2.29": hashes.SHA1,  # the old OIW sha1WithRSASignature
    "1.2.840.113549.1.1.14": hashes.SHA224,
    "1.2.840.113549.1.1.11": hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
    "2.16.840.1.101.3.4.3.13": hashes.SHA3_224,
    "2.16.840.1.101.3.4.3.14": hashes.SHA3_256,
    "2.16.840.1.101.3.4.3.15": hashes.SHA3_384,
    "2.16.840.1.101.3.4.3.16": hashes.SHA3_512,
}
_ECDSA: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.10045.4.1": hashes.SHA1,
    "1.2.840.10045.4.3.1": hashes.SHA224,
    "1.2.840.10045.4.3.2": hashes.SHA256,
    "1.2.840.10045.4.3.3": hashes.SHA384,
    "1.2.840.10045.4.3.4": hashes.SHA512,
    "2.16.840.1.101.3.4.3.9": hashes.SHA3_224,
    "2.16.840.1.101.3.4.3.10": hashes.SHA3_256,
    "2.16.840.1.101.3.4.3.11": hashes.SHA3_384,
    "2.16.840.1.101.3.4.3.12": hashes.SHA3_512,
}
_DSA: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.10040.4.3": hashes.SHA1,
    "2.16.840.1.101.3.4.3.1": hashes.SHA224,
    "2.16.840.1.101.3.4.3.2": hashes.SHA256,
}
_RSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_ED25519 = "1.3.101.112"
_ED448 = "1.3.101.113"
_BROKEN = {
    "1.2.840.113549.1.1.2": "MD2",
    "1.2.840.113549.1.1.3": "MD4",
    "1.2.840.113549.1.1.4": "MD5",
}


def _fits(key: CertificatePublicKeyTypes, kind: type, oid: str) -> None:
    if not isinstance(key, kind):
        raise BadSignature(f"signature algorithm {oid} does not fit the signer's {_kind(key)} key")


def _kind(key: CertificatePublicKeyTypes) -> str:
    for cls, name in (
        (rsa.RSAPublicKey, "RSA"),
        (ec.EllipticCurvePublicKey, "EC"),
        (dsa.DSAPublicKey, "DSA"),
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
    ):
        if isinstance(key, cls):
            return name
    return type(key).__name__


def _pss(params: bytes | None) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    """The padding and hash RSASSA-PSS parameters name; refused as OpenSSL refuses them."""
    try:
        pss = pss_params(params)
    except DERError as exc:
        raise BadSignature(f"RSASSA-PSS parameters unusable: {exc}") from exc
    digest = _HASH_OIDS.get(pss.hash_oid)
    mgf_digest = _HASH_OIDS.get(pss.mgf_hash_oid)
    if digest is None or mgf_digest is None:
        raise BadSignature(f"RSASSA-PSS with an unsupported hash ({pss.hash_oid}, MGF1 {pss.mgf_hash_oid})")
    if pss.mgf_oid != _MGF1:
        raise BadSignature(f"RSASSA-PSS with an unsupported mask generation function {pss.mgf_oid}")
    if pss.trailer_field != 1:
        raise BadSignature(f"RSASSA-PSS trailer field {pss.trailer_field}, not 1")
    # The salt length must be the one the parameters name (OpenSSL checks it exactly too).
    return padding.PSS(mgf=padding.MGF1(mgf_digest()), salt_length=pss.salt_length), digest()


def verify_signature(
    key: CertificatePublicKeyTypes, *, oid: str, params: bytes | None, signature: bytes, data: bytes
) -> None:
    """Check ``signature`` over ``data`` by ``key`` under the signatureAlgorithm ``oid`` (with its
    encoded ``params``). Raises BadSignature naming the cause."""
    try:
        if oid in _RSA_PKCS1:
            _fits(key, rsa.RSAPublicKey, oid)
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, data, padding.PKCS1v15(), _RSA_PKCS1[oid]())
        elif oid == _RSA_PSS:
            _fits(key, rsa.RSAPublicKey, oid)
            assert isinstance(key, rsa.RSAPublicKey)
            pss, digest = _pss(params)
            key.verify(signature, data, pss, digest)
        elif oid in _ECDSA:
            _fits(key, ec.EllipticCurvePublicKey, oid)
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(signature, data, ec.ECDSA(_ECDSA[oid]()))
        elif oid in _DSA:
            _fits(key, dsa.DSAPublicKey, oid)
            assert isinstance(key, dsa.DSAPublicKey)
            key.verify(signature, data, _DSA[oid]())
        elif oid == _ED25519:
            _fits(key, ed25519.Ed25519PublicKey, oid)
            assert isinstance(key, ed25519.Ed25519PublicKey)
            key.verify(signature, data)
        elif oid == _ED448:
            _fits(key, ed448.Ed448PublicKey, oid)
            assert isinstance(key, ed448.Ed448PublicKey)
            key.verify(signature, data)
        elif oid in _BROKEN:
            raise BadSignature(f"{_BROKEN[oid]} signatures are refused: they can be forged")
        else:
            raise BadSignature(f"unsupported signature algorithm {oid}")
    except InvalidSignature as exc:
        raise BadSignature("bad signature") from exc
    except UnsupportedAlgorithm as exc:
        raise BadSignature(f"unsupported signature algorithm {oid}: {exc}") from exc
    except ValueError as exc:  # a PSS salt longer than the key allows, say
        raise BadSignature(f"signature unusable: {exc}") from exc
