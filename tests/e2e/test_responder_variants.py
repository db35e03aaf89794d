"""End-to-end: responders built the way real CAs build them. Every variant `openssl ocsp` verifies
as good is stapled good by Apache through ocspproxy; every bad one is refused by both.

One RSA CA (root and issuing CA), one leaf per variant whose AIA OCSP URL names that variant's
responder: ``openssl ocsp`` with the variant's options where it can make the response, else a fixed
DER file built here (``tests/e2e/fixed_responder.py``). One ocspproxy holds every leaf; one Apache has
a virtual host per leaf, its SSLStaplingResponseTimeSkew taken from ``ocspproxy apache snippet`` with
ocspproxy's own configuration. Each variant is checked three ways: ``openssl ocsp`` asking the CA's
responder directly (the yardstick), ``openssl ocsp`` asking ocspproxy, and Apache stapling it
(``openssl s_client -status``).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.pki import Key, make_cert

from .conftest import apache_account
from .peers import (
    REPO_ROOT,
    Apache,
    Leaf,
    ManagedProcess,
    OcspProxy,
    OcspText,
    VHost,
    find_openssl,
    free_port,
    index_line,
    observe,
    poll_staple,
    run_ocspproxy,
    utcnow,
)

pytestmark = pytest.mark.e2e

SKEW = 5  # ocspproxy's [cache] skew here: small, so that the skew test takes seconds
MAX_INTERVAL = 3  # every staple is asked for again within seconds


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _now() -> dt.datetime:
    return utcnow().replace(microsecond=0)


def _write(path: Path, cert: x509.Certificate, key: Key | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
    return path


# name -> (signer, openssl ocsp options); the leaf's responder is `openssl ocsp` with these
OPENSSL_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "plain": ("ica", ["-ndays", "1"]),
    "sha1_delegate": ("delegate_sha1", ["-ndays", "1"]),
    "no_next_update": ("ica", []),
    "sha224": ("ica", ["-ndays", "1", "-rmd", "sha224"]),
    "pss": ("ica", ["-ndays", "1", "-rsigopt", "rsa_padding_mode:pss"]),
    "expired_delegate": ("delegate_expired", ["-ndays", "1"]),
    "serverauth_signer": ("serverauth", ["-ndays", "1"]),
}
# name -> the leaf's responder answers with a fixed DER file made here
FIXED_VARIANTS = ("backdated", "skew", "bad_signature", "far_future", "sha1_for_sha256")
GOOD = ("plain", "sha1_delegate", "no_next_update", "sha224", "pss", "backdated")
BAD = ("expired_delegate", "serverauth_signer", "bad_signature", "far_future")


class OpensslResponder(ManagedProcess):
    def __init__(self, name: str, port: int, directory: Path, signer: str, options: list[str]) -> None:
        super().__init__(f"openssl ocsp ({name} :{port})", port, directory / "logs" / f"ca-{name}.log")
        self.directory, self.signer, self.options = directory, signer, options

    def ready(self) -> bool:
        # Never a bare TCP probe: openssl ocsp 3.0 spins once a client closes without a request.
        return "waiting for OCSP client connections" in self.log_since_start()

    def command(self) -> list[str]:
        d = self.directory
        return [
            find_openssl() or "openssl", "ocsp", "-index", str(d / "index.txt"), "-port", str(self.port),
            "-rsigner", str(d / f"{self.signer}.pem"), "-rkey", str(d / f"{self.signer}.key"),
            "-CA", str(d / "ica.pem"), *self.options, "-ignore_err",
        ]  # fmt: skip


class FixedResponder(ManagedProcess):
    def __init__(self, port: int, directory: Path) -> None:
        super().__init__(f"fixed responder :{port}", port, directory / "logs" / "fixed.log")
        self.directory = directory

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.e2e.fixed_responder",
            str(self.port),
            str(self.directory / "fixed"),
        ]

    def cwd(self) -> Path:
        return REPO_ROOT

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env


@dataclass
class World:
    d: Path
    root: x509.Certificate
    ica: x509.Certificate
    ica_key: rsa.RSAPrivateKey
    leaves: dict[str, Leaf]
    urls: dict[str, str]  # the CA responder of each leaf
    delegates: dict[str, tuple[x509.Certificate, rsa.RSAPrivateKey]]
    proxy: OcspProxy
    apache: Apache

    def fixed(self, name: str, der: bytes) -> None:
        tmp = self.d / "fixed" / f".{name}.tmp"
        tmp.write_bytes(der)
        tmp.replace(self.d / "fixed" / f"{name}.der")


def _leaf(d: Path, name: str, url: str, ica: x509.Certificate, ica_key: rsa.RSAPrivateKey) -> Leaf:
    key = _rsa()
    cert = make_cert(subject=f"{name}.localhost", key=key, issuer=ica, issuer_key=ica_key, ocsp_url=url)
    cert_pem = _write(d / f"{name}.pem", cert, key)
    chain = d / f"{name}-chain.pem"
    chain.write_bytes(cert_pem.read_bytes() + (d / "ica.pem").read_bytes())
    return Leaf(
        name=name, cert=cert, cert_pem=cert_pem, chain_pem=chain, key_pem=cert_pem.with_suffix(".key")
    )


def _respond(
    world: World,
    name: str,
    *,
    this_update: dt.datetime,
    validity: dt.timedelta = dt.timedelta(days=1),
    signer: str = "ica",
    alg: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A good response for the leaf `name`, built here (what `openssl ocsp` cannot make)."""
    from cryptography.x509 import ocsp

    cert, key = (world.ica, world.ica_key) if signer == "ica" else world.delegates[signer]
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=world.leaves[name].cert,
            issuer=world.ica,
            algorithm=alg or hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=this_update,
            next_update=this_update + validity,
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, cert)
    )
    if signer != "ica":
        builder = builder.certificates([cert])
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def world(e2e_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("variants")
    (d / "fixed").mkdir()
    now = _now()
    root_key, ica_key = _rsa(), _rsa()
    root = make_cert(subject="Variants Root", key=root_key, issuer=None, issuer_key=root_key, ca=True)
    ica = make_cert(subject="Variants Issuing CA", key=ica_key, issuer=root, issuer_key=root_key, ca=True)
    _write(d / "root.pem", root)
    _write(d / "ica.pem", ica, ica_key)
    ocsp_eku = [ExtendedKeyUsageOID.OCSP_SIGNING]
    delegates: dict[str, tuple[x509.Certificate, rsa.RSAPrivateKey]] = {}
    made: dict[str, dict[str, Any]] = {
        "delegate_sha1": {"sign_hash": hashes.SHA1()},
        "delegate_expired": {
            "not_before": now - dt.timedelta(days=30),
            "not_after": now - dt.timedelta(days=1),
        },
        "delegate_fresh": {"not_before": now - dt.timedelta(minutes=10)},  # rotated in after thisUpdate
        "serverauth": {"eku": [ExtendedKeyUsageOID.SERVER_AUTH]},  # a certificate of the CA, no OCSPSigning
    }
    for name, extra in made.items():
        key = _rsa()
        options = {"eku": ocsp_eku, **extra}
        cert = make_cert(subject=name, key=key, issuer=ica, issuer_key=ica_key, **options)
        _write(d / f"{name}.pem", cert, key)
        delegates[name] = (cert, key)

    ports = {name: free_port() for name in OPENSSL_VARIANTS}
    fixed_port = free_port()
    urls = {name: f"http://127.0.0.1:{port}/" for name, port in ports.items()}
    urls |= {name: f"http://127.0.0.1:{fixed_port}/{name}" for name in FIXED_VARIANTS}
    leaves = {name: _leaf(d, name, url, ica, ica_key) for name, url in urls.items()}
    (d / "index.txt").write_text("".join(index_line(leaf) for leaf in leaves.values()))
    (d / "index.txt.attr").write_text("unique_subject = no\n")

    config = d / "ocspproxy.toml"
    config.write_text(f"[cache]\nskew = {SKEW}\n[refresh]\nmax_interval = {MAX_INTERVAL}\n")
    proxy = OcspProxy(
        free_port(), d / "state", [leaf.cert_pem for leaf in leaves.values()], d / "ica.pem",
        d / "logs" / "ocspproxy.log", config=config,
    )  # fmt: skip
    # mod_ssl's skew comes from ocspproxy's own configuration, as `ocspproxy apache install` writes it.
    snippet = run_ocspproxy("apache", "snippet", "--config", str(config), "--proxy-url", proxy.url)
    assert snippet.returncode == 0, snippet.stderr
    found = re.search(r"^\s*SSLStaplingResponseTimeSkew (\d+)$", snippet.stdout, re.MULTILINE)
    assert found is not None and int(found.group(1)) == SKEW, snippet.stdout
    user, group = apache_account()
    apache = Apache(
        d / "httpd",
        [VHost(free_port(), leaf) for leaf in leaves.values()],
        proxy.url,
        time_skew=int(found.group(1)),
        user=user,
        group=group,
    )
    world = World(d, root, ica, ica_key, leaves, urls, delegates, proxy, apache)
    world.fixed(
        "backdated",
        _respond(world, "backdated", this_update=now - dt.timedelta(hours=3), signer="delegate_fresh"),
    )
    world.fixed("skew", _respond(world, "skew", this_update=now - dt.timedelta(minutes=1)))
    good = bytearray(_respond(world, "bad_signature", this_update=now - dt.timedelta(minutes=1)))
    good[-10] ^= 0x01  # inside the signature, at the end of the BasicOCSPResponse (no certificates)
    world.fixed("bad_signature", bytes(good))
    world.fixed("far_future", _respond(world, "far_future", this_update=now + dt.timedelta(days=1)))
    world.fixed(
        "sha1_for_sha256", _respond(world, "sha1_for_sha256", this_update=now - dt.timedelta(minutes=1))
    )

    processes: list[ManagedProcess] = [
        *(OpensslResponder(name, ports[name], d, *OPENSSL_VARIANTS[name]) for name in OPENSSL_VARIANTS),
        FixedResponder(fixed_port, d),
        proxy,
        apache,
    ]
    try:
        for process in processes:
            process.start()
        yield world
    finally:
        for process in reversed(processes):
            process.cleanup()


@dataclass(frozen=True)
class Asked:
    verified: bool
    status: str | None  # good / revoked / unknown, or the responder's error (trylater ...)
    text: OcspText | None
    output: str


def ask(world: World, name: str, url: str, *, digest: str = "sha1") -> Asked:
    """`openssl ocsp` as the verifying client: root as trust anchor, the issuing CA as intermediate."""
    d = world.d
    argv = [
        find_openssl() or "openssl", "ocsp", "-issuer", str(d / "ica.pem"), f"-{digest}",
        "-cert", str(world.leaves[name].cert_pem), "-url", url, "-CAfile", str(d / "root.pem"),
        "-verify_other", str(d / "ica.pem"), "-no_nonce", "-resp_text", "-timeout", "10",
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    output = run.stdout + run.stderr
    status = None
    found = re.search(rf"{re.escape(str(world.leaves[name].cert_pem))}: (\w+)", output)
    if found:
        status = found.group(1)
    elif (error := re.search(r"Responder Error: (\w+)", output)) is not None:
        status = error.group(1)
    text = None
    if "OCSP Response Status:" in output:
        from .peers import parse_ocsp_text

        text = parse_ocsp_text(output)
    return Asked("Response verify OK" in output, status, text, output)


def _staple_of(world: World, name: str, predicate, what: str, timeout: float = 30.0) -> OcspText | None:
    return poll_staple(
        world.apache.port_of(world.leaves[name]), world.d / "root.pem", predicate, timeout=timeout, what=what
    )


@pytest.mark.parametrize("name", GOOD)
def test_good_variant_is_stapled_good(world: World, name: str) -> None:
    direct = ask(world, name, world.urls[name])
    assert direct.verified and direct.status == "good", f"the yardstick itself:\n{direct.output}"
    via = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        via = ask(world, name, world.proxy.url)
        if via.status == "good":
            break
        time.sleep(0.5)
    assert via is not None and via.verified and via.status == "good", via.output if via else None
    staple = _staple_of(world, name, lambda s: s is not None and s.good, f"a good staple for {name}")
    assert staple is not None and staple.serial == world.leaves[name].serial_hex
    assert "AH01936" not in world.apache.error_log_text(), "Apache was handed a response it refused"


@pytest.mark.parametrize("name", BAD)
def test_bad_variant_is_refused_by_openssl_and_never_stapled(world: World, name: str) -> None:
    direct = ask(world, name, world.urls[name])
    assert not (direct.verified and direct.status == "good"), f"OpenSSL accepts it:\n{direct.output}"
    time.sleep(1)  # ocspproxy has fetched it by now (start-up pre-fetch)
    via = ask(world, name, world.proxy.url)
    assert via.status == "trylater", via.output
    port = world.apache.port_of(world.leaves[name])
    for _ in range(3):
        assert observe(port, world.d / "root.pem").staple is None, f"{name} stapled"
        time.sleep(world.apache.error_cache_timeout / 2)
    assert "rejected" in world.proxy.log_text()


def test_sha256_client_gets_a_sha256_certid_and_never_a_sha1_one(world: World) -> None:
    """openssl ocsp answers a SHA-256 request in SHA-256: served to the SHA-256 client. A CA that
    answers every request in SHA-1: fine for mod_ssl (SHA-1), tryLater for a SHA-256 client (never
    a response in which it would find "No Status")."""
    sha256 = ask(world, "plain", world.proxy.url, digest="sha256")
    assert sha256.verified and sha256.status == "good", sha256.output
    direct = ask(world, "sha1_for_sha256", world.urls["sha1_for_sha256"], digest="sha256")
    assert direct.verified and direct.status == "ERROR" and "No Status found" in direct.output, direct.output
    refused = ask(world, "sha1_for_sha256", world.proxy.url, digest="sha256")
    assert refused.status == "trylater", refused.output
    assert "SHA1 CertID for a SHA256 request" in world.proxy.log_text()
    sha1 = ask(world, "sha1_for_sha256", world.proxy.url)
    assert sha1.verified and sha1.status == "good", sha1.output


def test_no_next_update_is_served_for_a_bounded_time(world: World) -> None:
    via = ask(world, "no_next_update", world.proxy.url)
    assert via.verified and via.status == "good" and via.text is not None, via.output
    assert via.text.next_update is None and via.text.this_update is not None, via.output
    request = urllib.request.Request(
        world.proxy.url,
        data=_request_der(world, "no_next_update"),
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as resp:
        expires = resp.headers["Expires"]
        max_age = int(resp.headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    from email.utils import parsedate_to_datetime

    bound = via.text.this_update + dt.timedelta(hours=1)  # validity_without_next_update, default
    assert abs((parsedate_to_datetime(expires) - bound).total_seconds()) <= 1, expires
    assert 0 < max_age <= 3600


def _request_der(world: World, name: str) -> bytes:
    from cryptography.x509 import ocsp

    builder = ocsp.OCSPRequestBuilder().add_certificate(world.leaves[name].cert, world.ica, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_response_ahead_of_apaches_skew_is_not_served_until_it_is_usable(world: World) -> None:
    """A CA clock 15 s fast (thisUpdate ahead) with skew 5: ocspproxy keeps serving the previous
    staple (Apache would refuse the new one: AH01936) until the new one is within the skew, then
    serves it. Apache and ocspproxy agree because the snippet gives mod_ssl ocspproxy's skew."""
    first = _staple_of(world, "skew", lambda s: s is not None and s.good, "the first staple")
    assert first is not None and first.this_update is not None
    ahead = _now() + dt.timedelta(seconds=15)
    world.fixed("skew", _respond(world, "skew", this_update=ahead))
    seen: list[OcspText] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        staple = observe(world.apache.port_of(world.leaves["skew"]), world.d / "root.pem").staple
        assert staple is not None and staple.good, "a staple all along"
        assert staple.this_update is not None
        assert staple.this_update <= utcnow() + dt.timedelta(seconds=SKEW + 1), "served beyond the skew"
        seen.append(staple)
        if staple.this_update == ahead:
            break
        time.sleep(1)
    assert seen[-1].this_update == ahead, "the new response was never served"
    assert any(s.this_update == first.this_update for s in seen), "the previous one was served meanwhile"
    assert "in the future" in world.proxy.log_text()
    assert "AH01936" not in world.apache.error_log_text(), "Apache refused a response ocspproxy served"
