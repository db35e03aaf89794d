"""The test PKI for the end-to-end tests: CA, OCSP signer, leaves and ``openssl ocsp`` index lines."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from .tools import UTC, utcnow

# --------------------------------------------------------------------------------------------------
# test PKI
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """A server certificate with its files.  ``cert_pem`` holds the leaf only; ``chain_pem`` leaf + CA."""

    name: str
    cert: x509.Certificate
    cert_pem: Path
    chain_pem: Path
    key_pem: Path

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def serial_hex(self) -> str:
        """Serial as OpenSSL prints it (upper-case hex, even number of digits)."""
        return openssl_serial_hex(self.serial)


@dataclass(frozen=True)
class Pki:
    """CA + two leaves (``good`` and ``revoked``) whose AIA OCSP URL is ``http://127.0.0.1:<ca_port>/``."""

    directory: Path
    ca_port: int
    ca_cert: x509.Certificate
    ca_pem: Path  # the issuer file (--issuers, -CA, -CAfile)
    ca_key_pem: Path
    index_txt: Path
    good: Leaf
    revoked: Leaf
    revoked_at: dt.datetime
    ocsp_host: str = "127.0.0.1"  # the host of the leaves' AIA URL (a made-up name: only a proxy knows it)

    @property
    def ocsp_url(self) -> str:
        return f"http://{self.ocsp_host}:{self.ca_port}/"


def openssl_serial_hex(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _index_time(when: dt.datetime) -> str:
    return when.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


def index_line(leaf: Leaf, *, revoked_at: dt.datetime | None = None, reason: str = "keyCompromise") -> str:
    """One line of OpenSSL's CA database (index.txt): status, expiry, revocation, serial, file, DN."""
    short = {NameOID.ORGANIZATION_NAME: "O", NameOID.COMMON_NAME: "CN"}
    subject = "".join(
        f"/{short.get(attr.oid, attr.oid.dotted_string)}={attr.value!s}" for attr in leaf.cert.subject
    )
    status = "V" if revoked_at is None else "R"
    revocation = "" if revoked_at is None else f"{_index_time(revoked_at)},{reason}"
    expiry = _index_time(leaf.cert.not_valid_after_utc)
    return "\t".join([status, expiry, revocation, leaf.serial_hex, "unknown", subject]) + "\n"


def _write_pem(path: Path, *blobs: bytes, private: bool = False) -> Path:
    path.write_bytes(b"".join(blobs))
    path.chmod(0o600 if private else 0o644)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing keys only; a CA's also sign certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def build_pki(directory: Path, ca_port: int, *, ocsp_host: str = "127.0.0.1") -> Pki:
    """Create CA, a good leaf and a revoked leaf (both for localhost/127.0.0.1) and the index.txt."""
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = utcnow().replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocspproxy e2e"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ocspproxy e2e test CA {ca_port}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = _write_pem(directory / "ca.pem", _cert_pem(ca_cert))
    ca_key_pem = _write_pem(directory / "ca.key", _key_pem(ca_key), private=True)
    ocsp_url = f"http://{ocsp_host}:{ca_port}/"

    def make_leaf(name: str, common_name: str) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocspproxy e2e"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                        )
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return Leaf(
            name=name,
            cert=cert,
            cert_pem=_write_pem(directory / f"{name}.pem", _cert_pem(cert)),
            chain_pem=_write_pem(directory / f"{name}-chain.pem", _cert_pem(cert), _cert_pem(ca_cert)),
            key_pem=_write_pem(directory / f"{name}.key", _key_pem(key), private=True),
        )

    good = make_leaf("good", "localhost")
    revoked = make_leaf("revoked", "revoked.localhost")
    revoked_at = now - dt.timedelta(minutes=30)
    index_txt = directory / "index.txt"
    index_txt.write_text(index_line(good) + index_line(revoked, revoked_at=revoked_at))
    (directory / "index.txt.attr").write_text("unique_subject = no\n")
    return Pki(
        directory=directory,
        ca_port=ca_port,
        ca_cert=ca_cert,
        ca_pem=ca_pem,
        ca_key_pem=ca_key_pem,
        index_txt=index_txt,
        good=good,
        revoked=revoked,
        revoked_at=revoked_at,
        ocsp_host=ocsp_host,
    )


def sign_good(
    pki: Pki,
    leaf: x509.Certificate,
    *,
    this_update: dt.datetime,
    next_update: dt.datetime,
    rogue: bool = False,
) -> bytes:
    """A good response for leaf (SHA-1 CertID, as mod_ssl asks) signed with the CA's key, or, rogue,
    with a forger's: a self-signed certificate of the CA's name and a key of its own."""
    key = serialization.load_pem_private_key(pki.ca_key_pem.read_bytes(), None)
    signer = pki.ca_cert
    if rogue:
        key = ec.generate_private_key(ec.SECP256R1())
        signer = (
            x509.CertificateBuilder()
            .subject_name(pki.ca_cert.subject)
            .issuer_name(pki.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(this_update - dt.timedelta(days=1))
            .not_valid_after(next_update + dt.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf,
            issuer=pki.ca_cert,
            algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=this_update,
            next_update=next_update,
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.NAME, signer)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
