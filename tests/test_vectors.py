"""OpenSSL is the yardstick: responses nobody here wrote, and responses `openssl ocsp` itself signs in
every variant real CAs use, each judged by `openssl ocsp` and by validation, which must agree.

- Third-party vectors: every OCSP response in the ``cryptography_vectors`` package (pinned in
  pyproject.toml) whose issuer certificate the package ships too, at a fixed clock inside the
  response's validity; and tampered copies of each (a signature byte, a tbsResponseData byte, the
  wrong issuer), which both must refuse.
- OpenSSL-made: a CA and delegated responders made with ``openssl req``/``x509`` (SHA-256, SHA-224,
  SHA-1 and MD5 signed), responses from ``openssl ocsp`` with ``-rmd`` and ``-rsigopt`` (SHA-1,
  SHA-224, SHA-512, RSASSA-PSS with several salts and MGF1 hashes), issuer- or delegate-signed.

The one disagreement on purpose: MD5 signatures, which OpenSSL 3.0 still verifies and ocspproxy
refuses (ocspproxy/core/signature.py says why); it is asserted as such, so it cannot spread.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp

from ocspproxy.core.ocsp import CertKey, hash_name, issuer_key_hash
from ocspproxy.core.validate import InvalidResponse, validate_response
from tests.pki import pem
from tests.required import unavailable

VECTORS = Path(cryptography_vectors.__file__).parent / "x509"
SKEW = dt.timedelta(seconds=60)


def _certificates() -> list[tuple[str, x509.Certificate]]:
    out = []
    for path in sorted(VECTORS.iterdir()):
        if not path.is_file() or path.suffix not in (".pem", ".der", ".crt"):
            continue
        data = path.read_bytes()
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            try:
                certs = [x509.load_der_x509_certificate(data)]
            except ValueError:
                continue
        out += [(path.name, cert) for cert in certs]
    return out


@dataclass(frozen=True)
class Vector:
    file: str
    serial: int
    alg: str
    issuer_name: str
    issuer: x509.Certificate
    at: dt.datetime  # a moment inside the response's validity

    @property
    def der(self) -> bytes:
        return (VECTORS / "ocsp" / self.file).read_bytes()

    @property
    def key(self) -> CertKey:
        return CertKey(
            alg=self.alg, issuer_key_hash=issuer_key_hash(self.issuer, self.alg), serial=self.serial
        )


def _vectors() -> list[Vector]:
    """Every SingleResponse of every successful response whose CertID's issuer the package ships."""
    certs = _certificates()
    out = []
    for path in sorted((VECTORS / "ocsp").glob("*resp*.der")):
        try:
            resp = ocsp.load_der_ocsp_response(path.read_bytes())
            if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                continue
            singles = list(resp.responses)
        except ValueError:
            continue  # not even parsed: cryptography and so validation refuse it (tested elsewhere)
        for single in singles:
            try:
                alg = hash_name(single.hash_algorithm)
            except UnsupportedAlgorithm:
                continue  # a CertID hash no one uses (resp-unknown-hash-alg): refused as CertID mismatch
            for name, cert in certs:
                if issuer_key_hash(cert, alg) != single.issuer_key_hash:
                    continue
                this = single.this_update_utc
                nxt = single.next_update_utc or this + dt.timedelta(hours=1)
                at = this + min(dt.timedelta(minutes=30), (nxt - this) / 2)
                out.append(Vector(path.name, single.serial_number, alg, name, cert, at))
    return out


VECTOR_LIST = _vectors()


def openssl_verifies(der: bytes, issuer: x509.Certificate, serial: int, at: dt.datetime, tmp: Path) -> bool:
    """`openssl ocsp` with the issuer as the trust anchor (as ocspproxy trusts the configured issuer)
    at time ``at``: "Response verify OK" and a status for the serial under that issuer."""
    (tmp / "resp.der").write_bytes(der)
    (tmp / "issuer.pem").write_bytes(pem(issuer))
    argv = [
        "openssl", "ocsp", "-respin", str(tmp / "resp.der"), "-CAfile", str(tmp / "issuer.pem"),
        "-verify_other", str(tmp / "issuer.pem"), "-partial_chain", "-attime", str(int(at.timestamp())),
        "-no_nonce", "-issuer", str(tmp / "issuer.pem"), "-serial", f"0x{serial:X}",
    ]  # fmt: skip
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        unavailable("openssl is not installed")
        raise
    said = run.stdout + run.stderr
    return "Response verify OK" in said and "No Status found" not in said and run.returncode == 0


def ours(der: bytes, key: CertKey, issuer: x509.Certificate, at: dt.datetime) -> bool:
    try:
        validate_response(der, key=key, issuer=issuer, now=at, skew=SKEW)
    except InvalidResponse:
        return False
    return True


def test_the_vectors_include_responses_openssl_verifies() -> None:
    """Not vacuous: the pinned package holds real responses that verify (Let's Encrypt's)."""
    assert len(VECTOR_LIST) >= 4
    assert any(v.file == "resp-sha256.der" and v.issuer_name == "letsencryptx3.pem" for v in VECTOR_LIST)


@pytest.mark.parametrize("vector", VECTOR_LIST, ids=lambda v: f"{v.file}-{v.serial:x}-{v.issuer_name}")
def test_vector_verdict_matches_openssl(vector: Vector, tmp_path: Path) -> None:
    expected = openssl_verifies(vector.der, vector.issuer, vector.serial, vector.at, tmp_path)
    assert ours(vector.der, vector.key, vector.issuer, vector.at) is expected
    if vector.file == "resp-sha256.der":
        assert expected, "Let's Encrypt's response verifies under Let's Encrypt Authority X3"


def _flip(der: bytes, where: int) -> bytes:
    data = bytearray(der)
    data[where] ^= 0x01
    return bytes(data)


def _tampered(vector: Vector) -> dict[str, tuple[bytes, x509.Certificate]]:
    der = vector.der
    resp = ocsp.load_der_ocsp_response(der)
    tbs_at = der.index(resp.tbs_response_bytes)
    sig_at = der.index(resp.signature)
    other = next(
        c for n, c in _certificates() if issuer_key_hash(c, "sha1") != issuer_key_hash(vector.issuer, "sha1")
    )
    return {
        "signature-byte": (_flip(der, sig_at + len(resp.signature) // 2), vector.issuer),
        "tbs-byte": (_flip(der, tbs_at + len(resp.tbs_response_bytes) - 3), vector.issuer),
        "wrong-issuer": (der, other),
    }


VERIFIED = [v for v in VECTOR_LIST if v.file == "resp-sha256.der"]


@pytest.mark.parametrize("kind", ["signature-byte", "tbs-byte", "wrong-issuer"])
@pytest.mark.parametrize("vector", VERIFIED, ids=lambda v: f"{v.file}-{v.issuer_name}")
def test_tampered_vectors_are_refused_by_both(vector: Vector, kind: str, tmp_path: Path) -> None:
    der, issuer = _tampered(vector)[kind]
    key = CertKey(alg=vector.alg, issuer_key_hash=issuer_key_hash(issuer, vector.alg), serial=vector.serial)
    assert not openssl_verifies(der, issuer, vector.serial, vector.at, tmp_path)
    assert not ours(der, key, issuer, vector.at)


# --- responses `openssl ocsp` signs ------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        unavailable("openssl is not installed")
        raise


_EXT = {
    "ca": "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"
    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    "leaf": "basicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    "ocsp": "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=OCSPSigning\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
}


def _issue(d: Path, name: str, *, by: str, ext: str, md: str = "sha256", days: int = 30) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    (d / f"{name}.ext").write_text(_EXT[ext])
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{by}.pem", "-CAkey", f"{by}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days), f"-{md}",
             "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def openssl_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("openssl-ca")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.pem",
             "-subj", "/CN=root", "-days", "30", cwd=d)  # fmt: skip
    _issue(d, "ica", by="root", ext="ca")
    _issue(d, "leaf", by="ica", ext="leaf")
    for md in ("sha256", "sha224", "sha1", "md5"):
        _issue(d, f"delegate-{md}", by="ica", ext="ocsp", md=md)
    serial = x509.load_pem_x509_certificate((d / "leaf.pem").read_bytes()).serial_number
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%y%m%d%H%M%SZ")
    (d / "index.txt").write_text(f"V\t{expires}\t\t{serial:X}\tunknown\t/CN=leaf\n")
    _openssl("ocsp", "-issuer", "ica.pem", "-cert", "leaf.pem", "-no_nonce", "-reqout", "req.der", cwd=d)
    return d


VARIANTS: dict[str, tuple[str, list[str]]] = {  # name -> (signer, openssl ocsp arguments)
    "issuer-sha256": ("ica", ["-rmd", "sha256"]),
    "issuer-sha1": ("ica", ["-rmd", "sha1"]),
    "issuer-sha224": ("ica", ["-rmd", "sha224"]),
    "issuer-sha512": ("ica", ["-rmd", "sha512"]),
    "issuer-md5": ("ica", ["-rmd", "md5"]),
    "issuer-pss-default-salt": ("ica", ["-rsigopt", "rsa_padding_mode:pss"]),
    "issuer-pss-salt-digest": (
        "ica",
        ["-rsigopt", "rsa_padding_mode:pss", "-rsigopt", "rsa_pss_saltlen:digest"],
    ),
    "issuer-pss-salt-0": ("ica", ["-rsigopt", "rsa_padding_mode:pss", "-rsigopt", "rsa_pss_saltlen:0"]),
    "issuer-pss-sha1": ("ica", ["-rmd", "sha1", "-rsigopt", "rsa_padding_mode:pss"]),
    "issuer-pss-mgf1-sha384": (
        "ica",
        ["-rsigopt", "rsa_padding_mode:pss", "-rsigopt", "rsa_mgf1_md:sha384"],
    ),
    "issuer-no-next-update": ("ica", ["-rmd", "sha256", "-no_next_update"]),
    "delegate-sha256-signed": ("delegate-sha256", []),
    "delegate-sha224-signed": ("delegate-sha224", []),
    "delegate-sha1-signed": ("delegate-sha1", []),
    "delegate-sha1-signed-sha1-response": ("delegate-sha1", ["-rmd", "sha1"]),
    "delegate-md5-signed": ("delegate-md5", []),
    "leaf-as-signer": ("leaf", []),  # a certificate of the issuer without OCSPSigning
}
DELIBERATE = {"issuer-md5", "delegate-md5-signed"}  # OpenSSL verifies them; ocspproxy refuses MD5


@pytest.mark.parametrize("variant", VARIANTS)
def test_openssl_signed_variant_verdict_matches_openssl(
    openssl_ca: Path, variant: str, tmp_path: Path
) -> None:
    d = openssl_ca
    signer, extra = VARIANTS[variant]
    validity = [] if "-no_next_update" in extra else ["-ndays", "1"]
    extra = [a for a in extra if a != "-no_next_update"]
    _openssl("ocsp", "-index", "index.txt", "-rsigner", f"{signer}.pem", "-rkey", f"{signer}.key",
             "-CA", "ica.pem", "-reqin", "req.der", "-respout", f"{variant}.der", *validity, *extra,
             cwd=d)  # fmt: skip
    der = (d / f"{variant}.der").read_bytes()
    ica = x509.load_pem_x509_certificate((d / "ica.pem").read_bytes())
    serial = x509.load_pem_x509_certificate((d / "leaf.pem").read_bytes()).serial_number
    now = dt.datetime.now(dt.UTC)
    expected = openssl_verifies(der, ica, serial, now, tmp_path)
    key = CertKey(alg="sha1", issuer_key_hash=issuer_key_hash(ica, "sha1"), serial=serial)
    if variant in DELIBERATE:
        assert expected, "OpenSSL verifies MD5 signatures (else this exception is no longer needed)"
        assert not ours(der, key, ica, now)
        return
    assert ours(der, key, ica, now) is expected
    if variant != "leaf-as-signer":
        assert expected, f"{variant}: openssl ocsp itself should verify what it signed"
