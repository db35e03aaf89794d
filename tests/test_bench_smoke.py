"""The benchmark suite keeps working: its seconds-long smoke run completes and prints its table.

No timing is asserted here; figures live in docs/performance.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.required import unavailable

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_reports_every_benchmark() -> None:
    missing = [
        tool
        for tool in ("wrk", "nginx", "apache2", "openssl")
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if missing:
        unavailable(f"missing {missing}; scripts/test installs them")
    result = subprocess.run(
        [str(ROOT / "bench" / "run"), "--quick"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| measure" in result.stdout
    report = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    sections = {row["section"].split(",")[0] for row in report["rows"]}
    assert {"cache hit", "handshake", "scale", "bundle"} <= sections
    assert all(row["ocspproxy"] is not None for row in report["rows"] if "errors" not in row["measure"])
