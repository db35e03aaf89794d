"""Benchmark 4, bundles: ``bundle want`` / ``fetch`` / ``import`` with N certificates of one CA
(N = 100,000; 2,000 with --quick), the fetch against the bench's CA (bench/upstream.py).

Each command runs as the operator runs it (``python -m ocspproxy bundle ...``): wall time and peak
RSS (from wait4). The import goes into a running service that cannot reach its CA (the air-gapped
inside) and holds N servable stored staples: while ``bundle import`` checks the bundle and the
service takes it through the door, one stored staple is asked for again and again, each on a new
connection, as mod_ssl asks; the latency of those cache hits is the figure to watch (target p99
≤ 50 ms). The service's own time to take the bundle in is read from its ``bundle imported`` line.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import PYTHON, REPO_ROOT, free_port, logged, percentile, python_env, rss_mib, wait_logged
from bench.pkiset import load_responses, scale_set
from bench.scale import issuer_config, write_staples
from bench.servers import post_ocsp, start_ocspproxy, start_upstream
from ocspproxy.core.ocsp import CertKey, build_request, issuer_key_hash, issuer_name_hash

__all__ = ["BundleResults", "BundleSettings", "run_bundle"]


@dataclass(frozen=True)
class BundleSettings:
    n: int = 100_000
    concurrency: int = 16  # fetch: requests at once to the one CA
    ingest_limit_s: float = 1800.0  # stop waiting for the service after this long


@dataclass
class BundleResults:
    n: int
    commands: dict[str, dict[str, object]] = field(default_factory=dict)
    service: dict[str, object] = field(default_factory=dict)
    hits: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _measured(name: str, args: list[str], log_path: Path) -> dict[str, object]:
    """Run ``python -m ocspproxy ARGS``; wall seconds, peak RSS (MiB) and exit status."""
    started = time.monotonic()
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            [PYTHON, "-m", "ocspproxy", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=python_env(),
            cwd=REPO_ROOT,
        )
        _, status, usage = os.wait4(popen.pid, 0)
    popen.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    tail = log_path.read_text(errors="replace").splitlines()[-1:] or [""]
    return {
        "command": f"ocspproxy {' '.join(args[:2])}",
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "exit": popen.returncode,
        "last_line": tail[0][:300],
        "name": name,
    }


class _Sampler(threading.Thread):
    """Cache hits, one at a time, each on a new connection, until told to stop."""

    def __init__(self, port: int, request: bytes, expected: set[bytes]) -> None:
        super().__init__(daemon=True)
        self.port, self.request, self.expected = port, request, expected
        self.latencies: list[float] = []
        self.when: list[float] = []  # wall clock of each, to set the slow ones against the logs
        self.wrong = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started, wall = time.perf_counter(), time.time()
            answer = post_ocsp(self.port, self.request, timeout=10.0)
            self.latencies.append((time.perf_counter() - started) * 1000)
            self.when.append(wall)
            self.wrong += answer.status != 200 or answer.body not in self.expected
            time.sleep(0.005)

    def summary(self) -> dict[str, object]:
        values = self.latencies
        return {
            "n": len(values),
            "wrong": self.wrong,
            "p50_ms": round(percentile(values, 50), 2),
            "p99_ms": round(percentile(values, 99), 2),
            "max_ms": round(max(values, default=float("nan")), 2),
            "slowest": [
                {
                    "ms": round(ms, 1),
                    "at": time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z",
                }
                for ms, at in sorted(zip(values, self.when, strict=True), reverse=True)[:8]
            ],
        }


def run_bundle(workdir: Path, s: BundleSettings, log: list[str]) -> BundleResults:
    ss = scale_set(s.n)
    results = BundleResults(n=s.n)
    workdir.mkdir(parents=True, exist_ok=True)
    up_port = free_port()
    upstream, _ = start_upstream(ss.fresh_file, workdir / "upstream.log", port=up_port)
    outside = issuer_config(workdir / "outside.toml", ss.ca_pem, up_port)
    # The inside's CA address: nothing listens there (the air gap). Its stored staples (the stale set:
    # 20 of 30 days gone) are not due yet, as after a regular import: it asks its CA for each once an
    # hour (max_interval), and fails, as an air-gapped service does between imports.
    inside = issuer_config(workdir / "inside.toml", ss.ca_pem, free_port())
    inside.write_text(inside.read_text() + "[refresh]\nfraction = 0.8\njitter = 0.05\nmargin = 0.1\n")
    state = workdir / "state"
    flags = ["--cert", ss.cert_glob, "--issuers", str(ss.ca_pem), "--state-dir", str(state)]
    try:
        want = workdir / "want.tar"
        bundle = workdir / "bundle.tar"
        results.commands["want"] = _measured(
            "want",
            ["bundle", "want", *flags, "--config", str(outside), "--out", str(want)],
            workdir / "want.log",
        )
        log.append(f"bundle: want {results.commands['want']}")
        results.commands["fetch"] = _measured(
            "fetch",
            [
                "bundle",
                "fetch",
                str(want),
                "--out",
                str(bundle),
                "--quiet",
                "--concurrency",
                str(s.concurrency),
            ],
            workdir / "fetch.log",
        )
        log.append(f"bundle: fetch {results.commands['fetch']}")
        results.notes.append(
            f"bundle: {bundle.stat().st_size / 1e6:.1f} MB, want file {want.stat().st_size / 1e6:.1f} MB"
        )
    finally:
        upstream.stop()

    # The inside: N stored staples, servable but older than those in the bundle.
    stale = load_responses(ss.stale_file)
    write_staples(state, ss, stale, only_missing=False)
    os.sync()
    port = free_port()
    service_log = workdir / "service.log"
    proc = start_ocspproxy(
        port=port,
        state_dir=state,
        cert_glob=ss.cert_glob,
        issuers=ss.ca_pem,
        log_path=service_log,
        config=inside,
    )
    try:
        wait_logged(service_log, "stored staples verified", timeout=600)
        probe = ss.serials[len(ss.serials) // 2]
        request = build_request(
            CertKey(alg="sha1", issuer_key_hash=issuer_key_hash(ss.ca_cert, "sha1"), serial=probe),
            issuer_name_hash(ss.ca_cert, "sha1"),
        )
        fresh = load_responses(ss.fresh_file)
        sampler = _Sampler(port, request, {stale[probe], fresh[probe]})
        sampler.start()
        rss_before = rss_mib(proc.pid)
        try:
            results.commands["import"] = _measured(
                "import",
                ["bundle", "import", str(bundle), *flags, "--config", str(inside), "--quiet", "--json"],
                workdir / "import.log",
            )
            log.append(f"bundle: import {results.commands['import']}")
            wait_logged(service_log, "bundle imported", timeout=s.ingest_limit_s)
        finally:
            sampler.halt.set()
            sampler.join(timeout=30)
        taken = logged(service_log, "bundle imported") or {}
        results.service = {
            "ingest_s": round(float(str(taken.get("duration_ms", "nan"))) / 1000, 1),
            "stored": taken.get("stored"),
            "rejected": taken.get("rejected"),
            "rss_mib_before": round(rss_before, 1),
            "rss_mib_after": round(rss_mib(proc.pid), 1),
        }
        results.hits = sampler.summary()
        final = post_ocsp(port, request)
        results.service["probe_now_fresh"] = final.body == fresh[probe]
        log.append(f"bundle: service {results.service}, hits {results.hits}")
        proc.check_alive()
    finally:
        proc.stop()
    return results
