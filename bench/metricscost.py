"""What metrics cost on the cache-hit path: two ocspproxy processes side by side, one with the admin
listener off (``admin_listen = ""``: nothing counted) and one with it on and scraped every second
during the load, both warm; wrk runs against each in turn, several rounds alternating, and the
median requests/s of each is compared (alternating evens out the drift of a shared machine)."""

from __future__ import annotations

import statistics
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import free_port
from bench.loadtest import LoadSettings, _check_answers, run_wrk
from bench.pkiset import CacheHitSet
from bench.servers import start_ocspproxy, wait_for_staples

__all__ = ["MetricsCost", "run_metrics_cost"]


@dataclass
class MetricsCost:
    rounds: int
    off_rps: list[float] = field(default_factory=list)
    on_rps: list[float] = field(default_factory=list)
    scrapes: int = 0
    scrape_errors: int = 0
    hits_counted: float | None = None  # ocspproxy_requests_total{outcome="hit"} at the end
    requests_sent: int = 0  # by wrk to the instance with metrics on

    @property
    def off(self) -> float | None:
        return statistics.median(self.off_rps) if self.off_rps else None

    @property
    def on(self) -> float | None:
        return statistics.median(self.on_rps) if self.on_rps else None


class _Scraper(threading.Thread):
    """GET /metrics every second, as Prometheus would (a short scrape interval)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.count = 0
        self.errors = 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    resp.read()
                self.count += 1
            except OSError:
                self.errors += 1


def _hits(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ocspproxy_requests_total{") and 'outcome="hit"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_metrics_cost(workdir: Path, hits: CacheHitSet, s: LoadSettings, rounds: int) -> MetricsCost:
    result = MetricsCost(rounds=rounds)
    admin = free_port()
    procs = {}
    ports = {}
    for name, admin_listen in (("off", '""'), ("on", f'"127.0.0.1:{admin}"')):
        ports[name] = port = free_port()
        config = workdir / f"metrics-{name}.toml"
        config.write_text(f"admin_listen = {admin_listen}\n")
        procs[name] = start_ocspproxy(
            port=port,
            state_dir=workdir / f"state-metrics-{name}",
            cert_glob=hits.cert_glob,
            issuers=hits.ca_pem,
            log_path=workdir / f"metrics-{name}.log",
            log_level="info",
            config=config,
        )
    try:
        for name, port in ports.items():
            wait_for_staples(workdir / f"state-metrics-{name}", len(hits.requests))
            _check_answers(port, hits)
        requests_dir = hits.request_files[0].parent
        for _ in range(rounds):
            result.off_rps.append(run_wrk(ports["off"], requests_dir, len(hits.requests), s).rps)
            scraper = _Scraper(f"http://127.0.0.1:{admin}/metrics")
            scraper.start()
            try:
                wrk = run_wrk(ports["on"], requests_dir, len(hits.requests), s)
            finally:
                scraper.stop.set()
                scraper.join()
            result.on_rps.append(wrk.rps)
            result.requests_sent += wrk.requests
            result.scrapes += scraper.count
            result.scrape_errors += scraper.errors
        result.hits_counted = _hits(f"http://127.0.0.1:{admin}/metrics")
    finally:
        for proc in procs.values():
            proc.stop()
    return result
