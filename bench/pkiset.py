"""Certificates, OCSP requests and pre-signed OCSP responses for the benchmarks.

* ``cache_hit_set``: K leaves of one test CA (``tests.pki.TestCA``), their mod_ssl-like requests and
  good responses, written to files (the leaves for ``--cert``, the requests for wrk's Lua script).
* ``scale_set``: N leaves of a synthetic CA (one leaf key reused, only serial and subject differ), with
  two pre-signed response sets: ``fresh`` (valid 20 days from generation) and ``stale`` (thisUpdate 20 days
  before generation, nextUpdate 10 days after: servable, but past its refresh time). Generated on all
  cores and cached under ``bench/.cache/scale-N`` for 7 days, so re-runs are quick.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from ocspproxy.core.ocsp import issuer_key_hash, issuer_name_hash
from tests.pki import TestCA, make_cert, pem

__all__ = [
    "CACHE_DIR",
    "CacheHitSet",
    "OpensslPki",
    "ScaleSet",
    "cache_hit_set",
    "load_responses",
    "openssl_pki",
    "save_responses",
    "scale_set",
    "sign_response",
    "staple_file_name",
]

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
_SCALE_VERSION = 1
_SCALE_MAX_AGE = dt.timedelta(days=7)
UTC = dt.UTC


def sign_response(
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    serial: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    name_hash: bytes | None = None,
    key_hash: bytes | None = None,
) -> bytes:
    """A good OCSP response for serial (SHA-1 CertID, like mod_ssl asks), signed by the CA itself."""
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=name_hash or issuer_name_hash(ca_cert, "sha1"),
            issuer_key_hash=key_hash or issuer_key_hash(ca_cert, "sha1"),
            serial_number=serial,
            algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=this_update,
            next_update=next_update,
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca_cert)
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def staple_file_name(ca_cert: x509.Certificate, serial: int) -> str:
    """The name ocspproxy's FileStore gives a SHA-1 CertID's staple."""
    return f"sha1-{issuer_key_hash(ca_cert, 'sha1').hex()}-{serial:x}.der"


def save_responses(path: Path, responses: dict[int, bytes]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(responses, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def load_responses(path: Path) -> dict[int, bytes]:
    with path.open("rb") as fh:
        data = pickle.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a response table")
    return data


# --------------------------------------------------------------------------------------------------
# K certificates for the cache-hit benchmark
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheHitSet:
    directory: Path
    ca_pem: Path  # --issuers
    cert_glob: str  # --cert
    serials: list[int]
    request_files: list[Path]  # one DER request per file, for bench/post.lua
    requests: list[bytes]
    expected: list[bytes]  # the response each request must get, byte for byte
    responses_file: Path  # serial -> DER, for bench/upstream.py


def cache_hit_set(directory: Path, k: int, ocsp_url: str) -> CacheHitSet:
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA(ocsp_url=ocsp_url)
    certs = directory / "certs"
    reqs = directory / "requests"
    certs.mkdir(exist_ok=True)
    reqs.mkdir(exist_ok=True)
    ca_pem = directory / "ca.pem"
    ca_pem.write_bytes(pem(ca.cert))
    serials: list[int] = []
    request_files: list[Path] = []
    requests: list[bytes] = []
    expected: list[bytes] = []
    responses: dict[int, bytes] = {}
    now = dt.datetime.now(UTC).replace(microsecond=0)
    for i in range(k):
        leaf = ca.leaf(f"site{i}.bench.example")
        (certs / f"leaf-{i:05d}.pem").write_bytes(pem(leaf.cert))
        der = ca.request(leaf.serial)
        path = reqs / f"{i + 1}.der"  # 1-based: Lua arrays
        path.write_bytes(der)
        response = sign_response(
            ca_cert=ca.cert,
            ca_key=ca.key,
            serial=leaf.serial,
            this_update=now - dt.timedelta(minutes=1),
            next_update=now + dt.timedelta(days=1),
        )
        responses[leaf.serial] = response
        serials.append(leaf.serial)
        request_files.append(path)
        requests.append(der)
        expected.append(response)
    responses_file = directory / "responses.pickle"
    save_responses(responses_file, responses)
    return CacheHitSet(
        directory=directory,
        ca_pem=ca_pem,
        cert_glob=str(certs / "*.pem"),
        serials=serials,
        request_files=request_files,
        requests=requests,
        expected=expected,
        responses_file=responses_file,
    )


# --------------------------------------------------------------------------------------------------
# N certificates for the scale benchmark (cached)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSet:
    directory: Path
    n: int
    ca_cert: x509.Certificate
    ca_pem: Path
    certs_dir: Path
    fresh_file: Path
    stale_file: Path
    serials: range
    generated_in: float | None  # seconds spent generating now; None when taken from the cache

    @property
    def cert_glob(self) -> str:
        return str(self.certs_dir / "*.pem")


_SERIAL_BASE = 0x4000_0000


@dataclass(frozen=True)
class _WorkerSetup:
    ca_pem: bytes
    ca_key_pem: bytes
    leaf_key_pem: bytes
    certs_dir: str
    created: dt.datetime


_worker: dict[str, object] = {}


def _init_worker(setup: _WorkerSetup) -> None:
    ca_cert = x509.load_pem_x509_certificate(setup.ca_pem)
    _worker.update(
        setup=setup,
        ca_cert=ca_cert,
        ca_key=serialization.load_pem_private_key(setup.ca_key_pem, None),
        leaf_key=serialization.load_pem_private_key(setup.leaf_key_pem, None),
        name_hash=issuer_name_hash(ca_cert, "sha1"),
        key_hash=issuer_key_hash(ca_cert, "sha1"),
    )


def _generate_chunk(bounds: tuple[int, int]) -> list[tuple[int, bytes, bytes]]:
    setup = _worker["setup"]
    ca_cert = _worker["ca_cert"]
    ca_key = _worker["ca_key"]
    leaf_key = _worker["leaf_key"]
    assert isinstance(setup, _WorkerSetup)
    assert isinstance(ca_cert, x509.Certificate)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    name_hash, key_hash = _worker["name_hash"], _worker["key_hash"]
    assert isinstance(name_hash, bytes) and isinstance(key_hash, bytes)
    created = setup.created
    out: list[tuple[int, bytes, bytes]] = []
    for i in range(*bounds):
        serial = _SERIAL_BASE + i
        cert = make_cert(
            subject=f"host{i}.scale.bench.example",
            key=leaf_key,
            issuer=ca_cert,
            issuer_key=ca_key,
            ocsp_url="http://127.0.0.1:9/",  # the suite points the issuer at its upstream ([[issuer]])
            serial=serial,
            not_before=created - dt.timedelta(days=1),
            not_after=created + dt.timedelta(days=365),
        )
        Path(setup.certs_dir, f"leaf-{i:06d}.pem").write_bytes(pem(cert))
        fresh = sign_response(
            ca_cert=ca_cert,
            ca_key=ca_key,
            serial=serial,
            this_update=created - dt.timedelta(minutes=1),
            next_update=created + dt.timedelta(days=20),
            name_hash=name_hash,
            key_hash=key_hash,
        )
        stale = sign_response(
            ca_cert=ca_cert,
            ca_key=ca_key,
            serial=serial,
            this_update=created - dt.timedelta(days=20),
            next_update=created + dt.timedelta(days=10),
            name_hash=name_hash,
            key_hash=key_hash,
        )
        out.append((serial, fresh, stale))
    return out


def _load_scale(directory: Path, n: int) -> ScaleSet | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        created = dt.datetime.fromisoformat(meta["created"])
        if meta.get("version") != _SCALE_VERSION or meta.get("n") != n:
            return None
        if dt.datetime.now(UTC) - created > _SCALE_MAX_AGE:
            return None
        ca_pem = directory / "ca.pem"
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    except (OSError, ValueError, KeyError):
        return None
    return ScaleSet(
        directory=directory,
        n=n,
        ca_cert=ca_cert,
        ca_pem=ca_pem,
        certs_dir=directory / "certs",
        fresh_file=directory / "fresh.pickle",
        stale_file=directory / "stale.pickle",
        serials=range(_SERIAL_BASE, _SERIAL_BASE + n),
        generated_in=None,
    )


def scale_set(n: int, *, cache_dir: Path = CACHE_DIR, workers: int | None = None) -> ScaleSet:
    """The cached set for n certificates, generated (in parallel) when missing or too old."""
    directory = cache_dir / f"scale-{n}"
    cached = _load_scale(directory, n)
    if cached is not None:
        return cached
    started = time.monotonic()
    work = cache_dir / f"scale-{n}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "certs").mkdir(parents=True)
    created = dt.datetime.now(UTC).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = make_cert(
        subject="ocspproxy bench scale CA",
        key=ca_key,
        issuer=None,
        issuer_key=ca_key,
        ca=True,
        not_before=created - dt.timedelta(days=2),
        not_after=created + dt.timedelta(days=3650),
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    (work / "ca.pem").write_bytes(pem(ca_cert))
    setup = _WorkerSetup(
        ca_pem=pem(ca_cert),
        ca_key_pem=ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        leaf_key_pem=leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        certs_dir=str(work / "certs"),
        created=created,
    )
    step = 1000
    chunks = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    fresh: dict[int, bytes] = {}
    stale: dict[int, bytes] = {}
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers or os.cpu_count() or 1, initializer=_init_worker, initargs=(setup,)) as pool:
        for part in pool.imap_unordered(_generate_chunk, chunks):
            for serial, f, s in part:
                fresh[serial] = f
                stale[serial] = s
    save_responses(work / "fresh.pickle", fresh)
    save_responses(work / "stale.pickle", stale)
    (work / "meta.json").write_text(
        json.dumps({"version": _SCALE_VERSION, "n": n, "created": created.isoformat()}) + "\n"
    )
    shutil.rmtree(directory, ignore_errors=True)
    work.rename(directory)
    loaded = _load_scale(directory, n)
    if loaded is None:
        raise RuntimeError(f"generated scale set in {directory} does not load")
    return ScaleSet(**{**loaded.__dict__, "generated_in": time.monotonic() - started})


@dataclass(frozen=True)
class OpensslPki:
    """A CA as ``openssl ocsp`` serves it: certificate, key, index; and its leaves' directory."""

    ca_pem: Path
    key_pem: Path
    index: Path
    certs: Path


def openssl_pki(directory: Path, n: int) -> OpensslPki:
    """A CA and n leaves, with the index ``openssl ocsp`` answers from (every leaf good)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert(subject="ocspproxy bench fleet CA", key=key, issuer=None, issuer_key=key, ca=True)
    (directory / "ca.pem").write_bytes(pem(ca))
    key_pem = directory / "ca.key"
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    certs = directory / "certs"
    certs.mkdir(exist_ok=True)
    lines = []
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    for i in range(n):
        leaf = make_cert(
            subject=f"leaf{i}.bench", key=leaf_key, issuer=ca, issuer_key=key, ocsp_url="http://unused/"
        )
        (certs / f"leaf{i}.pem").write_bytes(pem(leaf))
        serial = f"{leaf.serial_number:X}"
        serial = "0" * (len(serial) % 2) + serial
        expires = leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        lines.append(f"V\t{expires}\t\t{serial}\tunknown\t/CN=leaf{i}.bench\n")
    (directory / "index.txt").write_text("".join(lines))
    return OpensslPki(directory / "ca.pem", key_pem, directory / "index.txt", certs)
