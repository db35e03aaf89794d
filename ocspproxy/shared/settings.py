"""The shared store's settings (``shared_store`` in the configuration, ``--shared-store``), checked
where the configuration is: a Redis URL (``redis://``, ``rediss://``, ``unix://``), or Redis
Sentinel (``sentinel://host:port[,host:port…]/service[/db]`` or the ``[shared_store]`` table's
``sentinels`` and ``service``). Pure: nothing here connects.

A password never has to be on the command line (where ``ps`` shows it): it comes from
``password_file``, from ``$OCSPPROXY_SHARED_STORE_PASSWORD``, or from the URL in the configuration
file; ``--shared-store`` refuses a URL that carries one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["PASSWORD_ENV", "SharedSettings", "SharedSettingsError", "parse_shared_store"]

PASSWORD_ENV = "OCSPPROXY_SHARED_STORE_PASSWORD"
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SharedSettingsError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, kw_only=True)
class SharedSettings:
    url: str | None = None  # redis:// rediss:// unix:// (None with sentinels)
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None  # the Sentinel master's name
    db: int = 0
    prefix: str = "ocspproxy"  # several fleets can share one Redis
    username: str | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None  # rediss:// or Sentinel over TLS: the CA to trust
    timeout: float = 1.0  # seconds for one operation; Redis never holds an answer longer
    lease_ttl: float = 30.0  # a fetch lease's lifetime: a holder that dies frees it after this
    load_timeout: float = 30.0  # at start-up, the fleet's staples are read for at most this long
    probe_interval: float = 5.0  # how often Redis is checked (found back, found emptied)
    url_password: str | None = field(default=None, repr=False)

    def password(self, env: Mapping[str, str] = os.environ) -> str | None:
        """From the file, else the environment, else the URL in the configuration file. Raises
        OSError when the file cannot be read."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip("\r\n")
        return env.get(PASSWORD_ENV) or self.url_password

    def describe(self) -> str:
        """Where the store is, for logs: never the password."""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel://{hosts}/{self.service}/{self.db}"
        parts = urlsplit(self.url or "")
        host = parts.hostname or ""
        where = f"{host}:{parts.port}" if parts.port else host
        return f"{parts.scheme}://{where}{parts.path}"


def parse_shared_store(
    value: Any, base: Path, *, key: str = "shared_store", from_command_line: bool = False
) -> SharedSettings | None:
    """A URL string, or a table (``url`` or ``sentinels`` + ``service``, and the other fields).
    Raises SharedSettingsError naming the key; None when value is empty (no shared store)."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        return _from_url(value, key, from_command_line=from_command_line)
    if not isinstance(value, dict):
        raise SharedSettingsError(key, "expected a URL or a [shared_store] table")
    known = {
        "url", "sentinels", "service", "db", "prefix", "username", "password_file", "tls_ca_file",
        "timeout", "lease_ttl", "load_timeout", "probe_interval",
    }  # fmt: skip
    unknown = sorted(set(value) - known)
    if unknown:
        raise SharedSettingsError(f"{key}.{unknown[0]}", "unknown key")
    url = value.get("url")
    settings = _from_url(_text(f"{key}.url", url), f"{key}.url") if url is not None else SharedSettings()
    sentinels = value.get("sentinels")
    if sentinels is not None:
        if url is not None:
            raise SharedSettingsError(f"{key}.sentinels", "give either url or sentinels, not both")
        if not isinstance(sentinels, list) or not sentinels:
            raise SharedSettingsError(f"{key}.sentinels", 'expected a list of "host:port"')
        settings = replace(settings, sentinels=tuple(_host_port(f"{key}.sentinels", s) for s in sentinels))
    changes: dict[str, Any] = {}
    for name in ("service", "username", "prefix"):
        if name in value:
            changes[name] = _text(f"{key}.{name}", value[name])
    for name in ("password_file", "tls_ca_file"):
        if name in value:
            path = Path(_text(f"{key}.{name}", value[name])).expanduser()
            changes[name] = path if path.is_absolute() else base / path
    if "db" in value:
        changes["db"] = _int(f"{key}.db", value["db"], 0, 1 << 16)
    for name, low, high in (
        ("timeout", 0.05, 60.0),
        ("lease_ttl", 1.0, 3600.0),
        ("load_timeout", 1.0, 3600.0),
        ("probe_interval", 0.1, 600.0),
    ):
        if name in value:
            changes[name] = _float(f"{key}.{name}", value[name], low, high)
    settings = replace(settings, **changes)
    if settings.sentinels and not settings.service:
        raise SharedSettingsError(f"{key}.service", "Sentinel needs the name of the master (service)")
    if not settings.sentinels and settings.url is None:
        raise SharedSettingsError(key, "expected url or sentinels")
    if not _PREFIX.match(settings.prefix):
        raise SharedSettingsError(
            f"{key}.prefix", f"letters, digits, '_', '.', '-' only, got {settings.prefix!r}"
        )
    return settings


def _from_url(url: str, key: str, *, from_command_line: bool = False) -> SharedSettings:
    parts = urlsplit(url)
    if parts.password is not None and from_command_line:
        raise SharedSettingsError(
            key,
            "a password on the command line shows in ps: put it in the configuration file's "
            f"[shared_store] password_file, or in ${PASSWORD_ENV}",
        )
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme == "sentinel":
        hosts = [_host_port(key, h) for h in parts.netloc.rpartition("@")[2].split(",") if h]
        path = [p for p in parts.path.split("/") if p]
        if not hosts or not path:
            raise SharedSettingsError(
                key, f"expected sentinel://host:port[,host:port]/service[/db], got {url!r}"
            )
        db = _int(key, path[1], 0, 1 << 16) if len(path) > 1 else 0
        return SharedSettings(
            sentinels=tuple(hosts), service=path[0], db=db, username=username, url_password=password
        )
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SharedSettingsError(key, f"expected redis://, rediss://, unix:// or sentinel://, got {url!r}")
    if parts.scheme == "unix" and not parts.path:
        raise SharedSettingsError(key, f"expected unix:///path/to/redis.sock, got {url!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise SharedSettingsError(key, f"no host in {url!r}")
    # Rebuilt by hand: geturl() drops the empty host of unix:///path.
    query = f"?{parts.query}" if parts.query else ""
    clean = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}{query}"
    return SharedSettings(url=clean, username=username, url_password=password)


def _host_port(key: str, value: Any) -> tuple[str, int]:
    text = _text(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SharedSettingsError(key, f'expected "host:port", got {text!r}')
    return host.strip("[]"), int(port)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SharedSettingsError(key, f"expected a non-empty string, got {value!r}")
    return value


def _int(key: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SharedSettingsError(key, f"expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise SharedSettingsError(key, f"must be between {low} and {high}, got {value!r}")
    return number


def _float(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SharedSettingsError(key, f"expected a number between {low} and {high}, got {value!r}")
    return float(value)
