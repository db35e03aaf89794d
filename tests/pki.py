"""A test PKI built with cryptography: root, intermediate, leaves, a delegated OCSP signer, rogues.

``TestCA.respond`` signs OCSP responses with any mix of right and wrong parts, so tests can hand the
proxy every kind of bad answer a CA (or an attacker) could give.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ocspproxy.core.ocsp import HASH_ALGORITHMS, CertId, CertKey, issuer_key_hash, issuer_name_hash
from ocspproxy.core.staple import CertStatus, Staple
from tests import derbuild

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
UTC = dt.UTC


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    *,
    subject: str,
    key: Key,
    issuer: x509.Certificate | None,
    issuer_key: Key,
    ca: bool = False,
    ocsp_url: str | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    serial: int | None = None,
    issuer_name: x509.Name | None = None,
    sign_hash: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    start = not_before or now() - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or (issuer.subject if issuer else _name(subject)))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    # As every CA-issued certificate has (RFC 5280): it names the issuer's key.
    aki_source = issuer_key.public_key()
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_source), critical=False
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if sign_hash is not None and sign_hash.name in ("sha1", "md5"):
        return resign_certificate(builder.sign(issuer_key, hashes.SHA256()), issuer_key, sign_hash)
    return builder.sign(issuer_key, sign_hash or hashes.SHA256())  # type: ignore[arg-type]


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class Leaf:
    cert: x509.Certificate
    key: Key

    @property
    def serial(self) -> int:
        return self.cert.serial_number


@dataclass
class TestCA:
    __test__ = False  # not a test class, despite the name
    """An intermediate CA under a root, with a delegated responder and rogue signers."""

    ocsp_url: str = "http://127.0.0.1:9/"
    root_key: Key = field(default_factory=_key)
    key: Key = field(default_factory=_key)

    def __post_init__(self) -> None:
        self.root = make_cert(
            subject="Test Root", key=self.root_key, issuer=None, issuer_key=self.root_key, ca=True
        )
        self.cert = make_cert(
            subject="Test Issuing CA", key=self.key, issuer=self.root, issuer_key=self.root_key, ca=True
        )
        self.responder_key = _key()
        self.responder = make_cert(
            subject="Test OCSP Responder",
            key=self.responder_key,
            issuer=self.cert,
            issuer_key=self.key,
            eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        )
        # Same subject as the CA, different key: a forgery that only a signature check catches.
        self.rogue_key = _key()
        self.rogue = make_cert(
            subject="Test Issuing CA", key=self.rogue_key, issuer=None, issuer_key=self.rogue_key, ca=True
        )

    def leaf(self, cn: str = "localhost", *, ocsp_url: str | None = "default") -> Leaf:
        key = _key()
        url = self.ocsp_url if ocsp_url == "default" else ocsp_url
        cert = make_cert(subject=cn, key=key, issuer=self.cert, issuer_key=self.key, ocsp_url=url)
        return Leaf(cert, key)

    def cert_id(self, serial: int, alg: str = "sha1") -> CertId:
        return CertId(
            key=CertKey(alg=alg, issuer_key_hash=issuer_key_hash(self.cert, alg), serial=serial),
            issuer_name_hash=issuer_name_hash(self.cert, alg),
        )

    def request(self, serial: int, alg: str = "sha1", *, nonce: bool = False) -> bytes:
        cid = self.cert_id(serial, alg)
        builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            cid.issuer_name_hash, cid.key.issuer_key_hash, serial, HASH_ALGORITHMS[alg]()
        )
        if nonce:
            builder = builder.add_extension(x509.OCSPNonce(b"0123456789abcdef"), critical=False)
        return builder.build().public_bytes(serialization.Encoding.DER)

    def write(self, directory: Path, leaf: Leaf, *, with_chain: bool = True) -> tuple[Path, Path]:
        """Write leaf (+ issuer) and the issuer bundle; return (leaf path, issuer path)."""
        leaf_path = directory / f"leaf-{leaf.serial:x}.pem"
        leaf_path.write_bytes(pem(leaf.cert, self.cert) if with_chain else pem(leaf.cert))
        issuer_path = directory / "issuer.pem"
        issuer_path.write_bytes(pem(self.cert))
        return leaf_path, issuer_path

    def respond(
        self,
        serial: int,
        *,
        status: str = "good",
        this_update: dt.datetime | None = None,
        validity: dt.timedelta | None = dt.timedelta(hours=1),
        next_update: dt.datetime | None = None,
        signer: str = "issuer",
        alg: str = "sha1",
        serial_in_response: int | None = None,
        issuer_for_certid: x509.Certificate | None = None,
        by_name: bool = False,
        sign_hash: hashes.HashAlgorithm | None = None,
        wrong_name_hash: bool = False,
        pss_salt: int | None = None,
    ) -> bytes:
        """A signed OCSP response. signer: issuer | delegate | rogue | rogue-included | root |
        undelegated (no EKU) | serverauth (an EKU without OCSPSigning). sign_hash: the signature's
        hash (SHA-256 by default); pss_salt: re-signed with RSASSA-PSS (RSA keys) and that salt
        length; wrong_name_hash: the CertID's issuer name hash of another name, its key hash right."""
        tu = this_update or now() - dt.timedelta(minutes=1)
        nu = next_update if next_update is not None else (tu + validity if validity is not None else None)
        responder_cert, responder_key, include = {
            "issuer": (self.cert, self.key, []),
            "delegate": (self.responder, self.responder_key, [self.responder]),
            "rogue": (self.rogue, self.rogue_key, []),
            "rogue-included": (self.rogue, self.rogue_key, [self.rogue]),
            "root": (self.root, self.root_key, []),
            "undelegated": self._undelegated(),
            "serverauth": self._undelegated([ExtendedKeyUsageOID.SERVER_AUTH]),
        }[signer]
        cert_status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[status]
        certid_issuer = issuer_for_certid or self.cert
        name_hash = issuer_name_hash(certid_issuer, alg)
        if wrong_name_hash:
            name_hash = issuer_name_hash(self.root, alg)
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=name_hash,
            issuer_key_hash=issuer_key_hash(certid_issuer, alg),
            serial_number=serial_in_response if serial_in_response is not None else serial,
            algorithm=HASH_ALGORITHMS[alg](),
            cert_status=cert_status,
            this_update=tu,
            next_update=nu,
            revocation_time=tu - dt.timedelta(hours=1) if status == "revoked" else None,
            revocation_reason=None,
        )
        encoding = ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH
        builder = builder.responder_id(encoding, responder_cert)
        if include:
            builder = builder.certificates(include)
        weak = sign_hash is not None and sign_hash.name in ("sha1", "md5")
        response = builder.sign(responder_key, hashes.SHA256() if weak else sign_hash or hashes.SHA256())
        der = response.public_bytes(serialization.Encoding.DER)
        if weak:
            assert sign_hash is not None
            der = resign_response(der, responder_key, sign_hash)
        if pss_salt is not None:
            assert isinstance(responder_key, rsa.RSAPrivateKey), "RSASSA-PSS needs an RSA key"
            der = resign_pss(der, responder_key, sign_hash or hashes.SHA256(), salt=pss_salt)
        return der

    def _undelegated(
        self, eku: list[x509.ObjectIdentifier] | None = None
    ) -> tuple[x509.Certificate, Key, list[x509.Certificate]]:
        # Issued by the CA but without id-kp-OCSPSigning: may not sign responses.
        key = _key()
        cert = make_cert(subject="Not A Responder", key=key, issuer=self.cert, issuer_key=self.key, eku=eku)
        return cert, key, [cert]


def rsa_ca(ocsp_url: str = "http://127.0.0.1:9/") -> TestCA:
    """A TestCA whose root and issuing CA have RSA keys (for RSASSA-PSS and RSA signatures)."""
    return TestCA(
        ocsp_url=ocsp_url,
        root_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


_HASH_OID = {
    "sha1": "1.3.14.3.2.26",
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}


def pss_algorithm(
    digest: hashes.HashAlgorithm,
    *,
    salt: int,
    mgf_digest: hashes.HashAlgorithm | None = None,
    trailer: int = 1,
) -> bytes:
    """The AlgorithmIdentifier of RSASSA-PSS with these parameters (RFC 4055), DER: fields with
    their default value (SHA-1, MGF1 with SHA-1, salt 20, trailer 1) are left out."""
    mgf = mgf_digest or digest
    fields = []
    if digest.name != "sha1":
        fields.append(
            derbuild.explicit(0, derbuild.sequence(derbuild.oid(_HASH_OID[digest.name]), derbuild.null()))
        )
    if mgf.name != "sha1":
        mgf1 = derbuild.sequence(derbuild.oid(_HASH_OID[mgf.name]), derbuild.null())
        fields.append(derbuild.explicit(1, derbuild.sequence(derbuild.oid("1.2.840.113549.1.1.8"), mgf1)))
    if salt != 20:
        fields.append(derbuild.explicit(2, derbuild.integer(salt)))
    if trailer != 1:
        fields.append(derbuild.explicit(3, derbuild.integer(trailer)))
    return derbuild.sequence(derbuild.oid("1.2.840.113549.1.1.10"), derbuild.sequence(*fields))


def replace_signature(der: bytes, algorithm: bytes, signature: bytes) -> bytes:
    """The OCSP response der with its BasicOCSPResponse's signatureAlgorithm and signature replaced
    (tbsResponseData and certificates kept byte for byte)."""
    resp = ocsp.load_der_ocsp_response(der)
    tbs = resp.tbs_response_bytes
    certs = b"".join(c.public_bytes(serialization.Encoding.DER) for c in resp.certificates)
    basic = derbuild.sequence(
        tbs,
        algorithm,
        derbuild.bit_string(signature),
        *([derbuild.explicit(0, derbuild.sequence(certs))] if resp.certificates else []),
    )
    response_bytes = derbuild.sequence(derbuild.oid("1.3.6.1.5.5.7.48.1.1"), derbuild.tlv(0x04, basic))
    return derbuild.sequence(derbuild.tlv(0x0A, b"\x00"), derbuild.explicit(0, response_bytes))


def resign_pss(
    der: bytes,
    key: rsa.RSAPrivateKey,
    digest: hashes.HashAlgorithm,
    *,
    salt: int,
    declared_salt: int | None = None,
    trailer: int = 1,
) -> bytes:
    """der signed again with RSASSA-PSS (salt bytes of salt); declared_salt and trailer change
    only what the parameters claim."""
    tbs = ocsp.load_der_ocsp_response(der).tbs_response_bytes
    signature = key.sign(tbs, padding.PSS(mgf=padding.MGF1(digest), salt_length=salt), digest)
    algorithm = pss_algorithm(digest, salt=salt if declared_salt is None else declared_salt, trailer=trailer)
    return replace_signature(der, algorithm, signature)


def error_body(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


_SIG_OID = {  # (key kind, hash) -> signatureAlgorithm OID
    ("rsa", "md5"): "1.2.840.113549.1.1.4",
    ("rsa", "sha1"): "1.2.840.113549.1.1.5",
    ("rsa", "sha224"): "1.2.840.113549.1.1.14",
    ("rsa", "sha256"): "1.2.840.113549.1.1.11",
    ("ec", "md5"): "1.2.840.10045.4.1",  # (no such thing: an ECDSA-SHA1 OID over an MD5 digest)
    ("ec", "sha1"): "1.2.840.10045.4.1",
    ("ec", "sha224"): "1.2.840.10045.4.3.1",
    ("ec", "sha256"): "1.2.840.10045.4.3.2",
}


def _sign(key: Key, data: bytes, digest: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """(AlgorithmIdentifier, signature) of data signed by key with a hash cryptography's builders
    no longer sign with (SHA-1, MD5): the primitives still do."""
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = derbuild.sequence(derbuild.oid(_SIG_OID[("rsa", digest.name)]), derbuild.null())
        return algorithm, key.sign(data, padding.PKCS1v15(), digest)
    if digest.name == "md5":
        raise ValueError("no ECDSA-with-MD5 signature algorithm")
    algorithm = derbuild.sequence(derbuild.oid(_SIG_OID[("ec", digest.name)]))
    return algorithm, key.sign(data, ec.ECDSA(digest))


def resign_response(der: bytes, key: Key, digest: hashes.HashAlgorithm) -> bytes:
    """der signed again by key with digest (SHA-1 or MD5 included)."""
    tbs = ocsp.load_der_ocsp_response(der).tbs_response_bytes
    algorithm, signature = _sign(key, tbs, digest)
    return replace_signature(der, algorithm, signature)


def resign_certificate(
    cert: x509.Certificate, issuer_key: Key, digest: hashes.HashAlgorithm
) -> x509.Certificate:
    """cert signed again by issuer_key with digest (SHA-1 or MD5 included), its tbsCertificate's
    signature field changed to match."""
    from ocspproxy.core.der import children, header

    tbs = cert.tbs_certificate_bytes
    _, start, length = header(tbs, 0)
    parts = [tbs[s - _head(ln) : s + ln] for _, s, ln in children(tbs, start, length)]
    index = 2 if tbs[start] == 0xA0 else 1  # [version], serialNumber, signature, ...
    algorithm, _ = _sign(issuer_key, b"", digest)
    parts[index] = algorithm
    new_tbs = derbuild.sequence(*parts)
    _, signature = _sign(issuer_key, new_tbs, digest)
    return x509.load_der_x509_certificate(
        derbuild.sequence(new_tbs, algorithm, derbuild.bit_string(signature))
    )


def _head(length: int) -> int:
    return 2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8


def any_staple(key: CertKey, der: bytes) -> Staple:
    """A Staple holding der as-is, for tests of what stores it: a store keeps bytes, checks nothing."""
    start = now()
    return Staple(
        key=key,
        der=der,
        status=CertStatus.GOOD,
        this_update=start,
        next_update=start + dt.timedelta(hours=1),
        produced_at=start,
    )
