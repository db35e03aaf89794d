"""Profile ocspproxy on the cache-hit path: py-spy samples it while wrk loads it (as in benchmark 1).

Writes the collapsed stacks (``bench/results/profile-LEVEL.txt``, for flamegraph tools) and returns the
hot spots: per function, the share of samples in which it is running (self) and on the stack (total).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import free_port
from bench.loadtest import LoadSettings, wrk_command
from bench.pkiset import cache_hit_set, load_responses, scale_set
from bench.scale import issuer_config, write_staples
from bench.servers import start_ocspproxy, start_upstream, wait_for_staples

__all__ = ["Hotspot", "Profile", "hotspots", "run_profile"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Hotspot:
    function: str
    self_pct: float
    total_pct: float


def _parse(frame: str) -> tuple[str, str, str]:
    """``func (pkg/mod.py:12)`` -> (``pkg/mod.py``, ``func``, ``12``)."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "", ""
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    if path.startswith(".") and "/" in path:  # "/lib/python3" leaves ".11/asyncio/..."
        path = path.split("/", 1)[1]
    return path, match["func"], match["line"] or ""


def _package(path: str) -> str:
    return path.split("/", 1)[0].removesuffix(".py")


# ocspproxy frames every sample has (start-up, the loop): not where the time goes
_BOOTSTRAP = ("ocspproxy/__main__.py", "ocspproxy/cli.py")


@dataclass
class Profile:
    samples: int
    self_top: list[Hotspot]  # by time running in the function itself (C calls it makes included)
    total_top: list[Hotspot]  # by time with the function on the stack
    self_by_package: dict[str, float]
    on_stack_by_package: dict[str, float]  # share of samples with any frame of the package
    ocspproxy_lines: dict[str, float]  # deepest ocspproxy frame (file:line function), callees included


def hotspots(collapsed: Path, top: int = 25) -> Profile:
    """Hot spots from py-spy's raw (collapsed) output."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        samples += count
        names = [f"{path}:{func}" for path, func, _ in frames]
        self_counts[names[-1]] += count
        for name in set(names):
            total_counts[name] += count
        packages[_package(frames[-1][0])] += count
        for pkg in {_package(path) for path, _, _ in frames if not path.startswith(_BOOTSTRAP)}:
            on_stack[pkg] += count
        ours = [f for f in frames if f[0].startswith("ocspproxy/") and not f[0].startswith(_BOOTSTRAP)]
        if ours:
            path, func, lineno = ours[-1]
            lines[f"{path}:{lineno} {func}"] += count
        else:
            lines["(no ocspproxy frame: event loop, aiohttp, sockets)"] += count

    def pct(counter: Counter[str], n: int) -> dict[str, float]:
        return {name: round(100 * c / samples, 1) for name, c in counter.most_common(n)} if samples else {}

    def spots(counter: Counter[str]) -> list[Hotspot]:
        return [
            Hotspot(
                name,
                round(100 * self_counts[name] / samples, 1),
                round(100 * total_counts[name] / samples, 1),
            )
            for name, _ in counter.most_common(top)
        ]

    return Profile(
        samples=samples,
        self_top=spots(self_counts),
        total_top=spots(total_counts),
        self_by_package=pct(packages, 12),
        on_stack_by_package=pct(on_stack, 12),
        ocspproxy_lines=pct(lines, top),
    )


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _spy(py_spy: str, pid: int, seconds: float, rate: int, collapsed: Path) -> subprocess.Popen[str]:
    """Start py-spy record on pid (it pauses the process for each sample: whole stacks; idle left out)."""
    return subprocess.Popen(
        [
            *(py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate)),
            *("--format", "raw", "-o", str(collapsed)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _spy_result(spy: subprocess.Popen[str], seconds: float, rate: int, collapsed: Path) -> dict[str, object]:
    """Wait for py-spy and turn its output into hot spots (or an error)."""
    _, err = spy.communicate(timeout=seconds + 60)
    if not collapsed.exists():
        return {"error": f"py-spy failed (rc={spy.returncode}): {err.strip()[-500:]}"}
    prof = hotspots(collapsed)
    # samples are taken only while a thread runs (not idle): their share of rate * seconds ~ CPU share
    busy = round(100 * prof.samples / (rate * seconds), 1)
    return {
        "collapsed_stacks": str(collapsed),
        "seconds": round(seconds, 1),
        "busy_pct_of_samples": busy,
        **asdict(prof),
    }


def _record(py_spy: str, pid: int, seconds: int, rate: int, collapsed: Path) -> dict[str, object]:
    return _spy_result(_spy(py_spy, pid, seconds, rate, collapsed), seconds, rate, collapsed)


def run_profile(
    workdir: Path, results_dir: Path, seconds: int, idle_n: int, log: list[str]
) -> dict[str, object]:
    """Cache-hit path under wrk at log levels info and warning; then idle with idle_n stored staples."""
    py_spy = _py_spy()
    if py_spy is None:
        return {"skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
    s = LoadSettings(wrk_seconds=seconds + 2)
    up_port = free_port()
    hits = cache_hit_set(workdir / "set", s.k, f"http://127.0.0.1:{up_port}/")
    upstream, _ = start_upstream(hits.responses_file, workdir / "upstream.log", port=up_port)
    out: dict[str, object] = {}
    try:
        for level in ("info", "warning"):
            port = free_port()
            state = workdir / f"state-{level}"
            proxy = start_ocspproxy(
                port=port,
                state_dir=state,
                cert_glob=hits.cert_glob,
                issuers=hits.ca_pem,
                log_path=workdir / f"ocspproxy-{level}.log",
                log_level=level,
            )
            try:
                wait_for_staples(state, s.k)
                wrk = subprocess.Popen(
                    wrk_command(port, hits.request_files[0].parent, s.k, s),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                collapsed = results_dir / f"profile-{level}.txt"
                result = _record(py_spy, proxy.pid, seconds, 250, collapsed)
                wrk.wait(timeout=seconds + 60)
                out[level] = result
                log.append(f"profile ({level}): {result.get('samples')} samples -> {collapsed}")
            finally:
                proxy.stop()
    finally:
        upstream.stop()
    out.update(_startup_idle_profile(py_spy, workdir / "scale", results_dir, idle_n, 3 * seconds, log))
    return out


def _startup_idle_profile(
    py_spy: str, workdir: Path, results_dir: Path, n: int, seconds: int, log: list[str]
) -> dict[str, object]:
    """ocspproxy starting with n fresh staples stored (spawn to listening), then doing nothing."""
    ss = scale_set(n)
    workdir.mkdir(parents=True, exist_ok=True)
    up_port = free_port()
    upstream, _ = start_upstream(ss.fresh_file, workdir / "upstream.log", port=up_port)
    out: dict[str, object] = {}
    try:
        state = workdir / "state"
        write_staples(state, ss, load_responses(ss.fresh_file), only_missing=False)
        port = free_port()
        proxy = start_ocspproxy(
            port=port,
            state_dir=state,
            cert_glob=ss.cert_glob,
            issuers=ss.ca_pem,
            log_path=workdir / "ocspproxy.log",
            config=issuer_config(workdir / "ocspproxy.toml", ss.ca_pem, up_port),
            wait=False,
        )
        try:
            collapsed = results_dir / f"profile-startup-{n}.txt"
            spy = _spy(py_spy, proxy.pid, 600, 100, collapsed)
            started = time.monotonic()
            proxy.wait_port(port, timeout=600)
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
            out[f"startup-{n}"] = result = _spy_result(spy, time.monotonic() - started, 100, collapsed)
            log.append(f"profile (start-up, {n} staples): {result.get('samples')} samples -> {collapsed}")
            time.sleep(1)
            collapsed = results_dir / f"profile-idle-{n}.txt"
            out[f"idle-{n}"] = result = _record(py_spy, proxy.pid, seconds, 100, collapsed)
            log.append(f"profile (idle, {n} staples): {result.get('samples')} samples -> {collapsed}")
        finally:
            proxy.stop()
    finally:
        upstream.stop()
    return out
