"""The one table (measure | ocspproxy | peer | ratio | target | met?), machine information, JSON output."""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.common import REPO_ROOT

__all__ = ["Row", "machine_info", "render_table"]


@dataclass(frozen=True)
class Row:
    section: str
    measure: str
    ours: float | None
    peer: float | None = None
    unit: str = ""
    target: str = "—"
    met: bool | None = None
    digits: int = 1

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.peer is None or self.peer == 0:
            return None
        if math.isnan(self.ours) or math.isnan(self.peer):
            return None
        return self.ours / self.peer

    def cell(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "—"
        text = f"{value:,.{self.digits}f}"
        return f"{text} {self.unit}".strip()

    def as_dict(self) -> dict[str, object]:
        return {
            "section": self.section,
            "measure": self.measure,
            "ocspproxy": self.ours,
            "peer": self.peer,
            "unit": self.unit,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.target,
            "met": self.met,
        }


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2f}" if ratio < 100 else f"{ratio:,.0f}"


def _met_text(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "NO")


def render_table(rows: list[Row], peers: dict[str, str]) -> str:
    """A Markdown table, one block per section, columns padded for the terminal."""
    header = ["measure", "ocspproxy", "peer (same run)", "ratio", "target", "met?"]
    lines: list[list[str]] = []
    for row in rows:
        peer = f"{row.cell(row.peer)}" if row.peer is not None else "—"
        lines.append(
            [
                f"{row.section}: {row.measure}",
                row.cell(row.ours),
                peer,
                _ratio_text(row.ratio),
                row.target,
                _met_text(row.met),
            ]
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    numeric = {1, 2, 3}

    def fmt(cells: list[str]) -> str:
        out = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    body = [fmt(header), sep, *(fmt(line) for line in lines)]
    legend = "; ".join(f"{section}: peer = {peer}" for section, peer in peers.items())
    return "\n".join(body) + (f"\n\n{legend}" if legend else "")


def _first_line(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0]) or shutil.which(cmd[0], path="/usr/sbin:/usr/local/sbin:/sbin")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, object]:
    def run(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = run("status", "--porcelain", "--untracked-files=no", "--", "ocspproxy")
    return {
        "commit": run("rev-parse", "HEAD"),
        "ocspproxy_modified": bool(status) if status is not None else None,
    }


def machine_info() -> dict[str, object]:
    mem_kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mib": mem_kib // 1024 if mem_kib else None,
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "aiohttp": _version("aiohttp"),
        "cryptography": _version("cryptography"),
        "structlog": _version("structlog"),
        "nginx": _first_line(["nginx", "-v"]),
        "apache": _first_line(["apache2", "-v"]) or _first_line(["httpd", "-v"]),
        "openssl": _first_line(["openssl", "version"]),
        "wrk": _first_line(["wrk", "-v"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git": _git(),
    }
