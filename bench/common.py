"""Processes, ports, waits, /proc readings and percentiles shared by the benchmarks."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from tests.e2e.peers import free_port, port_accepts

__all__ = [
    "BENCH_DIR",
    "PYTHON",
    "REPO_ROOT",
    "Proc",
    "cpu_seconds",
    "free_port",
    "logged",
    "percentile",
    "port_accepts",
    "python_env",
    "rss_mib",
    "tcp_opens",
    "wait_logged",
    "wait_until",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def python_env() -> dict[str, str]:
    """Environment for our Python children: the repository importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["LC_ALL"] = "C"
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the suite dies, so nothing is left behind."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


class Proc:
    """A child in its own session with its output in a file; ``stop()`` ends it and its children."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self.spawned = time.monotonic()
        self.spawned_wall = time.time()
        self.popen = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else python_env(),
            cwd=cwd or REPO_ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        if not self.alive():
            tail = "\n".join(self.log_text().splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited with status {self.popen.returncode}:\n{tail}")

    def wait_port(self, port: int, timeout: float, interval: float = 0.01) -> float:
        """Seconds from spawn until ``port`` accepts a connection."""

        def ready() -> bool:
            self.check_alive()
            return port_accepts(port, timeout=0.5)

        wait_until(ready, timeout=timeout, interval=interval, what=f"{self.name} to listen on {port}")
        return time.monotonic() - self.spawned

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # whatever the leader left behind in its own session (e.g. httpd or nginx workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str) -> float:
    """Poll until predicate() holds; returns the seconds waited. Raises TimeoutError."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start >= timeout:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def logged(log_path: Path, event: str) -> dict[str, object] | None:
    """The first record of event in an ocspproxy JSON log, or None (yet)."""
    needle = f'"event": "{event}"'.encode()
    for line in log_path.read_bytes().splitlines():
        if needle in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line still being written
            return record if isinstance(record, dict) else None
    return None


def wait_logged(log_path: Path, event: str, *, timeout: float) -> float:
    """Wait until event is in an ocspproxy JSON log; the seconds waited. Raises TimeoutError. (Read
    every 0.2 s: the log of a run with 100,000 certificates is tens of MB.)"""
    needle = f'"event": "{event}"'.encode()
    return wait_until(
        lambda: needle in log_path.read_bytes(), timeout=timeout, interval=0.2, what=f"{event!r} logged"
    )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def rss_mib(pid: int) -> float:
    """VmRSS of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its own threads, not children), seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def tcp_opens() -> int:
    """PassiveOpens of this network namespace: TCP connections accepted so far (all servers)."""
    lines = [
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")
    ]
    header, values = lines[0], lines[1]
    return int(values[header.index("PassiveOpens")])
