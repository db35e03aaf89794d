"""The benchmark suite's driver: runs the benchmarks, prints one table, writes bench/results/latest.json.

    bench/run [--quick] [--only cache-hit|handshake|scale|bundle|fleet|profile] [--profile] [--keep]

It is a report, not a test: missed targets do not change the exit status; a benchmark that cannot run
(a peer missing, a crash) does (status 1), so CI notices when the suite itself breaks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.bundle import BundleResults, BundleSettings, run_bundle
from bench.common import BENCH_DIR
from bench.fleet import FleetSettings, fleet_rows, run_fleet
from bench.handshake import HandshakeResults, run_handshake
from bench.loadtest import VARIANTS, CacheHitResults, LoadSettings, run_cache_hit
from bench.profile import run_profile
from bench.report import Row, machine_info, render_table
from bench.scale import ScaleResults, ScaleSettings, run_scale

__all__ = ["main"]

BENCHMARKS = ("cache-hit", "handshake", "scale", "bundle", "fleet")
RESULTS_DIR = BENCH_DIR / "results"


class Progress(list[str]):
    """Collects progress lines and prints each as it comes, with the time since the start."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    def append(self, line: str) -> None:
        stamped = f"[{time.monotonic() - self.started:6.1f}s] {line}"
        print(stamped, file=sys.stderr, flush=True)
        super().append(stamped)


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else float(seconds) * 1000


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


# --------------------------------------------------------------------------------------------------
# rows of the table
# --------------------------------------------------------------------------------------------------


def cache_hit_rows(r: CacheHitResults) -> list[Row]:
    rows: list[Row] = []
    nginx = r.runs.get("nginx")
    rate = f"{r.settings.rate:,.0f}/s"
    for run_name, level, workers in VARIANTS:
        run = r.runs.get(run_name)
        if run is None or run.wrk is None or run.fixed is None:
            continue
        peer_wrk = nginx.wrk if nginx else None
        peer_fixed = nginx.fixed if nginx else None
        sec = f"cache hit, log {level}" + (f", {workers} processes" if workers > 1 else "")
        rows += [
            Row(
                sec,
                "full load, requests/s",
                run.wrk.rps,
                peer_wrk.rps if peer_wrk else None,
                "req/s",
                target="≥ 0.5 times nginx",
                met=peer_wrk is not None and run.wrk.rps >= 0.5 * peer_wrk.rps,
                digits=0,
            ),
            Row(sec, "full load, p50", run.wrk.p50_ms, peer_wrk.p50_ms if peer_wrk else None, "ms", digits=2),
            Row(sec, "full load, p99", run.wrk.p99_ms, peer_wrk.p99_ms if peer_wrk else None, "ms", digits=2),
        ]
        for name, key in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
            rows.append(
                Row(
                    sec,
                    f"{rate} fixed, {name}",
                    _f(_get(run.fixed, "latency_ms", key)),
                    _f(_get(peer_fixed, "latency_ms", key)),
                    "ms",
                    digits=2,
                )
            )
        errors = _f(run.fixed.get("errors"))
        achieved = _f(run.fixed.get("achieved_rps")) or 0.0
        rows.append(
            Row(
                sec,
                f"{rate} fixed, errors",
                errors,
                _f(peer_fixed.get("errors")) if peer_fixed else None,
                "",
                target=f"0, ≥ {0.99 * r.settings.rate:,.0f}/s served",
                met=errors == 0 and achieved >= 0.99 * r.settings.rate,
                digits=0,
            )
        )
    return rows


def metrics_rows(r: CacheHitResults) -> list[Row]:
    """Metrics on (admin listener, scraped every second) against off, the same run, alternating."""
    cost = r.metrics_cost
    if cost is None or cost.on is None or cost.off is None:
        return []
    return [
        Row(
            "cache hit, log info, 1 process",
            f"metrics on / off, median of {cost.rounds} alternating wrk runs, requests/s",
            cost.on,
            cost.off,
            "req/s",
            target="≥ 0.95 times off",
            met=cost.on >= 0.95 * cost.off,
            digits=0,
        )
    ]


def handshake_rows(r: HandshakeResults) -> list[Row]:
    via = r.variants.get("ocspproxy", {})
    direct = r.variants.get("direct", {})
    sec = "handshake"
    server_ours = _f(via.get("first_handshake_server_ms"))
    server_peer = _f(direct.get("first_handshake_server_ms"))
    met = None
    if server_ours is not None:
        met = server_ours <= 10 and (server_peer is None or server_peer >= 500)
    return [
        Row(
            sec,
            "Apache spawn → first good staple",
            _ms(via.get("first_good_staple_s")),
            _ms(direct.get("first_good_staple_s")),
            "ms",
            digits=0,
        ),
        Row(
            sec,
            "first stapled handshake, server side",
            server_ours,
            server_peer,
            "ms",
            target="≤ 10 ms (direct ≥ 500)",
            met=met,
            digits=1,
        ),
        Row(
            sec,
            "first stapled handshake, s_client run",
            _f(via.get("first_stapled_handshake_ms")),
            _f(direct.get("first_stapled_handshake_ms")),
            "ms",
            digits=1,
        ),
        Row(
            sec,
            "mod_ssl stapling stall in it",
            _f(via.get("first_stapling_stall_ms")),
            _f(direct.get("first_stapling_stall_ms")),
            "ms",
            digits=1,
        ),
        Row(
            sec,
            f"s_client p50, first {r.loop_seconds:g} s",
            _f(_get(via, "handshake_ms", "p50")),
            _f(_get(direct, "handshake_ms", "p50")),
            "ms",
            digits=1,
        ),
        Row(
            sec,
            f"s_client p99, first {r.loop_seconds:g} s",
            _f(_get(via, "handshake_ms", "p99")),
            _f(_get(direct, "handshake_ms", "p99")),
            "ms",
            digits=1,
        ),
        Row(
            sec,
            f"s_client max, first {r.loop_seconds:g} s",
            _f(_get(via, "handshake_ms", "max")),
            _f(_get(direct, "handshake_ms", "max")),
            "ms",
            digits=1,
        ),
    ]


def _cpu_row(section: str, measure: str, pct: float | None) -> Row:
    """CPU of a process that should be doing next to nothing: % of one core, target ≤ 1 %."""
    met = None if pct is None else pct <= 1
    return Row(section, measure, pct, unit="% core", target="≤ 1 %", met=met, digits=2)


def scale_rows(r: ScaleResults) -> list[Row]:
    sec = f"scale, N={r.n:,}"
    fill = r.fill
    complete = bool(fill.get("complete"))
    fill_s = _f(fill.get("from_spawn_s")) if complete else _f(fill.get("extrapolated_from_spawn_s"))
    refresh = r.refresh
    rss = _f(r.startup.get("rss_mib_after_startup"))
    rss_mb = rss * 1024 * 1024 / 1e6 if rss is not None else None
    startup = _f(r.startup.get("startup_s"))
    restart = _f(r.startup.get("restart_s"))
    loaded = [
        _f(phases.get("store loaded")) if isinstance(phases, dict) else None
        for phases in (r.startup.get("phases_s"), r.startup.get("restart_phases_s"))
    ]
    idle = _f(r.startup.get("idle_cpu_pct_of_core"))
    per_fetch = _f(refresh.get("cpu_ms_per_fetch"))  # ms: N/3,600 a second is N/36 ms per 10 s
    return [
        Row(
            sec,
            "fill from empty, spawn → N staples" + ("" if complete else " (extrapolated)"),
            fill_s,
            unit="s",
        ),
        Row(sec, "fill rate (cap 4 per upstream)", _f(fill.get("per_second")), unit="fetches/s", digits=0),
        *(
            Row(
                sec,
                f"start-up with N staples, {when} (spawn → a stored staple served)",
                seconds,
                unit="s",
                target="≤ 5 s",
                met=None if seconds is None else seconds <= 5,
                digits=2,
            )
            for when, seconds in (("first start after the fill", startup), ("restart", restart))
        ),
        *(
            Row(sec, f"every certificate and staple loaded, {when} (spawn →)", seconds, unit="s", digits=2)
            for when, seconds in zip(("first start", "restart"), loaded, strict=True)
        ),
        *(
            Row(
                sec,
                f"hits while the full load runs (restart, {during.get('n')} asked), {name}",
                _f(during.get(key)),
                unit="ms",
                digits=2,
            )
            for during in [r.startup.get("hits_during_load")]
            if isinstance(during, dict)
            for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms"))
        ),
        Row(
            sec,
            "RSS after start-up (all loaded)",
            rss_mb,
            unit="MB",
            target="≤ 400 MB",
            met=None if rss_mb is None else rss_mb <= 400,
            digits=0,
        ),
        _cpu_row(sec, f"idle CPU over {r.startup.get('idle_window_s', '?')} s (hourly checks off)", idle),
        Row(
            sec,
            "the hourly checks of N certificates: N/3,600 fetches/s times the CPU per fetch (refresh run)",
            None if per_fetch is None else r.n / 3600 * per_fetch / 10,
            unit="% core",
            digits=1,
        ),
        _cpu_row(
            sec,
            f"CA down, all N due: CPU over {r.ca_down.get('window_s', '?')} s after the start-up work",
            _f(r.ca_down.get("cpu_pct_of_core")),
        ),
        Row(
            sec,
            "CA down, all N due: fetches that reached the network in that window",
            _f(r.ca_down.get("network_fetches")),
            unit="fetches",
            digits=0,
        ),
        Row(sec, "CA down, all N due: log lines in that window", _f(r.ca_down.get("log_lines")), digits=0),
        Row(
            sec,
            "refresh rate, all N due" + ("" if refresh.get("complete") else " (partial run)"),
            _f(refresh.get("per_second")),
            unit="fetches/s",
            digits=0,
        ),
    ]


def bundle_rows(r: BundleResults) -> list[Row]:
    sec = f"bundle, N={r.n:,}"
    rows = []
    for name in ("want", "fetch", "import"):
        run = r.commands.get(name, {})
        rows += [
            Row(sec, f"bundle {name}: time", _f(run.get("seconds")), unit="s", digits=1),
            Row(sec, f"bundle {name}: peak RSS", _f(run.get("peak_rss_mib")), unit="MiB", digits=0),
        ]
    rows.append(
        Row(
            sec,
            "service takes the bundle in (door, persisted)",
            _f(r.service.get("ingest_s")),
            unit="s",
            digits=1,
        )
    )
    for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms")):
        p99 = name == "p99"
        value = _f(r.hits.get(key))
        rows.append(
            Row(
                sec,
                f"cache hits while importing ({r.hits.get('n')} asked), {name}",
                value,
                unit="ms",
                target="≤ 50 ms" if p99 else "—",
                met=(value is not None and value <= 50) if p99 else None,
                digits=2,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------


def _settings(quick: bool) -> tuple[LoadSettings, float, ScaleSettings, int]:
    if quick:
        return (
            LoadSettings(wrk_seconds=1, fixed_seconds=1.0),
            2.0,
            ScaleSettings(n=2_000, idle_seconds=3.0, fill_limit_s=25.0, refresh_limit_s=15.0, poll_s=0.2),
            3,
        )
    return (
        LoadSettings(wrk_seconds=10, fixed_seconds=10.0),
        3.0,
        ScaleSettings(n=100_000, idle_seconds=30.0, fill_limit_s=360.0, refresh_limit_s=100.0, poll_s=1.0),
        10,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (CI)")
    parser.add_argument("--only", choices=[*BENCHMARKS, "profile"], help="run one benchmark")
    parser.add_argument("--profile", action="store_true", help="also profile ocspproxy with py-spy")
    parser.add_argument(
        "--json",
        type=Path,
        help="where to write (default bench/results/latest.json, latest-NAME.json with --only)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    if args.json is None:
        args.json = RESULTS_DIR / (f"latest-{args.only}.json" if args.only else "latest.json")
    load, shake_seconds, scale, profile_seconds = _settings(args.quick)
    selected = [args.only] if args.only else [*BENCHMARKS, *(["profile"] if args.profile else [])]
    progress = Progress()
    started_wall = dt.datetime.now(dt.UTC)
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="ocspproxy-bench-"))
    work.chmod(0o755)  # nginx and Apache workers run as an unprivileged user
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    raw: dict[str, object] = {}
    errors: dict[str, str] = {}
    peers: dict[str, str] = {}
    progress.append(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(selected)} in {work}")
    for name in selected:
        t0 = time.monotonic()
        try:
            if name == "cache-hit":
                hits = run_cache_hit(work / "cache-hit", load, progress)
                raw[name] = asdict(hits)
                for check in hits.checks:
                    progress.append(f"check: {check}")
                rows += cache_hit_rows(hits) + metrics_rows(hits)
                peers["cache hit"] = "nginx 1.22 proxy_cache (POST, key = URI + body), warm"
            elif name == "handshake":
                shakes = run_handshake(work / "handshake", seconds=shake_seconds, ca_delay=0.5, log=progress)
                raw[name] = asdict(shakes)
                if shakes.skipped:
                    errors[name] = f"skipped: {shakes.skipped}"
                rows += handshake_rows(shakes)
                peers["handshake"] = "Apache mod_ssl asking the 500 ms CA directly"
            elif name == "scale":
                scaled = run_scale(work / "scale", scale, progress)
                raw[name] = asdict(scaled)
                rows += scale_rows(scaled)
            elif name == "bundle":
                bundled = run_bundle(
                    work / "bundle", BundleSettings(n=2_000 if args.quick else 100_000), progress
                )
                raw[name] = asdict(bundled)
                rows += bundle_rows(bundled)
            elif name == "fleet":
                quick = FleetSettings(certificates=5, window_s=12.0, fresh_n=2_000, sample=50)
                fleet = run_fleet(work / "fleet", quick if args.quick else FleetSettings(), progress)
                raw[name] = asdict(fleet)
                rows += fleet_rows(fleet)
                peers["fleet"] = "one ocspproxy alone, asking its own openssl ocsp CA in the same window"
            elif name == "profile":
                raw[name] = run_profile(work / "profile", RESULTS_DIR, profile_seconds, scale.n, progress)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            progress.append(f"{name} FAILED:\n{traceback.format_exc()}")
        progress.append(f"{name}: {time.monotonic() - t0:.1f}s")

    elapsed = time.monotonic() - progress.started
    table = render_table(rows, peers)
    machine["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report = {
        "suite": {
            "mode": "quick" if args.quick else "full",
            "benchmarks": selected,
            "started": started_wall.isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
            "command": "bench/run " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "machine": machine,
        "rows": [row.as_dict() for row in rows],
        "table": table,
        "results": raw,
        "errors": errors,
        "log": list(progress),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if "profile" in raw:
        print(_profile_text(raw["profile"]))
    print()
    print(table)
    print()
    for name, error in errors.items():
        print(f"{name}: {error}")
    print(f"{'quick' if args.quick else 'full'} run: {elapsed:.0f}s; results in {args.json}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(not e.startswith("skipped") for e in errors.values()) else 0


def _profile_text(profile: object) -> str:
    lines = []
    if not isinstance(profile, dict):
        return ""
    for level, data in profile.items():
        if not isinstance(data, dict) or "self_top" not in data:
            lines.append(f"profile {level}: {data}")
            continue
        lines.append(
            f"profile ({level}): {data['samples']} samples, busy {data['busy_pct_of_samples']}% "
            f"({data['collapsed_stacks']})"
        )
        lines.append("  self%  total%  function")
        for h in data["self_top"][:15]:
            lines.append(f"  {h['self_pct']:5.1f}  {h['total_pct']:5.1f}  {h['function']}")
        lines.append("  by the deepest ocspproxy frame (callees included):")
        for name, share in list(data["ocspproxy_lines"].items())[:15]:
            lines.append(f"  {share:5.1f}  {name}")
        lines.append(
            "  self by package: " + ", ".join(f"{k} {v}%" for k, v in data["self_by_package"].items())
        )
        lines.append(
            "  on the stack, by package: "
            + ", ".join(f"{k} {v}%" for k, v in data["on_stack_by_package"].items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
