"""Benchmark 1, cache-hit serving: ocspproxy (log level info and warning) against nginx as an OCSP cache.

Both sit in front of the same bench CA (``bench/upstream.py``) with K pre-signed responses, both are
warm (every request a hit), and both get the load mod_ssl generates: POST, one new TCP connection per
request. Full load comes from wrk (``bench/post.lua``), a fixed rate from ``bench/fixedrate.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, PYTHON, free_port, python_env, tcp_opens
from bench.pkiset import CacheHitSet, cache_hit_set
from bench.servers import (
    get_json,
    nginx_status,
    post_ocsp,
    start_nginx,
    start_ocspproxy,
    start_upstream,
    wait_for_staples,
)

__all__ = [
    "VARIANTS",
    "CacheHitResults",
    "LoadSettings",
    "ServerRun",
    "WrkResult",
    "run_cache_hit",
    "run_wrk",
]

# (run name, log level, processes): one request line each at info, none at warning; nginx runs two
# worker processes, so the last variant is ocspproxy with as many.
VARIANTS = (
    ("ocspproxy-info", "info", 1),
    ("ocspproxy-warning", "warning", 1),
    ("ocspproxy-info-w2", "info", 2),
)


@dataclass(frozen=True)
class LoadSettings:
    k: int = 100
    wrk_threads: int = 2
    wrk_connections: int = 32
    wrk_seconds: int = 10
    rate: float = 1000.0
    fixed_seconds: float = 10.0
    fixed_procs: int = 1


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    connections_per_request: float  # TCP connections accepted (whole host) / requests: 1.0 = one each
    command: str


@dataclass
class ServerRun:
    name: str
    wrk: WrkResult | None = None
    fixed: dict[str, object] | None = None
    upstream_requests_during_load: int | None = None  # 0 = every request was a cache hit
    notes: list[str] = field(default_factory=list)


@dataclass
class CacheHitResults:
    k: int
    settings: LoadSettings
    runs: dict[str, ServerRun]
    checks: list[str]
    metrics_cost: Any = None  # bench.metricscost.MetricsCost: metrics on against off, same run


def wrk_command(port: int, requests_dir: Path, k: int, s: LoadSettings) -> list[str]:
    wrk = shutil.which("wrk") or "wrk"
    return [
        wrk,
        f"-t{s.wrk_threads}",
        f"-c{s.wrk_connections}",
        f"-d{s.wrk_seconds}s",
        "--latency",
        "-H",
        "Connection: close",
        "-s",
        str(BENCH_DIR / "post.lua"),
        f"http://127.0.0.1:{port}/",
        "--",
        str(requests_dir),
        str(k),
    ]


def run_wrk(port: int, requests_dir: Path, k: int, s: LoadSettings) -> WrkResult:
    cmd = wrk_command(port, requests_dir, k, s)
    opens_before = tcp_opens()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=s.wrk_seconds + 60, check=False)
    opens = tcp_opens() - opens_before
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    requests = int(data["requests"])
    errors = {
        name: int(data[key])
        for name, key in (
            ("connect", "connect_errors"),
            ("read", "read_errors"),
            ("write", "write_errors"),
            ("status", "status_errors"),
            ("timeout", "timeouts"),
        )
        if int(data[key])
    }
    return WrkResult(
        rps=round(requests / (data["duration_us"] / 1e6), 1),
        requests=requests,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=errors,
        connections_per_request=round(opens / requests, 3) if requests else 0.0,
        command=" ".join(cmd),
    )


def run_fixed(
    port: int, hits: CacheHitSet, expected_dir: Path, s: LoadSettings, *, rate: float | None = None
) -> dict[str, object]:
    cmd = [
        PYTHON,
        "-m",
        "bench.fixedrate",
        "--port",
        str(port),
        "--requests",
        str(hits.request_files[0].parent),
    ]
    cmd += [
        "--expected",
        str(expected_dir),
        "--rate",
        str(rate or s.rate),
        "--duration",
        str(s.fixed_seconds),
    ]
    cmd += ["--procs", str(s.fixed_procs)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=s.fixed_seconds + 60, env=python_env(), check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fixedrate failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    if not isinstance(data, dict):
        raise RuntimeError(f"fixedrate printed {proc.stdout!r}")
    data["command"] = "python -m bench.fixedrate " + " ".join(cmd[3:])
    return data


def _check_answers(port: int, hits: CacheHitSet, *, expect_cache_header: str | None = None) -> None:
    """Every request once, on a new connection: HTTP 200, the expected DER byte for byte."""
    for i, (request, expected) in enumerate(zip(hits.requests, hits.expected, strict=True)):
        answer = post_ocsp(port, request)
        if answer.status != 200 or answer.body != expected:
            raise RuntimeError(
                f"request {i + 1} to port {port}: HTTP {answer.status}, {len(answer.body)} bytes, "
                f"{'the expected' if answer.body == expected else 'NOT the expected'} response"
            )
        if answer.headers.get("content-type") != "application/ocsp-response":
            raise RuntimeError(f"request {i + 1}: Content-Type {answer.headers.get('content-type')!r}")
        if expect_cache_header is not None and answer.headers.get("x-cache-status") != expect_cache_header:
            raise RuntimeError(
                f"request {i + 1}: nginx cache status {answer.headers.get('x-cache-status')!r}"
            )


def _upstream_requests(port: int) -> int:
    return int(str(get_json(port, "/stats")["requests"]))


def _load(
    name: str, port: int, up_port: int, hits: CacheHitSet, expected_dir: Path, s: LoadSettings
) -> ServerRun:
    run = ServerRun(name)
    before = _upstream_requests(up_port)
    run.wrk = run_wrk(port, hits.request_files[0].parent, len(hits.requests), s)
    run.fixed = run_fixed(port, hits, expected_dir, s)
    run.upstream_requests_during_load = _upstream_requests(up_port) - before
    if run.wrk.connections_per_request < 0.98:
        run.notes.append(f"wrk opened {run.wrk.connections_per_request} connections per request (expected 1)")
    if run.upstream_requests_during_load:
        run.notes.append(f"{run.upstream_requests_during_load} requests reached the CA during the load")
    return run


def _describe(run: ServerRun) -> str:
    assert run.wrk is not None and run.fixed is not None
    lag = run.fixed.get("lag_ms")
    lag_p99 = lag.get("p99") if isinstance(lag, dict) else None
    return (
        f"{run.name}: wrk {run.wrk.requests} requests, {run.wrk.connections_per_request} TCP connections "
        f"per request (host-wide PassiveOpens), errors {run.wrk.errors or 'none'}; fixed rate "
        f"{run.fixed.get('ok')}/{run.fixed.get('scheduled')} ok, generator lag p99 {lag_p99} ms; "
        f"requests reaching the CA during the load: {run.upstream_requests_during_load}"
    )


def run_cache_hit(workdir: Path, s: LoadSettings, log: list[str]) -> CacheHitResults:
    checks: list[str] = []
    up_port = free_port()
    hits = cache_hit_set(workdir / "set", s.k, f"http://127.0.0.1:{up_port}/")
    expected_dir = workdir / "set" / "expected"
    expected_dir.mkdir(exist_ok=True)
    for i, der in enumerate(hits.expected, start=1):
        (expected_dir / f"{i}.der").write_bytes(der)
    upstream, _ = start_upstream(hits.responses_file, workdir / "upstream.log", port=up_port)
    runs: dict[str, ServerRun] = {}
    cost = None
    try:
        # nginx first: warm it (first pass misses and fills the cache, second pass must all be hits)
        nginx, nginx_port = start_nginx(workdir / "nginx", up_port)
        try:
            _check_answers(nginx_port, hits)
            _check_answers(nginx_port, hits, expect_cache_header="HIT")
            checks.append(
                f"nginx: all {s.k} requests answered 200 with the expected DER, second pass all HIT"
            )
            log.append("cache-hit: nginx warm; loading")
            status_before = nginx_status(nginx_port)
            run = _load("nginx", nginx_port, up_port, hits, expected_dir, s)
            status_after = nginx_status(nginx_port)
            accepts = status_after["accepts"] - status_before["accepts"]
            served = status_after["requests"] - status_before["requests"] - 1  # minus this status request
            ratio = accepts / served if served else 0.0
            checks.append(
                f"nginx stub_status during the load: {accepts} connections accepted for {served} requests "
                f"({ratio:.3f} per request; wrk and fixedrate together)"
            )
            runs["nginx"] = run
            checks.append(_describe(run))
            # the generator's own headroom: twice the rate against the faster server
            spare = run_fixed(nginx_port, hits, expected_dir, s, rate=2 * s.rate)
            lag = spare.get("lag_ms")
            checks.append(
                f"fixedrate headroom against nginx at {2 * s.rate:,.0f}/s: {spare.get('achieved_rps')}/s "
                f"served, {spare.get('errors')} errors, lag p99 "
                f"{lag.get('p99') if isinstance(lag, dict) else None} ms"
            )
            run.notes.append(f"fixedrate at {2 * s.rate:,.0f}/s: {spare}")
        finally:
            nginx.stop()
        for name, level, workers in VARIANTS:
            port = free_port()
            state = workdir / f"state-{name}"
            config = workdir / f"{name}.toml"
            config.write_text(f"[server]\nworkers = {workers}\n")
            proxy = start_ocspproxy(
                port=port,
                state_dir=state,
                cert_glob=hits.cert_glob,
                issuers=hits.ca_pem,
                log_path=workdir / f"{name}.log",
                log_level=level,
                config=config,
            )
            try:
                wait_for_staples(state, s.k)
                label = f"ocspproxy ({level}, {workers} process{'es' if workers > 1 else ''})"
                # twice: with workers, each process gets about half the connections and must have
                # every staple (a worker's copy arrives over its channel)
                _check_answers(port, hits)
                _check_answers(port, hits)
                checks.append(f"{label}: all {s.k} staples pre-fetched; every request 200 + expected DER")
                log.append(f"cache-hit: {label} warm; loading")
                runs[name] = run = _load(label, port, up_port, hits, expected_dir, s)
                checks.append(_describe(run))
            finally:
                proxy.stop()
        from bench.metricscost import run_metrics_cost  # (it uses this module's wrk runner)

        log.append("cache-hit: metrics off against on (scraped every second), alternating")
        cost = run_metrics_cost(workdir, hits, s, rounds=1 if s.wrk_seconds <= 1 else 3)
        checks.append(
            f"metrics: off {cost.off_rps} req/s, on {cost.on_rps} req/s; {cost.scrapes} scrapes during "
            f"the load ({cost.scrape_errors} failed); hits counted {cost.hits_counted} for "
            f"{cost.requests_sent} requests sent (plus the warm-up checks)"
        )
    finally:
        upstream.stop()
    return CacheHitResults(k=s.k, settings=s, runs=runs, checks=checks, metrics_cost=cost)
