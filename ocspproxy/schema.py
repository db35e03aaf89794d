"""The configuration file's keys: where each goes in ``Config`` and how it is checked. Every
mistake raises ``ConfigError`` naming the key (``config.py`` builds the ``Config`` from these)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocspproxy.admin.address import AdminAddress, parse_admin
from ocspproxy.shared.settings import SharedSettings, SharedSettingsError, parse_shared_store
from ocspproxy.upstream.proxy import ProxyError, check_proxy_url

__all__ = ["PATH_KEYS", "SCHEMA", "ConfigError", "admin_address", "issuer_tables", "shared_store"]


class ConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _number(minimum: float, maximum: float, *, integer: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        numeric = isinstance(value, int) or (not integer and isinstance(value, float))
        if isinstance(value, bool) or not numeric:
            raise ConfigError(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if not minimum <= value <= maximum:
            raise ConfigError(key, f"must be between {minimum} and {maximum}, got {value}")
        return value if integer else float(value)

    return check


def _choice(*options: str) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in options:
            raise ConfigError(key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return check


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return value


def admin_address(key: str, value: Any) -> AdminAddress | None:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected HOST:PORT, unix:/path or an empty string, got {value!r}")
    try:
        return parse_admin(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _proxy(key: str, value: Any) -> str:
    try:
        return check_proxy_url(_string(key, value))
    except ProxyError as exc:
        raise ConfigError(key, str(exc)) from None


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, "expected a list of paths")
    return tuple(value)


# section -> key -> (Config attribute or "section.attribute", checker)
SCHEMA: dict[str, dict[str, tuple[str, Callable[[str, Any], Any]]]] = {
    "": {
        "listen": ("listen", _string),
        "state_dir": ("state_dir", _string),
        "certs": ("certs", _strings),
        "issuers": ("issuers", _strings),
        "apache_config": ("apache_config", _string),
        "log_level": ("log_level", _choice("debug", "info", "warning", "error")),
        "log_format": ("log_format", _choice("auto", "json", "console")),
        "admin_listen": ("admin_listen", admin_address),
    },
    "admin": {
        "critical_margin": ("critical_margin", _number(0, 365 * 86400)),
    },
    "server": {
        "answer_budget": ("answer_budget", _number(0.1, 60)),
        "max_request_bytes": ("max_request_bytes", _number(256, 1 << 20, integer=True)),
        "max_connections": ("max_connections", _number(1, 1_000_000, integer=True)),
        "request_timeout": ("request_timeout", _number(0.1, 600)),
        "connection_lifetime": ("connection_lifetime", _number(1, 3600)),
        "max_tracked_requests": ("max_tracked_requests", _number(0, 10_000_000, integer=True)),
        "fetch_rate_per_issuer": ("fetch_rate_per_issuer", _number(0.01, 10_000)),
        "fetch_burst_per_issuer": ("fetch_burst_per_issuer", _number(1, 100_000, integer=True)),
        "watch_interval": ("watch_interval", _number(0.5, 3600)),
        "shutdown_timeout": ("shutdown_timeout", _number(0, 600)),
        "workers": ("workers", _number(1, 64, integer=True)),
    },
    "cache": {
        "memory_max_entries": ("memory_max_entries", _number(1, 100_000_000, integer=True)),
        "negative_ttl": ("negative_ttl", _number(0, 3600)),
        "skew": ("skew", _number(0, 3600)),
        "validity_without_next_update": ("validity_without_next_update", _number(60, 7 * 86400)),
    },
    "refresh": {
        "fraction": ("refresh.fraction", _number(0.05, 0.9)),
        "jitter": ("refresh.jitter", _number(0, 0.5)),
        "margin": ("refresh.margin", _number(0.01, 0.5)),
        "retry_initial": ("refresh.retry_initial", _number(0.1, 3600)),
        "retry_max": ("refresh.retry_max", _number(1, 86400)),
        "max_interval": ("refresh.max_interval", _number(1, 30 * 86400)),
        "retry_unservable": ("refresh.retry_unservable", _number(1, 86400)),
    },
    "upstream": {
        "connect_timeout": ("upstream.connect_timeout", _number(0.1, 120)),
        "total_timeout": ("upstream.total_timeout", _number(0.1, 600)),
        "max_per_upstream": ("upstream.max_per_upstream", _number(1, 1024, integer=True)),
        "max_response_bytes": ("upstream.max_response_bytes", _number(1024, 16 << 20, integer=True)),
        "proxy": ("upstream.proxy", _proxy),
        "proxy_auth_file": ("upstream.proxy_auth_file", _string),
        "use_env_proxy": ("upstream.use_env_proxy", _boolean),
    },
    "bundle": {
        "warn_margin": ("bundle_warn_margin", _number(0, 365 * 86400)),
        "want_file": ("bundle_want_file", _string),
    },
}
PATH_KEYS = {"state_dir", "apache_config", "upstream.proxy_auth_file", "bundle.want_file"}


def issuer_tables(
    value: Any, base: Path, resolve: Callable[[Path, str], Path]
) -> tuple[tuple[tuple[Path, str], ...], tuple[tuple[Path, str], ...]]:
    """[[issuer]] tables: (certificate, ocsp_url) overrides and (certificate, upstream_proxy) ones."""
    if not isinstance(value, list):
        raise ConfigError("issuer", "expected [[issuer]] tables")
    urls, proxies = [], []
    for i, table in enumerate(value):
        where = f"issuer[{i}]"
        if not isinstance(table, dict) or set(table) - {"certificate", "ocsp_url", "upstream_proxy"}:
            raise ConfigError(where, "expected keys certificate, ocsp_url and upstream_proxy only")
        if not {"ocsp_url", "upstream_proxy"} & set(table):
            raise ConfigError(where, "expected ocsp_url or upstream_proxy (or both)")
        cert = resolve(base, _string(f"{where}.certificate", table.get("certificate")))
        if "ocsp_url" in table:
            url = _string(f"{where}.ocsp_url", table["ocsp_url"])
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{where}.ocsp_url", f"expected an http:// or https:// URL, got {url!r}")
            urls.append((cert, url))
        if "upstream_proxy" in table:
            proxy = table["upstream_proxy"]
            # "": this issuer's CAs are asked directly, whatever [upstream] proxy says
            proxies.append((cert, "" if proxy == "" else _proxy(f"{where}.upstream_proxy", proxy)))
    return tuple(urls), tuple(proxies)


def shared_store(value: Any, base: Path, *, from_command_line: bool = False) -> SharedSettings | None:
    key = "--shared-store" if from_command_line else "shared_store"
    try:
        return parse_shared_store(value, base, key=key, from_command_line=from_command_line)
    except SharedSettingsError as exc:
        raise ConfigError(exc.key, str(exc)) from None
