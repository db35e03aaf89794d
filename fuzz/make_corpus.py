"""Write the fuzz fixtures: the test PKI in fuzz/ca and the seed corpora in fuzz/corpus/<target>/.

    .venv/bin/python -m fuzz.make_corpus

The PKI is made with tests/pki.py (new keys each time); only certificates are written, never keys.
meta.json fixes the clock of fuzz_response half-way through the seeds' validity, so the seeds do not
expire. Re-running replaces everything (the seeds must match the PKI).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from fuzz import der
from fuzz.oracle import CA_DIR, CORPUS_DIR
from tests.pki import TestCA, error_body, pem

SERIAL = 0x1234_5678_9ABC_DEF0
SKEW = 300


def _two_certids(request: bytes) -> bytes:
    """The request with its only Request repeated (ocspproxy answers one CertID per request)."""
    tbs = der.children(der.parse(request))[0]
    parts = der.children(tbs)
    request_list = next(p for p in parts if p.tag == 0x30)
    (single,) = der.children(request_list)
    doubled = der.encode(0x30, single.raw * 2)
    body = b"".join(doubled if p is request_list else p.raw for p in parts)
    return der.encode(0x30, der.encode(0x30, body))


def _nested(depth: int) -> bytes:
    data = b""
    for _ in range(depth):
        data = der.encode(0x30, data)
    return data


def build(ca_dir: Path = CA_DIR, corpus_dir: Path = CORPUS_DIR) -> dict[str, int]:
    ca, other = TestCA(), TestCA()
    this_update = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    now = this_update + dt.timedelta(minutes=30)

    shutil.rmtree(ca_dir, ignore_errors=True)
    ca_dir.mkdir(parents=True)
    for name, cert in [
        ("root.pem", ca.root),
        ("issuer.pem", ca.cert),
        ("responder.pem", ca.responder),
        ("other-issuer.pem", other.cert),
        ("other-responder.pem", other.responder),
    ]:
        (ca_dir / name).write_bytes(pem(cert))
    meta = {"serial": SERIAL, "now": now.isoformat(), "skew": SKEW}
    (ca_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    def respond(serial: int = SERIAL, **kwargs: Any) -> bytes:
        kwargs.setdefault("this_update", this_update)
        return ca.respond(serial, **kwargs)

    responses = {
        # accepted
        "issuer-good": respond(),
        "issuer-revoked": respond(status="revoked"),
        "issuer-unknown": respond(status="unknown"),
        "issuer-by-name": respond(by_name=True),
        "issuer-sha1-signature": respond(sign_hash=hashes.SHA1()),
        "issuer-sha224-signature": respond(sign_hash=hashes.SHA224()),
        "issuer-no-next-update": respond(validity=None),
        "delegate-good": respond(signer="delegate"),
        "delegate-sha512-signature-by-name": respond(
            signer="delegate", sign_hash=hashes.SHA512(), by_name=True
        ),
        # rejected
        "rogue": respond(signer="rogue", by_name=True),
        "rogue-included": respond(signer="rogue-included"),
        "undelegated": respond(signer="undelegated"),
        "other-serial": respond(serial_in_response=SERIAL + 1),
        "other-issuer": other.respond(SERIAL, this_update=this_update),
        "expired": respond(this_update=now - dt.timedelta(hours=2)),
        "sha256-certid-for-sha1": respond(alg="sha256"),
        "serverauth-delegate": respond(signer="serverauth"),
        "wrong-name-hash": respond(wrong_name_hash=True),
        "future": respond(this_update=now + dt.timedelta(minutes=10)),
        "try-later": error_body(ocsp.OCSPResponseStatus.TRY_LATER),
    }
    request = ca.request(SERIAL)
    requests = {
        "sha1": request,
        "sha256-nonce": ca.request(SERIAL, "sha256", nonce=True),
        "sha384": ca.request(0, "sha384"),
        "sha512-big-serial": ca.request(2**159, "sha512"),
        "two-certids": _two_certids(request),
        "nested": _nested(40),
    }
    b64 = base64.b64encode(request).decode()
    slashy = next(r for r in (ca.request(s) for s in range(1, 5000)) if "/" in base64.b64encode(r).decode())
    paths = {
        "plain": "/" + b64,
        "prefix-no-padding": "/ocsp/v1/" + b64.rstrip("="),
        "percent": "/" + quote(b64, safe=""),
        "urlsafe-query": "/" + base64.urlsafe_b64encode(request).decode() + "?x=1",
        "slash-inside": "/" + base64.b64encode(slashy).decode(),
        "space-for-plus": "/" + b64.replace("+", "%20"),
        "junk": "/a/%2/%zz/==/+/?/",
    }

    shutil.rmtree(corpus_dir, ignore_errors=True)
    counts = {}
    for target, seeds in [
        ("fuzz_response", responses),
        ("fuzz_request", requests),
        ("fuzz_get_path", {k: v.encode() for k, v in paths.items()}),
    ]:
        (corpus_dir / target).mkdir(parents=True)
        for name, data in seeds.items():
            (corpus_dir / target / name).write_bytes(data)
        counts[target] = len(seeds)
    return counts


if __name__ == "__main__":
    for target, count in build().items():
        print(f"{target}: {count} seeds in {CORPUS_DIR / target}")
    print(f"test PKI in {CA_DIR}")
