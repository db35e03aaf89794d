"""``shared_store`` in the configuration and ``--shared-store``: every form the README shows, and
one line naming the key for each mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocspproxy.config import ConfigError, load_config
from ocspproxy.shared.settings import PASSWORD_ENV

ROOT = Path(__file__).resolve().parent.parent


def config(tmp_path: Path, text: str, **overrides: object) -> Any:
    path = tmp_path / "ocspproxy.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + text)
    return load_config(path, overrides or None)


def test_urls_of_every_kind(tmp_path: Path) -> None:
    shared = config(tmp_path, 'shared_store = "redis://10.0.0.5:6380/2"\n').shared
    assert shared is not None and shared.url == "redis://10.0.0.5:6380/2" and shared.prefix == "ocspproxy"
    assert config(tmp_path, 'shared_store = "rediss://cache.example:6379/0"\n').shared.url.startswith(
        "rediss://"
    )
    assert config(tmp_path, 'shared_store = "unix:///run/redis/redis.sock?db=1"\n').shared.url.startswith(
        "unix://"
    )
    sentinel = config(tmp_path, 'shared_store = "sentinel://10.0.0.1:26379,10.0.0.2:26379/ocsp/3"\n').shared
    assert sentinel.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert sentinel.service == "ocsp" and sentinel.db == 3 and sentinel.url is None


def test_the_table_form_with_sentinels_a_prefix_and_a_password_file(tmp_path: Path) -> None:
    (tmp_path / "redis.pass").write_text("s3cret\n")
    shared = config(
        tmp_path,
        "[shared_store]\n"
        'sentinels = ["10.0.0.1:26379", "[fd00::2]:26379"]\n'
        'service = "ocsp"\nprefix = "fleet-a"\npassword_file = "redis.pass"\n'
        "lease_ttl = 20\ntimeout = 0.5\nload_timeout = 60\nprobe_interval = 2\n",
    ).shared
    assert shared.sentinels == (("10.0.0.1", 26379), ("fd00::2", 26379))
    assert shared.prefix == "fleet-a" and shared.lease_ttl == 20 and shared.timeout == 0.5
    assert shared.load_timeout == 60 and shared.probe_interval == 2
    assert shared.password_file == tmp_path / "redis.pass" and shared.password(env={}) == "s3cret"
    assert "s3cret" not in repr(shared) and "s3cret" not in shared.describe()


def test_the_password_comes_from_the_file_the_environment_or_the_config_file_url(tmp_path: Path) -> None:
    shared = config(tmp_path, 'shared_store = "redis://app:p%40ss@10.0.0.5:6379/0"\n').shared
    assert shared.username == "app" and shared.password(env={}) == "p@ss"
    assert "p@ss" not in shared.describe() and "p%40ss" not in (shared.url or "")
    assert shared.password(env={PASSWORD_ENV: "from-env"}) == "from-env"


def test_a_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, "", shared_store="redis://:hunter2@10.0.0.5:6379/0")
    assert caught.value.key == "--shared-store" and PASSWORD_ENV in str(caught.value)
    assert (
        config(tmp_path, "", shared_store="redis://10.0.0.5:6379/0").shared.url == "redis://10.0.0.5:6379/0"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('shared_store = "http://10.0.0.5/"\n', "shared_store"),
        ('shared_store = "redis:///0"\n', "shared_store"),
        ('shared_store = "sentinel://10.0.0.1:26379"\n', "shared_store"),
        ("shared_store = 5\n", "shared_store"),
        ('[shared_store]\nurl = "redis://h:1/0"\nsentinels = ["h:2"]\n', "shared_store.sentinels"),
        ('[shared_store]\nsentinels = ["h:2"]\n', "shared_store.service"),
        ('[shared_store]\nsentinels = ["nope"]\nservice = "s"\n', "shared_store.sentinels"),
        ('[shared_store]\nurl = "redis://h:1/0"\nprefix = "a b"\n', "shared_store.prefix"),
        ('[shared_store]\nurl = "redis://h:1/0"\npasword = "x"\n', "shared_store.pasword"),
        ('[shared_store]\nurl = "redis://h:1/0"\ntimeout = 0\n', "shared_store.timeout"),
        ('[shared_store]\nurl = "redis://h:1/0"\nprobe_interval = 0\n', "shared_store.probe_interval"),
        ('[shared_store]\nurl = "redis://h:1/0"\npassword_file = "missing"\n', "shared_store.password_file"),
        ('[shared_store]\nurl = "redis://h:1/0"\nlease_ttl = 5\n', "shared_store.lease_ttl"),
    ],
)
def test_mistakes_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, text)
    assert caught.value.key == key, str(caught.value)


def test_the_cli_refuses_a_password_in_the_flag_on_one_line_with_status_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocspproxy", "serve", "--state-dir", str(tmp_path), "--shared-store",
         "redis://:hunter2@127.0.0.1:6379/0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--shared-store" in lines[0]
    assert "hunter2" not in result.stderr


def test_the_example_configuration_documents_every_key() -> None:
    text = (ROOT / "config" / "ocspproxy.toml").read_text()
    keys = ("shared_store", "sentinels", "service", "prefix", "password_file", "lease_ttl", "load_timeout",
            "probe_interval", "tls_ca_file", "timeout")  # fmt: skip
    for key in keys:
        assert key in text, key
