"""Configuration: TOML + flags, one clear error naming the key, exit status 2 from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocspproxy.cli import main
from ocspproxy.config import Config, ConfigError, default_state_dir, load_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ocspproxy.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe(tmp_path: Path) -> None:
    config = load_config(None)
    assert config.listen_host == "127.0.0.1"
    assert config.refresh.fraction == 0.5
    assert config.answer_budget <= 5


def test_example_config_is_complete_and_valid() -> None:
    config = load_config(ROOT / "config" / "ocspproxy.toml")
    assert isinstance(config, Config)


def test_refresh_bounds_have_hourly_and_minute_defaults(tmp_path: Path) -> None:
    assert load_config(None).refresh.max_interval == 3600.0
    assert load_config(None).refresh.retry_unservable == 60.0
    config = load_config(write(tmp_path, "[refresh]\nmax_interval = 900\nretry_unservable = 20\n"))
    assert (config.refresh.max_interval, config.refresh.retry_unservable) == (900.0, 20.0)


def test_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listen = "127.0.0.1:9000"
state_dir = "state"
certs = ["certs/*.pem"]
[refresh]
fraction = 0.4
[upstream]
max_per_upstream = 2
[[issuer]]
certificate = "ca.pem"
ocsp_url = "http://ocsp.example.test/"
""",
    )
    config = load_config(path)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9000)
    assert config.state_dir == tmp_path / "state"
    assert config.certs == (str(tmp_path / "certs/*.pem"),)
    assert config.refresh.fraction == 0.4
    assert config.upstream.max_per_upstream == 2
    assert config.issuer_urls == ((tmp_path / "ca.pem", "http://ocsp.example.test/"),)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:9000"\n')
    assert load_config(path, {"listen": "127.0.0.1:9001"}).listen_port == 9001


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('listen = "nowhere"', "listen"),
        ('listen = "example.com:80"', "listen"),
        ("lisen = 1", "lisen"),
        ("[refresh]\nfraction = 2.0", "refresh.fraction"),
        ('[refresh]\nfraction = "half"', "refresh.fraction"),
        ("[upstream]\nmax_per_upstream = 0", "upstream.max_per_upstream"),
        ("[upstream]\ntimeout = 1", "upstream.timeout"),
        ('[[issuer]]\ncertificate = "a.pem"\nocsp_url = "ftp://x/"', "issuer[0].ocsp_url"),
        ('log_format = "xml"', "log_format"),
        ("certs = [1]", "certs"),
        ("[refresh]\nretry_initial = 100\nretry_max = 10", "refresh.retry_initial"),
        ("listen = ", "--config"),
        ("[server]\nworkers = 0", "server.workers"),
        ("[server]\nworkers = 2.5", "server.workers"),
        ("[refresh]\nmax_interval = 0", "refresh.max_interval"),
        ("[refresh]\nretry_unservable = 0", "refresh.retry_unservable"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key


def test_state_dir_follows_systemd_then_xdg() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/ocspproxy"}) == Path("/var/lib/ocspproxy")
    assert default_state_dir({"STATE_DIRECTORY": "/s"}, root=True) == Path("/s")
    assert default_state_dir({}, root=True) == Path("/var/lib/ocspproxy")
    assert default_state_dir({"XDG_STATE_HOME": "/x"}, root=False) == Path("/x/ocspproxy")
    assert default_state_dir({"HOME": "/home/a"}, root=False) == Path("/home/a/.local/state/ocspproxy")


def test_state_dir_without_home_comes_from_the_password_database(tmp_path: Path) -> None:
    def home(uid: int) -> str:
        return str(tmp_path)

    expected = tmp_path / ".local" / "state" / "ocspproxy"
    assert default_state_dir({}, root=False, passwd_home=home) == expected
    assert default_state_dir({"HOME": "/"}, root=False, passwd_home=home) == expected
    relative = {"XDG_STATE_HOME": "state", "HOME": "/home/a"}  # relative: ignored, as XDG says
    assert default_state_dir(relative, root=False, passwd_home=home) == Path("/home/a/.local/state/ocspproxy")


@pytest.mark.parametrize(
    ("home", "why"),
    [
        (None, "has no entry in the password database"),
        ("/nonexistent", "the home directory /nonexistent, not a directory"),
        ("/", "the home directory /, the root directory"),
    ],
)
def test_state_dir_without_any_home_is_refused(home: str | None, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        default_state_dir({}, root=False, passwd_home=lambda uid: home)
    assert info.value.key == "state_dir"
    message = str(info.value)
    assert message.startswith("state_dir: no default: HOME is not set and ")
    assert why in message and message.endswith("; give --state-dir DIR")


def test_cli_without_a_state_dir_default_says_so_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("STATE_DIRECTORY", "XDG_STATE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # not root, and no such user
    monkeypatch.setattr("ocspproxy.config._passwd_home", lambda uid: None)
    started: list[object] = []
    monkeypatch.setattr("ocspproxy.cli.event_loop_runner", lambda: started.append)
    assert main(["serve"]) == 2
    assert started == [], "the service must not start without a state directory"
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "ocspproxy: configuration error: state_dir: no default: HOME is not set and user 4242 has no "
        "entry in the password database; give --state-dir DIR"
    ]


def test_serve_help_and_readme_agree_on_the_state_dir_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    default = help_text.split("where staples persist (default: ", 1)[1].split(")", 1)[0]
    assert "$XDG_STATE_HOME/ocspproxy" in default
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--state-dir DIR`"))
    assert default in row.replace("`", "")


def test_cli_reports_a_bad_config_on_one_line_with_status_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[refresh]\nfraction = 7\n")
    result = subprocess.run(
        [sys.executable, "-m", "ocspproxy", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refresh.fraction" in lines[0]


def test_cli_rejects_a_bad_listen_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocspproxy", "serve", "--listen", "bogus", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "listen" in result.stderr


def test_workers_flag_is_checked_like_the_key(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[server]\nworkers = 4\n")).workers == 4
    assert load_config(None, {"workers": 3}).workers == 3
    with pytest.raises(ConfigError) as info:
        load_config(None, {"workers": 65})
    assert info.value.key == "server.workers"
