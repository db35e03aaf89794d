"""Inventory: issuers found the way mod_ssl finds them, OCSP URLs, and plain problem reports."""

from __future__ import annotations

from pathlib import Path

from ocspproxy.inventory import CertSource, build_inventory
from tests.pki import TestCA, pem
from tests.upstream import Reply

CA = TestCA(ocsp_url="http://ocsp.test/")


def sources(*paths: Path, **kwargs: Path) -> list[CertSource]:
    return [CertSource(path=str(p), **kwargs) for p in paths]


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
    assert list(proxy.daemon.inventory.targets) == [ca.cert_id(leaf.serial).key]
    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.cert_status == "GOOD"
