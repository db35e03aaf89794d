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

from bench.bundle import BundleSettings, run_bundle
from bench.common import BENCH_DIR
from bench.fleet import FleetSettings, run_fleet
from bench.handshake import run_handshake
from bench.loadtest import LoadSettings, run_cache_hit
from bench.profile import run_profile
from bench.report import Row, machine_info, render_table
from bench.rows import bundle_rows, cache_hit_rows, fleet_rows, handshake_rows, metrics_rows, scale_rows
from bench.scale import ScaleSettings, run_scale

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
