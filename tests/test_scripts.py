"""scripts/test run against stub programs: what it installs, and how it falls back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> "{log}"\n{body}\n'


def _stub(path: Path, log: Path, body: str = "exit 0") -> None:
    path.write_text(STUB.format(log=log, body=body))
    path.chmod(0o755)


def _run_test_script(tmp_path: Path, pip_fails_for: tuple[str, ...]) -> tuple[list[str], str]:
    """Run a copy of scripts/test with every program it calls stubbed; return the pip commands and
    what it said on stderr."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    tools, venv = tmp_path / "tools", tmp_path / ".venv" / "bin"
    tools.mkdir()
    venv.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for name in ("openssl", "apache2", "systemd-analyze", "wrk", "nginx", "python3", "apt-get"):
        _stub(tools / name, log)
    for name in ("python", "ruff", "mypy", "pytest"):
        _stub(venv / name, log)
    fails = " ".join(f"*'{extras}'*) exit 1;;" for extras in pip_fails_for)
    _stub(venv / "pip", log, f'case "$*" in {fails} esac' if fails else "exit 0")
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "test")],
        env={"PATH": f"{tools}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert "apt-get" not in " ".join(calls)
    return [call for call in calls if call.startswith("pip ")], result.stderr


@pytest.mark.parametrize(
    ("failing", "installs", "says"),
    [
        ((), ["pip install --quiet -e .[test,fuzz,speed]"], False),
        (
            (".[test,fuzz,speed]",),
            ["pip install --quiet -e .[test,fuzz,speed]", "pip install --quiet -e .[test,speed]"],
            True,
        ),
        (
            (".[test,fuzz,speed]", ".[test,speed]"),
            [
                "pip install --quiet -e .[test,fuzz,speed]",
                "pip install --quiet -e .[test,speed]",
                "pip install --quiet -e .[test]",
            ],
            True,
        ),
    ],
)
def test_scripts_test_installs_once_with_every_extra_then_falls_back(
    tmp_path: Path, failing: tuple[str, ...], installs: list[str], says: bool
) -> None:
    pips, stderr = _run_test_script(tmp_path, failing)
    assert pips == installs
    assert ("atheris not installable here: fuzz targets run without it" in stderr) is says
