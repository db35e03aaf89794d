"""Benchmark 4, fleet: ocspproxy instances sharing one ``redis-server`` (started here).

(a) CA requests: one instance alone and a fleet of three on Redis run side by side, for the same
    window, against two ``openssl ocsp`` CAs (``-nmin 1``: one-minute responses) for the same N
    certificates, refreshed a tenth of the way into each response. Requests per certificate per
    minute for each, and their ratio (the fleet's target: about one instance's).
(b) propagation: in the fleet, for each staple an instance accepted from the CA, the time until each
    other instance held it (its ``shared staple taken`` debug line, or an ``upstream`` line with
    ``source=shared``), from the log timestamps of this one host: p50, p99, max.
(c) fresh start: Redis filled with the scale set's staples (100,000; 2,000 with --quick) by the write
    script the instances use; an instance with an empty state directory and no reachable CA: spawn
    until its ``fleet`` line (every staple held), then 200 random certificates asked one at a time
    (each must get its staple: latency p50/p99, while the certificate files are still being read);
    RSS once everything is loaded; Redis's ``used_memory`` per staple.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_py
from cryptography import x509
from cryptography.x509 import ocsp

from bench.common import Proc, free_port, percentile, port_accepts, rss_mib, wait_until
from bench.pkiset import OpensslPki, load_responses, openssl_pki, scale_set
from bench.scale import phases
from bench.servers import post_ocsp, start_ocspproxy, start_openssl_ocsp, start_redis
from ocspproxy.core.ocsp import CertKey, build_request, issuer_key_hash, issuer_name_hash
from ocspproxy.shared.keys import Names, millis
from ocspproxy.shared.scripts import PUT

__all__ = ["FleetResults", "FleetSettings", "run_fleet"]

_REFRESH = "[refresh]\nfraction = 0.1\njitter = 0.1\nmargin = 0.2\nretry_initial = 1.0\nretry_max = 5.0\n"


@dataclass(frozen=True)
class FleetSettings:
    certificates: int = 50
    window_s: float = 60.0
    fresh_n: int = 100_000
    sample: int = 200


@dataclass
class FleetResults:
    requests: dict[str, object] = field(default_factory=dict)
    propagation: dict[str, object] = field(default_factory=dict)
    fresh: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _config(
    path: Path, pki: OpensslPki, ca_port: int, redis_url: str | None, *, load_timeout: float = 30.0
) -> Path:
    text = _REFRESH + "[upstream]\nconnect_timeout = 2.0\ntotal_timeout = 5.0\n"
    if redis_url is not None:
        text += f'[shared_store]\nurl = "{redis_url}"\nlease_ttl = 10\nprobe_interval = 1\n'
        text += f"load_timeout = {load_timeout}\n"
    text += f'[[issuer]]\ncertificate = "{pki.ca_pem}"\nocsp_url = "http://127.0.0.1:{ca_port}/"\n'
    path.write_text(text)
    return path


def _records(log_path: Path) -> list[dict[str, object]]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _when(record: dict[str, object]) -> float:
    return dt.datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()


def _propagation(logs: dict[str, Path]) -> dict[str, object]:
    """For each (serial, thisUpdate) one instance accepted from the CA: when each other held it."""
    accepted: dict[tuple[str, str], tuple[str, float]] = {}
    taken: dict[str, dict[tuple[str, str], float]] = {name: {} for name in logs}
    for name, path in logs.items():
        for r in _records(path):
            event, result = r.get("event"), r.get("result")
            if result not in ("stored", "revoked"):
                continue
            staple = (str(r.get("serial")), str(r.get("this_update")))
            if event == "upstream" and r.get("source") is None:
                accepted.setdefault(staple, (name, _when(r)))
            elif event == "shared staple taken" or (event == "upstream" and r.get("source") == "shared"):
                taken[name].setdefault(staple, _when(r))
    delays = []
    missed = 0
    for staple, (source, at) in accepted.items():
        for name in logs:
            if name == source:
                continue
            when = taken[name].get(staple)
            if when is None:
                missed += 1  # fetched itself (a race within the lease's rules), or a newer one first
            else:
                delays.append(max(0.0, when - at) * 1000)
    return {
        "accepted": len(accepted),
        "samples": len(delays),
        "missed": missed,
        "p50_ms": round(percentile(delays, 50), 1) if delays else None,
        "p99_ms": round(percentile(delays, 99), 1) if delays else None,
        "max_ms": round(max(delays), 1) if delays else None,
    }


def _requests(proc: Proc) -> int:
    return proc.log_text().count("OCSP Request Data:")


def _requests_in(log_path: Path) -> int:
    return log_path.read_text(errors="replace").count("OCSP Request Data:")


def _cycles(logs: list[Path]) -> int:
    """Distinct (certificate, thisUpdate) the CA's answers brought, across these instances."""
    seen = set()
    for path in logs:
        for r in _records(path):
            if r.get("event") == "upstream" and r.get("source") is None and r.get("this_update"):
                seen.add((r.get("serial"), r.get("this_update")))
    return len(seen)


def _held_everywhere(logs: list[Path], n: int) -> bool:
    return all(
        path.exists() and path.read_text(errors="replace").count('"event": "upstream"') >= n for path in logs
    )


def _run_requests(
    workdir: Path, s: FleetSettings, redis_url: str, results: FleetResults, log: list[str]
) -> None:
    pki = openssl_pki(workdir / "pki", s.certificates)
    procs: list[Proc] = []
    try:
        fleet_ca, fleet_port = start_openssl_ocsp(pki, workdir / "fleet-ca.log")
        lone_ca, lone_port = start_openssl_ocsp(pki, workdir / "lone-ca.log")
        procs += [fleet_ca, lone_ca]
        logs: dict[str, Path] = {}
        for name in ("a", "b", "c", "lone"):
            shared = None if name == "lone" else redis_url
            ca_port = lone_port if name == "lone" else fleet_port
            config = _config(workdir / f"{name}.toml", pki, ca_port, shared)
            logs[name] = workdir / f"{name}.log"
            procs.append(
                start_ocspproxy(
                    port=free_port(),
                    state_dir=workdir / f"state-{name}",
                    cert_glob=str(pki.certs / "*.pem"),
                    issuers=pki.ca_pem,
                    log_path=logs[name],
                    log_level="debug",
                    config=config,
                )
            )
        # Warm: every instance holds every certificate's first staple (fetched or taken).
        wait_until(
            lambda: _held_everywhere([logs["a"], logs["lone"]], s.certificates),
            timeout=60,
            what="first staples",
        )
        time.sleep(2.0)
        start_fleet, start_lone = _requests(fleet_ca), _requests(lone_ca)
        time.sleep(s.window_s)
        fleet_n, lone_n = _requests(fleet_ca) - start_fleet, _requests(lone_ca) - start_lone
        minutes = s.window_s / 60
        per_cert = {
            "fleet_of_3": round(fleet_n / s.certificates / minutes, 2),
            "alone": round(lone_n / s.certificates / minutes, 2),
        }
        results.requests = {
            "certificates": s.certificates,
            "window_s": s.window_s,
            "fleet_of_3_requests": fleet_n,
            "alone_requests": lone_n,
            "per_certificate_per_minute": per_cert,
            "ratio": round(fleet_n / lone_n, 2) if lone_n else None,
        }
        for proc in procs[2:]:
            proc.check_alive()
    finally:
        for proc in procs:
            proc.stop()
    results.propagation = _propagation({k: v for k, v in logs.items() if k != "lone"})
    # Per refresh cycle: CA requests over the whole run against the staples they brought (each
    # distinct thisUpdate of a certificate is one cycle), for the fleet and for the lone instance.
    fleet_cycles = _cycles([logs["a"], logs["b"], logs["c"]])
    lone_cycles = _cycles([logs["lone"]])
    results.requests["cycles"] = {"fleet_of_3": fleet_cycles, "alone": lone_cycles}
    results.requests["per_cycle"] = {
        "fleet_of_3": round(_requests_in(workdir / "fleet-ca.log") / fleet_cycles, 2)
        if fleet_cycles
        else None,
        "alone": round(_requests_in(workdir / "lone-ca.log") / lone_cycles, 2) if lone_cycles else None,
    }
    log.append(f"fleet: requests {results.requests}")
    log.append(f"fleet: propagation {results.propagation}")


def _fill(client: redis_py.Redis, ca_cert: x509.Certificate, responses: dict[int, bytes]) -> None:
    """Write every staple with the write script the instances use (the accept policy, the expiry)."""
    names = Names("ocspproxy")
    key_hash = issuer_key_hash(ca_cert, "sha1")
    script = client.register_script(PUT)
    now = millis(dt.datetime.now(dt.UTC))
    items = list(responses.items())
    for start in range(0, len(items), 1000):
        pipe = client.pipeline(transaction=False)
        for serial, der in items[start : start + 1000]:
            parsed = ocsp.load_der_ocsp_response(der)
            nu = parsed.next_update_utc
            assert nu is not None
            key = CertKey(alg="sha1", issuer_key_hash=key_hash, serial=serial)
            args: list[bytes | str | int] = [
                der,
                millis(parsed.this_update_utc),
                millis(parsed.produced_at_utc),
                "good",
                millis(nu),
                now,
                names.channel,
                f"bench {key}",
                "",
            ]
            script(keys=[names.entry(key)], args=args, client=pipe)
        pipe.execute()


def _run_fresh(
    workdir: Path, s: FleetSettings, redis_port: int, results: FleetResults, log: list[str]
) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    ss = scale_set(s.fresh_n)
    fresh = load_responses(ss.fresh_file)
    with redis_py.Redis(port=redis_port) as client:
        client.flushall()
        before = int(client.info("memory")["used_memory"])
        started = time.monotonic()
        _fill(client, ss.ca_cert, fresh)
        filled_s = time.monotonic() - started
        after = int(client.info("memory")["used_memory"])
        held = int(client.dbsize())
    dead_ca = free_port()  # nothing listens there: every staple must come from Redis
    pki = OpensslPki(ss.ca_pem, ss.ca_pem, ss.ca_pem, ss.certs_dir)
    config = _config(
        workdir / "fresh.toml", pki, dead_ca, f"redis://127.0.0.1:{redis_port}/0", load_timeout=120
    )
    port = free_port()
    log_path = workdir / "fresh.log"
    proc = start_ocspproxy(
        port=port,
        state_dir=workdir / "state-fresh",
        cert_glob=ss.cert_glob,
        issuers=ss.ca_pem,
        log_path=log_path,
        config=config,
        wait=False,
    )
    name_hash, key_hash = issuer_name_hash(ss.ca_cert, "sha1"), issuer_key_hash(ss.ca_cert, "sha1")
    sample = random.Random(5).sample(list(ss.serials), min(s.sample, len(ss.serials)))
    asks = {serial: build_request(CertKey("sha1", key_hash, serial), name_hash) for serial in sample}
    held_s = served_s = rss = 0.0
    try:
        wait_until(lambda: port_accepts(port, timeout=0.5), timeout=120, what="the fresh instance listening")
        wait_until(lambda: b'"event": "fleet"' in log_path.read_bytes(), timeout=300, what="the fleet line")
        held_s = time.monotonic() - proc.spawned
        # Then a sample, one request at a time on new connections, as mod_ssl asks: each must be
        # answered with its staple from Redis (no CA), while the certificate files are still read.
        latencies, wrong = [], 0
        for serial in sample:
            started = time.perf_counter()
            answer = post_ocsp(port, asks[serial], timeout=10.0)
            latencies.append((time.perf_counter() - started) * 1000)
            wrong += answer.status != 200 or answer.body != fresh[serial]
        served_s = time.monotonic() - proc.spawned
        checked = b'"event": "stored staples verified"'  # loaded, and every signature checked
        wait_until(lambda: checked in log_path.read_bytes(), timeout=300, what="the full load")
        rss = rss_mib(proc.pid)
        fleet_line = next((r for r in _records(log_path) if r.get("event") == "fleet"), {})
        steps = phases(proc)
        if fleet_line:
            steps["fleet"] = round(_when(fleet_line) - proc.spawned_wall, 2)
    finally:
        proc.stop()
    results.fresh = {
        "n": s.fresh_n,
        "redis_entries": held,
        "redis_fill_s": round(filled_s, 1),
        "redis_bytes_per_staple": round((after - before) / max(1, s.fresh_n)),
        "staple_der_bytes": round(sum(len(d) for d in fresh.values()) / len(fresh)),
        "loaded_from_redis": fleet_line.get("loaded"),
        "held_s": round(held_s, 2),
        "sample": len(sample),
        "sample_wrong": wrong,
        "sample_p50_ms": round(percentile(latencies, 50), 1),
        "sample_p99_ms": round(percentile(latencies, 99), 1),
        "sample_served_s": round(served_s, 2),
        "phases_s": steps,
        "rss_mib": round(rss, 1),
    }
    log.append(f"fleet: fresh start {results.fresh}")


def run_fleet(workdir: Path, s: FleetSettings, log: list[str]) -> FleetResults:
    results = FleetResults()
    redis, port = start_redis(workdir / "redis")
    try:
        _run_requests(workdir / "requests", s, f"redis://127.0.0.1:{port}/0", results, log)
        with redis_py.Redis(port=port) as client:
            client.flushall()
        _run_fresh(workdir / "fresh", s, port, results, log)
    finally:
        redis.stop()
    return results
