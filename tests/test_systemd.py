"""The systemd unit: verified, hardened (exposure <= 2.0), and readiness that systemd understands."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.required import unavailable

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "ocspproxy.service"


@pytest.fixture
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        unavailable("systemd-analyze is missing; scripts/test installs it (package systemd)")
    return tool


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_unit_starts_before_apache_and_reports_readiness() -> None:
    unit = directives()
    assert unit["Type"] == ["notify"]
    assert set(unit["Before"][0].split()) == {"apache2.service", "httpd.service"}
    assert "kill -HUP $MAINPID" in unit["ExecReload"][0]
    assert unit["StateDirectory"] == ["ocspproxy"] and unit["ConfigurationDirectory"] == ["ocspproxy"]
    assert unit["DynamicUser"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]


def test_security_exposure_is_at_most_2(systemd_analyze: str) -> None:
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for ocspproxy\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_verify_is_clean(systemd_analyze: str, tmp_path: Path) -> None:
    # The unit names the usual install path; point it at this installation so verify can check it.
    script = Path(sys.executable).parent / "ocspproxy"
    assert script.exists(), "the console script is installed by scripts/test (pip install -e .)"
    unit = tmp_path / "ocspproxy.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ocspproxy", str(script)))
    result = subprocess.run(
        [systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


def test_ready_is_notified_once_listening_and_stopping_on_sigterm(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ocspproxy",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                str(tmp_path),
            ],
            env={**os.environ, "NOTIFY_SOCKET": address, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.DEVNULL,
        )
        try:
            assert sock.recv(256) == b"READY=1"
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(256) == b"STOPPING=1"
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            proc.wait()
