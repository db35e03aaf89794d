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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ocspproxy.ocsp import HASH_ALGORITHMS, CertId, CertKey, issuer_key_hash, issuer_name_hash

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
    return builder.sign(issuer_key, hashes.SHA256())


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
    ) -> bytes:
        """A signed OCSP response. signer: issuer | delegate | rogue | rogue-included | root | undelegated."""
        tu = this_update or now() - dt.timedelta(minutes=1)
        nu = next_update if next_update is not None else (tu + validity if validity is not None else None)
        responder_cert, responder_key, include = {
            "issuer": (self.cert, self.key, []),
            "delegate": (self.responder, self.responder_key, [self.responder]),
            "rogue": (self.rogue, self.rogue_key, []),
            "rogue-included": (self.rogue, self.rogue_key, [self.rogue]),
            "root": (self.root, self.root_key, []),
            "undelegated": self._undelegated(),
        }[signer]
        cert_status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[status]
        certid_issuer = issuer_for_certid or self.cert
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=issuer_name_hash(certid_issuer, alg),
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
        response = builder.sign(responder_key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)

    def _undelegated(self) -> tuple[x509.Certificate, Key, list[x509.Certificate]]:
        # Issued by the CA but without id-kp-OCSPSigning: may not sign responses.
        key = _key()
        cert = make_cert(subject="Not A Responder", key=key, issuer=self.cert, issuer_key=self.key)
        return cert, key, [cert]


def error_body(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
