"""Finding Apache and its configuration, detecting the layout, and the commands that test and reload it."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ocspproxy.apache.ctl import (
    Layout,
    RunResult,
    Tools,
    config_test_command,
    detect_layout,
    discover_tools,
    find_main_config,
    parse_compiled_config,
    reload_commands,
    run_command,
    systemd_booted,
)

DEBIAN_V = """Server version: Apache/2.4.71 (Debian)
Server compiled with....
 -D APR_HAS_SENDFILE
 -D HTTPD_ROOT="/etc/apache2"
 -D SUEXEC_BIN="/usr/lib/apache2/suexec"
 -D DEFAULT_PIDLOG="/run/apache2.pid"
 -D SERVER_CONFIG_FILE="apache2.conf"
"""
RHEL_V = """Server version: Apache/2.4.62 (Red Hat Enterprise Linux)
 -D HTTPD_ROOT="/etc/httpd"
 -D SERVER_CONFIG_FILE="conf/httpd.conf"
"""


def test_parse_compiled_config() -> None:
    assert parse_compiled_config(DEBIAN_V) == Path("/etc/apache2/apache2.conf")
    assert parse_compiled_config(RHEL_V) == Path("/etc/httpd/conf/httpd.conf")
    assert parse_compiled_config(' -D SERVER_CONFIG_FILE="/opt/web/httpd.conf"\n') == Path(
        "/opt/web/httpd.conf"
    )
    assert parse_compiled_config(' -D SERVER_CONFIG_FILE="httpd.conf"\n') is None  # relative to nothing
    assert parse_compiled_config("apache2: command not found") is None


class Answers:
    def __init__(self, answers: Mapping[str, RunResult]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str], *, env: Mapping[str, str] | None, timeout: float) -> RunResult:
        self.calls.append(tuple(argv))
        return self.answers.get(argv[0], RunResult(returncode=127, output="not found"))


def test_find_main_config_asks_each_program_then_the_usual_places() -> None:
    tools = Tools(ctl="/a/apachectl", httpd="/a/httpd", control_names=("/a/apachectl", "/a/apache2ctl"))
    runner = Answers({"/a/httpd": RunResult(returncode=0, output=RHEL_V)})
    found = find_main_config(tools=tools, runner=runner, exists=lambda p: True)
    assert found == (Path("/etc/httpd/conf/httpd.conf"), "from httpd -V")
    assert runner.calls == [("/a/apachectl", "-V"), ("/a/apache2ctl", "-V"), ("/a/httpd", "-V")]

    nothing = Answers({})
    exists = {Path("/etc/httpd/conf/httpd.conf")}
    assert find_main_config(tools=tools, runner=nothing, exists=exists.__contains__) == (
        Path("/etc/httpd/conf/httpd.conf"),
        "in the usual place",
    )
    assert find_main_config(tools=Tools(), runner=nothing, exists=lambda p: False) is None


def test_compiled_config_that_does_not_exist_is_skipped() -> None:
    tools = Tools(ctl="/a/apache2ctl", control_names=("/a/apache2ctl",))
    runner = Answers({"/a/apache2ctl": RunResult(returncode=0, output=DEBIAN_V)})
    exists = {Path("/etc/httpd/conf/httpd.conf")}
    found = find_main_config(tools=tools, runner=runner, exists=exists.__contains__)
    assert found == (Path("/etc/httpd/conf/httpd.conf"), "in the usual place")


def test_detect_layout(tmp_path: Path) -> None:
    debian = tmp_path / "apache2"
    (debian / "conf-available").mkdir(parents=True)
    (debian / "conf-enabled").mkdir()
    assert detect_layout(debian / "apache2.conf") is Layout.DEBIAN
    rhel = tmp_path / "httpd"
    (rhel / "conf").mkdir(parents=True)
    assert detect_layout(rhel / "conf" / "httpd.conf") is Layout.OTHER
    (rhel / "conf.d").mkdir()
    assert detect_layout(rhel / "conf" / "httpd.conf") is Layout.RHEL
    assert detect_layout(tmp_path / "httpd.conf") is Layout.OTHER


def test_config_test_command(tmp_path: Path) -> None:
    tools = Tools(ctl="/s/apachectl", httpd="/s/httpd", control_names=("/s/apachectl",))
    main = tmp_path / "conf" / "httpd.conf"
    default = config_test_command(main_file=main, tools=tools, compiled=main)
    assert default is not None and default.argv == ("/s/apachectl", "-t") and default.env is None
    tree = config_test_command(main_file=main, tools=tools, compiled=Path("/etc/httpd/conf/httpd.conf"))
    assert tree is not None and tree.argv == ("/s/httpd", "-t", "-f", str(main), "-d", str(tmp_path))
    assert config_test_command(main_file=main, tools=Tools(ctl="/s/apachectl"), compiled=None) is None


def test_config_test_command_sources_envvars(tmp_path: Path) -> None:
    (tmp_path / "envvars").write_text("export APACHE_RUN_DIR=/run/x\n")
    main = tmp_path / "apache2.conf"
    command = config_test_command(main_file=main, tools=Tools(httpd="/s/apache2"), compiled=None)
    assert command is not None and command.env is not None
    assert command.env["APACHE_CONFDIR"] == str(tmp_path)
    assert command.shown() == (
        f"APACHE_CONFDIR={tmp_path} . {tmp_path}/envvars && /s/apache2 -t -f {main} -d {tmp_path}"
    )
    # the shell really sources it before running the program
    probe = (*command.argv[:5], "/bin/sh", "-c", 'echo "$APACHE_RUN_DIR $APACHE_CONFDIR"')
    result = run_command(probe, env=command.env, timeout=10)
    assert (result.returncode, result.output) == (0, f"/run/x {tmp_path}\n")


def test_reload_commands(tmp_path: Path) -> None:
    main = tmp_path / "apache2.conf"
    tools = Tools(
        ctl="/s/apache2ctl", httpd="/s/apache2", systemctl="/b/systemctl", control_names=("/s/apache2ctl",)
    )
    default = reload_commands(main_file=main, tools=tools, compiled=main, layout=Layout.DEBIAN)
    assert [c.argv for c in default] == [("/b/systemctl", "reload", "apache2"), ("/s/apache2ctl", "graceful")]
    rhel = reload_commands(main_file=main, tools=tools, compiled=main, layout=Layout.RHEL)
    assert rhel[0].argv == ("/b/systemctl", "reload", "httpd")
    tree = reload_commands(main_file=main, tools=tools, compiled=None, layout=Layout.DEBIAN)
    assert [c.argv for c in tree] == [("/s/apache2", "-k", "graceful", "-f", str(main), "-d", str(tmp_path))]


def test_run_command_results() -> None:
    ok = run_command(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
        env=None,
        timeout=30,
    )
    assert ok.returncode == 0 and "out" in ok.output and "err" in ok.output
    slow = run_command([sys.executable, "-c", "import time; time.sleep(30)"], env=None, timeout=0.5)
    assert slow.returncode == 124 and "no answer within" in slow.output
    missing = run_command(["/nonexistent/apache2", "-t"], env=None, timeout=5)
    assert missing.returncode == 127 and "cannot run" in missing.output


def test_systemctl_only_where_systemd_is_the_running_init(tmp_path: Path) -> None:
    found = {"apachectl": "/usr/sbin/apachectl", "systemctl": "/usr/bin/systemctl"}

    def which(name: str, path: str) -> str | None:
        return found.get(name)

    assert discover_tools(which, booted=lambda: False).systemctl is None
    assert discover_tools(which, booted=lambda: True).systemctl == "/usr/bin/systemctl"
    marker = tmp_path / "run" / "systemd" / "system"
    assert not systemd_booted(marker)
    marker.mkdir(parents=True)
    assert systemd_booted(marker)


def test_discover_tools_looks_in_sbin() -> None:
    seen: list[tuple[str, str]] = []

    def which(name: str, path: str) -> str | None:
        seen.append((name, path))
        return {"apache2ctl": "/usr/sbin/apache2ctl", "apache2": "/usr/sbin/apache2"}.get(name)

    tools = discover_tools(which)
    assert tools == Tools(
        ctl="/usr/sbin/apache2ctl", httpd="/usr/sbin/apache2", control_names=("/usr/sbin/apache2ctl",)
    )
    assert all("/usr/sbin" in path for _, path in seen)
