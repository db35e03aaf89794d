"""Clients for the end-to-end tests: ``openssl s_client -status``, direct OCSP queries, DER inspection."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from .pki import Leaf
from .tools import UTC, find_openssl, utcnow

# --------------------------------------------------------------------------------------------------
# openssl s_client -status
# --------------------------------------------------------------------------------------------------

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}
_ASN1_TIME_RE = re.compile(
    r"(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2})\s+(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})(?:\.\d+)?\s+(?P<y>\d{4})\s+GMT"
)


def parse_openssl_time(text: str) -> dt.datetime:
    """Parse OpenSSL's ASN1_TIME_print format, e.g. ``Nov  8 03:30:00 2026 GMT`` (locale independent)."""
    match = _ASN1_TIME_RE.search(text)
    if match is None:
        raise ValueError(f"not an OpenSSL time: {text!r}")
    return dt.datetime(
        int(match["y"]),
        _MONTHS[match["mon"]],
        int(match["day"]),
        int(match["h"]),
        int(match["m"]),
        int(match["s"]),
        tzinfo=UTC,
    )


@dataclass(frozen=True)
class OcspText:
    """An OCSP response's interesting fields as OpenSSL prints them (s_client -status, ocsp -resp_text)."""

    response_status: str  # "successful", "tryLater", ...
    cert_status: str | None  # "good", "revoked", "unknown"; None when there is no single response
    this_update: dt.datetime | None
    next_update: dt.datetime | None
    serial: str | None  # upper-case hex as printed by OpenSSL
    revocation_time: dt.datetime | None
    raw: str

    @property
    def good(self) -> bool:
        return self.response_status == "successful" and self.cert_status == "good"


def parse_ocsp_text(block: str) -> OcspText:
    def field_(name: str) -> str | None:
        match = re.search(rf"^\s*{re.escape(name)}:\s*(.*?)\s*$", block, re.MULTILINE)
        return match.group(1) if match else None

    def time_(name: str) -> dt.datetime | None:
        value = field_(name)
        return parse_openssl_time(value) if value else None

    status = field_("OCSP Response Status")
    if status is None:
        raise ValueError(f"no 'OCSP Response Status' in:\n{block}")
    return OcspText(
        response_status=status.split()[0],
        cert_status=field_("Cert Status"),
        this_update=time_("This Update"),
        next_update=time_("Next Update"),
        serial=field_("Serial Number"),
        revocation_time=time_("Revocation Time"),
        raw=block,
    )


class HandshakeError(RuntimeError):
    pass


@dataclass
class Observation:
    """One ``s_client`` handshake: when it started and what was stapled (None = no response sent)."""

    started: dt.datetime
    staple: OcspText | None
    output: str = field(repr=False)


def s_client(
    port: int, ca_pem: Path, *, servername: str = "localhost", timeout: float = 20.0
) -> OcspText | None:
    """One TLS handshake through ``openssl s_client -status``; None when no OCSP response was stapled."""
    return observe(port, ca_pem, servername=servername, timeout=timeout).staple


def observe(port: int, ca_pem: Path, *, servername: str = "localhost", timeout: float = 20.0) -> Observation:
    started = utcnow()
    cmd = [
        find_openssl() or "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        servername,
        "-status",
        "-CAfile",
        str(ca_pem),
    ]
    try:
        proc = subprocess.run(
            cmd,
            input=b"",
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HandshakeError(f"s_client to port {port} timed out after {timeout}s") from exc
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or "OCSP response:" not in out or "-----BEGIN CERTIFICATE-----" not in out:
        raise HandshakeError(f"s_client to port {port} failed (rc={proc.returncode}):\n{err}\n{out}")
    if "OCSP response: no response sent" in out:
        return Observation(started, None, out)
    block = out.split("OCSP response:", 1)[1]
    # the block is framed by lines of '=' characters
    frames = re.split(r"^=+\s*$", block, flags=re.MULTILINE)
    text = frames[1] if len(frames) >= 3 else block
    return Observation(started, parse_ocsp_text(text), out)


def poll_staple(
    port: int,
    ca_pem: Path,
    predicate: Callable[[OcspText | None], bool],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str,
    seen: list[Observation] | None = None,
) -> OcspText | None:
    """Handshake until ``predicate(staple)`` holds; returns that staple.  Bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Observation | None = None
    while True:
        last = observe(port, ca_pem)
        if seen is not None:
            seen.append(last)
        if predicate(last.staple):
            return last.staple
        if time.monotonic() + interval >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}; last staple: "
                f"{last.staple.raw if last.staple else 'no response sent'}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# direct OCSP queries and DER inspection
# --------------------------------------------------------------------------------------------------


def ocsp_request_der(leaf: Leaf, issuer: x509.Certificate) -> bytes:
    """A request like mod_ssl sends: one SHA-1 CertID, no nonce."""
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, issuer, hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class HttpOcspAnswer:
    http_status: int
    content_type: str
    body: bytes

    def parsed(self) -> ocsp.OCSPResponse:
        return ocsp.load_der_ocsp_response(self.body)


def query_ocsp(url: str, leaf: Leaf, issuer: x509.Certificate, *, method: str = "POST") -> HttpOcspAnswer:
    """Ask an OCSP responder directly over HTTP (POST like mod_ssl, or RFC 6960 A.1 GET)."""
    der = ocsp_request_der(leaf, issuer)
    if method == "POST":
        request = urllib.request.Request(
            url, data=der, method="POST", headers={"Content-Type": "application/ocsp-request"}
        )
    elif method == "GET":
        encoded = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
        request = urllib.request.Request(url.rstrip("/") + "/" + encoded, method="GET")
    else:
        raise ValueError(method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP proxy
    try:
        with opener.open(request, timeout=10) as resp:
            return HttpOcspAnswer(resp.status, resp.headers.get("Content-Type", ""), resp.read())
    except urllib.error.HTTPError as exc:
        return HttpOcspAnswer(exc.code, exc.headers.get("Content-Type", ""), exc.read())


def read_der_with_openssl(path: Path) -> OcspText:
    """``openssl ocsp -respin FILE -resp_text -noverify``; raises if OpenSSL cannot read the file."""
    proc = subprocess.run(
        [find_openssl() or "openssl", "ocsp", "-respin", str(path), "-resp_text", "-noverify"],
        capture_output=True,
        timeout=20,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise ValueError(
            f"openssl ocsp -respin {path} failed (rc={proc.returncode}):\n{proc.stderr.decode()}{out}"
        )
    return parse_ocsp_text(out)


def describe(observations: Iterable[Observation]) -> str:
    lines = []
    for obs in observations:
        if obs.staple is None:
            lines.append(f"{obs.started:%H:%M:%S} no staple")
        else:
            s = obs.staple
            lines.append(
                f"{obs.started:%H:%M:%S} {s.response_status}/{s.cert_status} "
                f"this={s.this_update:%H:%M:%S} next={s.next_update:%H:%M:%S}"
                if s.this_update and s.next_update
                else f"{obs.started:%H:%M:%S} {s.response_status}/{s.cert_status}"
            )
    return "\n".join(lines)
