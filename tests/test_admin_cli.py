"""``ocspproxy status`` with no service to ask: it reads the configuration and the state directory,
says that it did, and still gives the right exit code (2 for a critical staple, else 3)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ocspproxy.cli import main
from tests.pki import TestCA


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_status_without_a_service_reads_the_state_directory(
    ca: TestCA, make_proxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = ca.leaf("www.example.org")
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    assert (await proxy.post(ca.request(leaf.serial))).cert_status == "GOOD"
    await proxy.stop()
    config = tmp_path / "ocspproxy.toml"
    port = closed_port()
    config.write_text(
        f'state_dir = "{proxy.config.state_dir}"\n'
        f"certs = {json.dumps(list(proxy.config.certs))}\n"
        f"issuers = {json.dumps([str(p) for p in proxy.config.issuers])}\n"
        f'admin_listen = "127.0.0.1:{port}"\n'
    )
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in proxy.config.state_dir.iterdir()}

    assert main(["status", "--config", str(config)]) == 3
    assert {p.name: p.stat().st_mtime_ns for p in proxy.config.state_dir.iterdir()} == before  # read only
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OCSPPROXY UNKNOWN - 1 ok, 0 warning, 0 critical, 0 none"), out
    assert f"service not reachable at http://127.0.0.1:{port}" in out[0]
    assert f"read the state directory {proxy.config.state_dir} instead" in out[0]
    assert out[2].startswith("ok ") and "CN=www.example.org" in out[2]

    for staple in proxy.config.state_dir.glob("*.der"):
        staple.unlink()
    assert main(["status", "--config", str(config), "--json"]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document["exit_code"] == 2 and document["source"] == f"state directory {proxy.config.state_dir}"
    assert "service not reachable" in document["service_error"]
    (row,) = document["certificates"]
    assert (row["verdict"], row["status"]) == ("critical", "missing")

    # An admin listener turned off is said so, and the state directory read all the same.
    config.write_text(config.read_text().replace(f'"127.0.0.1:{port}"', '""'))
    assert main(["status", "--config", str(config)]) == 2
    assert "the admin listener is off" in capsys.readouterr().out


def test_status_with_an_unreadable_configuration_cannot_tell(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('admin_listen = "nowhere"\n')
    assert main(["status", "--config", str(config)]) == 3
    assert capsys.readouterr().out.startswith("OCSPPROXY UNKNOWN - configuration error: admin_listen:")
    assert main(["refresh", "--admin", f"http://127.0.0.1:{closed_port()}", "--all"]) == 3
    assert "service not reachable" in capsys.readouterr().err
