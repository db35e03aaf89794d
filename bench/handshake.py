"""Benchmark 2, handshake stall: Apache httpd + mod_ssl asking a slow CA directly, or a warm ocspproxy.

The CA (``bench/upstream.py --delay``) answers after 500 ms. Variant "direct": ``SSLStaplingForceURL``
points at the CA. Variant "ocspproxy": it points at an ocspproxy that has already pre-fetched the staple
from that same slow CA. For each, Apache is spawned and ``openssl s_client -status`` handshakes run one
after another (each a fresh process, empty stdin, ``-no_ign_eof``) for a few seconds from the spawn.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.common import Proc, free_port, percentile, wait_until
from bench.pkiset import save_responses, sign_response
from bench.servers import der_count, start_ocspproxy, start_upstream
from tests.e2e.peers import Apache, VHost, build_pki, find_apache, missing_tools, parse_ocsp_text

__all__ = ["HandshakeResults", "Shake", "Variant", "run_handshake"]


@dataclass(frozen=True)
class Shake:
    """One s_client run: start and end (seconds after Apache's spawn), what it saw."""

    start: float
    end: float
    connected: bool
    staple: str  # "good", "no response", "tryLater", ..., or "" when not connected

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


_LOG_LINE = re.compile(r"^\[(?P<when>[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ [\d:.]+ \d{4})\].*?(?P<code>AH\d{5}):")


def _log_events(error_log: Path) -> list[tuple[dt.datetime, str, str]]:
    """(time, AH code, line) of every coded line in Apache's error log (microsecond timestamps)."""
    events = []
    for line in error_log.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match:
            when = dt.datetime.strptime(" ".join(match["when"].split()), "%a %b %d %H:%M:%S.%f %Y")
            events.append((when, match["code"], line))
    return events


def apache_first_handshake(error_log: Path) -> dict[str, object]:
    """Server-side figures of Apache's first TLS connection, from mod_ssl's debug log.

    handshake: AH01964 (connection established) to AH02041 (handshake done, protocol chosen);
    stapling stall: AH01951 (stapling callback called) to AH01956 (setting response) or the callback's end;
    OCSP queries: AH01938 (querying responder) lines in the whole run.
    """
    events = _log_events(error_log)

    def first(code: str, after: dt.datetime | None = None) -> dt.datetime | None:
        return next((t for t, c, _ in events if c == code and (after is None or t >= after)), None)

    def ms(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
        return round((b - a).total_seconds() * 1000, 2) if a and b else None

    connected = first("AH01964")
    done = first("AH02041", connected)
    stapling = first("AH01951", connected)
    staple_set = first("AH01956", stapling)
    return {
        "first_handshake_server_ms": ms(connected, done),
        "first_stapling_stall_ms": ms(stapling, staple_set),
        "ocsp_queries": sum(1 for _, c, _ in events if c == "AH01938"),
    }


@dataclass
class Variant:
    name: str
    force_url: str
    shakes: list[Shake] = field(default_factory=list)
    apache: dict[str, object] = field(default_factory=dict)

    @property
    def handshakes(self) -> list[Shake]:
        return [s for s in self.shakes if s.connected]

    @property
    def first_good(self) -> Shake | None:
        return next((s for s in self.shakes if s.staple == "good"), None)

    def summary(self) -> dict[str, object]:
        shakes = self.handshakes
        first = self.first_good
        durations = [s.ms for s in shakes]
        after = [s.ms for s in shakes if first is not None and s.start > first.start]
        return {
            "force_url": self.force_url,
            "attempts": len(self.shakes),
            "refused_before_listening": sum(1 for s in self.shakes if not s.connected),
            "handshakes": len(shakes),
            "handshakes_without_good_staple": sum(1 for s in shakes if s.staple != "good"),
            "first_handshake_done_s": round(shakes[0].end, 3) if shakes else None,
            "first_good_staple_s": round(first.end, 3) if first else None,
            "first_stapled_handshake_ms": round(first.ms, 1) if first else None,
            "handshake_ms": {
                "p50": round(percentile(durations, 50), 1),
                "p99": round(percentile(durations, 99), 1),
                "max": round(max(durations), 1) if durations else None,
            },
            # s_client's own cost (process start, key exchange, verification) with the staple cached
            "warm_handshake_p50_ms": round(percentile(after, 50), 1) if after else None,
            **self.apache,
        }


@dataclass
class HandshakeResults:
    ca_delay_s: float
    loop_seconds: float
    variants: dict[str, dict[str, object]]
    skipped: str | None = None


def _s_client(openssl: str, port: int, ca_pem: Path, spawned: float) -> Shake:
    cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-status"]
    cmd += ["-CAfile", str(ca_pem), "-no_ign_eof"]
    start = time.monotonic()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
    end = time.monotonic()
    out = proc.stdout.decode(errors="replace")
    connected = proc.returncode == 0 and "-----BEGIN CERTIFICATE-----" in out
    staple = ""
    if connected:
        if "OCSP response: no response sent" in out:
            staple = "no response"
        elif "OCSP response:" in out:
            block = out.split("OCSP response:", 1)[1]
            frames = re.split(r"^=+\s*$", block, flags=re.MULTILINE)
            text = parse_ocsp_text(frames[1] if len(frames) >= 3 else block)
            staple = "good" if text.good else f"{text.response_status}/{text.cert_status}"
        else:
            staple = "no OCSP section"
    return Shake(start - spawned, end - spawned, connected, staple)


def _apache_run(variant: Variant, root: Path, pki_leaf: VHost, ca_pem: Path, seconds: float) -> None:
    apache = Apache(root, [pki_leaf], variant.force_url, standard_cache_timeout=3600, error_cache_timeout=1)
    openssl = shutil.which("openssl") or "openssl"
    proc = Proc(
        f"apache2 ({variant.name})", apache.command(), root / "logs" / "stdout.log", env=apache.environment()
    )
    try:
        while time.monotonic() - proc.spawned < seconds:
            proc.check_alive()
            variant.shakes.append(_s_client(openssl, pki_leaf.port, ca_pem, proc.spawned))
    finally:
        proc.stop()
    variant.apache = apache_first_handshake(apache.error_log)


def run_handshake(workdir: Path, *, seconds: float, ca_delay: float, log: list[str]) -> HandshakeResults:
    problems = missing_tools()
    if problems or find_apache() is None:
        return HandshakeResults(ca_delay, seconds, {}, skipped="missing " + ", ".join(problems))
    ca_port = free_port()
    pki = build_pki(workdir / "pki", ca_port)
    ca_key = serialization.load_pem_private_key(pki.ca_key_pem.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    responses = {
        leaf.serial: sign_response(
            ca_cert=pki.ca_cert,
            ca_key=ca_key,
            serial=leaf.serial,
            this_update=now - dt.timedelta(minutes=1),
            next_update=now + dt.timedelta(days=1),
        )
        for leaf in (pki.good, pki.revoked)
    }
    save_responses(workdir / "responses.pickle", responses)
    upstream, _ = start_upstream(
        workdir / "responses.pickle", workdir / "upstream.log", delay=ca_delay, port=ca_port
    )
    variants: dict[str, dict[str, object]] = {}
    try:
        direct = Variant("direct", pki.ocsp_url)
        log.append(f"handshake: Apache -> slow CA ({ca_delay}s) directly")
        _apache_run(direct, workdir / "apache-direct", VHost(free_port(), pki.good), pki.ca_pem, seconds)
        variants["direct"] = direct.summary()

        proxy_port = free_port()
        state = workdir / "state"
        proxy = start_ocspproxy(
            port=proxy_port,
            state_dir=state,
            cert_glob=str(pki.good.chain_pem),
            issuers=pki.ca_pem,
            log_path=workdir / "ocspproxy.log",
        )
        try:
            wait_until(lambda: der_count(state) >= 1, timeout=30, what="ocspproxy to pre-fetch the staple")
            via = Variant("ocspproxy", f"http://127.0.0.1:{proxy_port}/")
            log.append("handshake: Apache -> pre-fetched ocspproxy -> slow CA")
            _apache_run(via, workdir / "apache-ocspproxy", VHost(free_port(), pki.good), pki.ca_pem, seconds)
            variants["ocspproxy"] = via.summary()
        finally:
            proxy.stop()
    finally:
        upstream.stop()
    return HandshakeResults(ca_delay, seconds, variants)
