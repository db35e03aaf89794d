"""Inventory: issuers found the way mod_ssl finds them, OCSP URLs, and plain problem reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ocspproxy.certs.build import build_inventory
from ocspproxy.certs.inventory import CertSource
from ocspproxy.config import Config
from tests.conftest import Proxy
from tests.pki import Leaf, TestCA, pem
from tests.upstream import Reply

CA = TestCA(ocsp_url="http://ocsp.test/")


def sources(*paths: Path, **kwargs: Any) -> list[CertSource]:
    return [CertSource(path=str(p), **kwargs) for p in paths]


# --- files that hold no certificate ------------------------------------------------------------------

PARSER_TEXT = ("ParseError", "asn1", "Unable to load PEM", "cryptography.io")


def _key_pem(leaf: Leaf, fmt: serialization.PrivateFormat) -> bytes:
    return leaf.key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _csr(leaf: Leaf) -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site.example")])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(leaf.key, hashes.SHA256())


NOT_CERTIFICATES: dict[str, tuple[Callable[[Leaf], bytes], str]] = {
    "pkcs8 key": (
        lambda leaf: _key_pem(leaf, serialization.PrivateFormat.PKCS8),
        "holds a private key, not a certificate",
    ),
    "openssl key": (
        lambda leaf: _key_pem(leaf, serialization.PrivateFormat.TraditionalOpenSSL),  # EC PRIVATE KEY
        "holds a private key, not a certificate",
    ),
    "csr": (
        lambda leaf: _csr(leaf).public_bytes(serialization.Encoding.PEM),
        "holds a certificate signing request (CSR), not a certificate",
    ),
    "public key": (
        lambda leaf: leaf.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "holds a PEM PUBLIC KEY block, not a certificate",
    ),
    "empty": (lambda leaf: b"", "is empty"),
    "binary": (
        lambda leaf: _csr(leaf).public_bytes(serialization.Encoding.DER),
        "is neither a PEM nor a DER certificate",
    ),
    "damaged": (
        lambda leaf: b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
        "holds a damaged PEM certificate (its content does not decode)",
    ),
}


@pytest.mark.parametrize("kind", NOT_CERTIFICATES)
def test_a_file_that_is_no_certificate_is_named_for_what_it_holds(tmp_path: Path, kind: str) -> None:
    make, what = NOT_CERTIFICATES[kind]
    path = tmp_path / "site.pem"
    path.write_bytes(make(CA.leaf()))
    inv = build_inventory(sources(path), [])
    assert inv.problems == [
        f"certificate {path}: {what}; --cert wants the PEM certificate (leaf first, then its chain) "
        "as in SSLCertificateFile"
    ]
    assert str(path) in inv.unreadable and not inv.targets
    issuers = build_inventory([], [path])
    assert issuers.problems == [f"issuer file {path}: {what}; --issuers wants PEM CA certificates"]
    assert not any(text in p for p in [*inv.problems, *issuers.problems] for text in PARSER_TEXT)


def test_a_file_from_apache_that_is_no_certificate_points_at_the_directive(tmp_path: Path) -> None:
    leaf = CA.leaf()
    key = tmp_path / "site.key"
    key.write_bytes(_key_pem(leaf, serialization.PrivateFormat.PKCS8))
    good = tmp_path / "good.pem"
    good.write_bytes(pem(leaf.cert))
    csr = tmp_path / "chain.pem"
    csr.write_bytes(_csr(leaf).public_bytes(serialization.Encoding.PEM))
    inv = build_inventory(
        [
            CertSource(path=str(key), named_by="SSLCertificateFile"),
            CertSource(path=str(good), chain_file=csr, named_by="SSLCertificateFile"),
        ],
        [],
    )
    assert inv.problems == [
        f"certificate {key}: holds a private key, not a certificate; SSLCertificateFile wants the PEM "
        "certificate (leaf first, then its chain)",
        f"certificate {good}: its SSLCertificateChainFile {csr} holds a certificate signing request "
        "(CSR), not a certificate; it should hold PEM CA certificates",
    ]


def test_issuer_from_the_certificate_files_own_chain(tmp_path: Path) -> None:
    leaf = CA.leaf()
    path = tmp_path / "site.pem"
    path.write_bytes(pem(leaf.cert, CA.cert))
    inv = build_inventory(sources(path), [])
    (target,) = inv.targets.values()
    assert target.key == CA.cert_id(leaf.serial).key
    assert target.url == "http://ocsp.test/" and inv.problems == []


def test_issuer_from_chain_file_ca_file_and_issuer_bundle(tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pem(CA.cert))
    for kind in ("chain_file", "ca_file", None):
        leaf = CA.leaf()
        path = tmp_path / f"{kind}.pem"
        path.write_bytes(pem(leaf.cert))
        if kind is None:
            inv = build_inventory(sources(path), [chain])
        else:
            inv = build_inventory(sources(path, **{kind: chain}), [])
        assert CA.cert_id(leaf.serial).key in inv.targets, kind


def test_issuer_from_ca_certificate_path(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    directory.mkdir()
    (directory / "ca.pem").write_bytes(pem(CA.cert))
    (directory / "junk.txt").write_text("not a certificate")
    leaf = CA.leaf()
    path = tmp_path / "leaf.pem"
    path.write_bytes(pem(leaf.cert))
    inv = build_inventory(sources(path, ca_path=directory), [])
    assert CA.cert_id(leaf.serial).key in inv.targets


def test_problems_are_named_plainly(tmp_path: Path) -> None:
    no_url = CA.leaf("no-ocsp.example", ocsp_url=None)
    (tmp_path / "no-url.pem").write_bytes(pem(no_url.cert, CA.cert))
    orphan = TestCA().leaf("orphan.example")
    (tmp_path / "orphan.pem").write_bytes(pem(orphan.cert))
    (tmp_path / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    inv = build_inventory(
        [
            *sources(
                tmp_path / "no-url.pem",
                tmp_path / "orphan.pem",
                tmp_path / "broken.pem",
                tmp_path / "gone.pem",
            ),
            CertSource(path=str(tmp_path / "none-*.pem")),
        ],
        [],
    )
    text = "\n".join(inv.problems)
    assert "no-ocsp.example" in text and "no OCSP URL" in text
    assert "orphan.example" in text and "issuer not found" in text
    assert "broken.pem" in text and "gone.pem" in text
    assert "matches no file" in text
    assert len(inv.problems) == 5


def test_configured_url_overrides_aia(tmp_path: Path) -> None:
    leaf = CA.leaf()
    (tmp_path / "leaf.pem").write_bytes(pem(leaf.cert, CA.cert))
    (tmp_path / "ca.pem").write_bytes(pem(CA.cert))
    inv = build_inventory(sources(tmp_path / "leaf.pem"), [], {tmp_path / "ca.pem": "http://mirror.test/"})
    issuer = inv.issuer_for_key(CA.cert_id(leaf.serial).key)
    assert issuer is not None
    assert inv.upstream_for(CA.cert_id(leaf.serial).key, issuer) == "http://mirror.test/"
    # Any other serial of that issuer goes to the same configured place, never one from a request.
    assert inv.upstream_for(CA.cert_id(99).key, issuer) == "http://mirror.test/"


def test_sha256_certids_find_the_same_issuer(tmp_path: Path) -> None:
    leaf = CA.leaf()
    (tmp_path / "leaf.pem").write_bytes(pem(leaf.cert, CA.cert))
    inv = build_inventory(sources(tmp_path / "leaf.pem"), [])
    assert inv.issuer_for(CA.cert_id(leaf.serial, "sha256")) is not None
    wrong_name = CA.cert_id(leaf.serial, "sha256")
    forged = type(wrong_name)(key=wrong_name.key, issuer_name_hash=b"\x00" * 32)
    assert inv.issuer_for(forged) is None


async def test_apache_config_drives_the_inventory(tmp_path: Path, upstream, make_proxy) -> None:
    ca = TestCA(ocsp_url=upstream.url)
    upstream.behaviour = lambda serial: Reply(ca.respond(serial))
    leaf = ca.leaf()
    (tmp_path / "site cert.pem").write_bytes(pem(leaf.cert))
    (tmp_path / "chain.pem").write_bytes(pem(ca.cert))
    (tmp_path / "httpd.conf").write_text(
        f'ServerRoot "{tmp_path}"\n'
        "<IfModule ssl_module>\n"
        "<VirtualHost *:443>\n"
        "  ServerName www.example.test\n"
        '  SSLCertificateFile "site cert.pem"\n'
        "  SSLCertificateChainFile chain.pem\n"
        "</VirtualHost>\n"
        "<VirtualHost *:8443>\n"
        '  SSLCertificateFile "site cert.pem"\n'
        "  SSLCertificateChainFile chain.pem\n"
        "</VirtualHost>\n"
        "</IfModule>\n"
    )
    proxy = make_proxy(ca=ca, leaves=[], apache_config=tmp_path / "httpd.conf")
    await proxy.start()
    assert list(proxy.app.inventory.targets) == [ca.cert_id(leaf.serial).key]
    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.cert_status == "GOOD"


def _warnings(err: str, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in lines if e["event"] == event]


@pytest.mark.parametrize("given", ["nothing", "apache"])
async def test_nothing_to_staple_is_said_once_with_why(
    given: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    apache: Path | None = None
    if given == "apache":
        apache = tmp_path / "httpd.conf"
        apache.write_text("<VirtualHost *:443>\n  SSLCertificateFiel /etc/ssl/a.pem\n</VirtualHost>\n")
    config = Config(listen_port=0, state_dir=tmp_path / "state", apache_config=apache, watch_interval=0.5)
    proxy = Proxy(config)
    await proxy.start()
    assert proxy.app is not None
    await asyncio.sleep(1.6)  # watch passes (every 0.5 s) that find nothing changed say nothing again
    (said,) = _warnings(capsys.readouterr().err, "no certificates to keep stapled")
    assert said["level"] == "warning"
    if apache is None:
        assert said["reason"] == "no --cert or certs, no --apache-config or apache_config given"
        assert "misspelt" not in said
    else:
        assert said["reason"] == (
            f"Apache configuration {apache} (1 file read) has no TLS virtual host: "
            "no SSLCertificateFile in effect"
        )
        assert said["misspelt"] == [f"SSLCertificateFiel at {apache}:2 (mod_ssl has SSLCertificateFile)"]
    await proxy.app.reload("SIGHUP")  # still true: said again
    assert len(_warnings(capsys.readouterr().err, "no certificates to keep stapled")) == 1
    await proxy.stop()


async def test_apache_config_without_tls_next_to_cert_flags_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = CA.leaf()
    (tmp_path / "leaf.pem").write_bytes(pem(leaf.cert, CA.cert))
    apache = tmp_path / "httpd.conf"
    apache.write_text("Listen 80\n")
    config = Config(
        listen_port=0, state_dir=tmp_path / "state", certs=(str(tmp_path / "leaf.pem"),), apache_config=apache
    )
    proxy = Proxy(config)
    await proxy.start()
    err = capsys.readouterr().err
    assert _warnings(err, "no certificates to keep stapled") == []
    (said,) = _warnings(err, "no certificates from Apache's configuration")
    assert said["reason"].startswith(f"Apache configuration {apache} (1 file read) has no TLS virtual host")
    await proxy.stop()
