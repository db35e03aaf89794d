"""One frozen Config, built from a TOML file and command-line flags and validated in one place.

Any problem raises ConfigError naming the key; the CLI prints it on one line and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocspproxy.checks import ConfigError
from ocspproxy.checks import boolean as _boolean
from ocspproxy.checks import choice as _choice
from ocspproxy.checks import number as _number
from ocspproxy.checks import proxy as _proxy
from ocspproxy.checks import string as _string
from ocspproxy.checks import strings as _strings
from ocspproxy.core.policy import RefreshPolicy
from ocspproxy.core.validate import Rules
from ocspproxy.upstream.http import UpstreamSettings
from ocspproxy.upstream.proxy import ProxyError, ProxyRoute

__all__ = ["Config", "ConfigError", "default_state_dir", "load_config", "parse_listen", "proxy_route"]

# What a reload (SIGHUP, a certificate file changed) applies at once; the rest waits for a restart.
_RELOADABLE = ("certs", "issuers", "apache_config", "issuer_urls")
DEFAULT_PORT = 2560  # after RFC 2560, the first OCSP RFC; unprivileged


def _passwd_home(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None


def _usable_home(path: str) -> bool:
    return os.path.isabs(path) and path != "/" and os.path.isdir(path)


def default_state_dir(
    env: Mapping[str, str] = os.environ,
    *,
    root: bool | None = None,
    passwd_home: Callable[[int], str | None] | None = None,
) -> Path:
    """systemd's $STATE_DIRECTORY, else /var/lib/ocspproxy for root, else the XDG per-user one:
    $XDG_STATE_HOME/ocspproxy, else ~/.local/state/ocspproxy with ~ from $HOME or, when that is not
    set, from the password database.

    The root default is where the systemd unit's StateDirectory= lives, so `ocspproxy apache scan`
    run by an administrator finds the service's staples. Raises ConfigError when there is no home to
    put it in (a guessed directory the service cannot create would only run it from memory).
    """
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if root if root is not None else os.geteuid() == 0:
        return Path("/var/lib/ocspproxy")
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "ocspproxy"
    home = env.get("HOME", "")
    if os.path.isabs(home) and home != "/":
        return Path(home) / ".local" / "state" / "ocspproxy"
    uid = os.geteuid()
    account = (passwd_home or _passwd_home)(uid)
    if account is not None and _usable_home(account):
        return Path(account) / ".local" / "state" / "ocspproxy"
    if account is None:
        why = f"user {uid} has no entry in the password database"
    else:
        what = "the root directory" if account == "/" else "not a directory"
        why = f"the password database gives user {uid} the home directory {account}, {what}"
    unset = "HOME is not set" if not home else f"HOME is {home}"
    raise ConfigError("state_dir", f"no default: {unset} and {why}; give --state-dir DIR")


@dataclass(frozen=True, kw_only=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    state_dir: Path = field(default_factory=default_state_dir)
    certs: tuple[str, ...] = ()
    issuers: tuple[Path, ...] = ()
    apache_config: Path | None = None
    issuer_urls: tuple[tuple[Path, str], ...] = ()  # [[issuer]] certificate -> ocsp_url override
    issuer_proxies: tuple[tuple[Path, str], ...] = ()  # [[issuer]] certificate -> upstream_proxy ("": none)
    log_level: str = "info"
    log_format: str = "auto"
    # [server]
    answer_budget: float = 3.0
    max_request_bytes: int = 16 * 1024
    max_connections: int = 1024
    request_timeout: float = 5.0
    connection_lifetime: float = 15.0
    max_tracked_requests: int = 10_000
    fetch_rate_per_issuer: float = 5.0
    fetch_burst_per_issuer: int = 20
    watch_interval: float = 5.0
    shutdown_timeout: float = 5.0
    workers: int = 1  # processes answering hits on the port; 1 = the main process alone
    # [cache]
    memory_max_entries: int = 1_000_000
    negative_ttl: float = 30.0
    # thisUpdate may be this far in the future; also what the Apache snippet sets as
    # SSLStaplingResponseTimeSkew, so nothing is served that mod_ssl would refuse.
    skew: float = 60.0
    # A response without nextUpdate is served this long after its thisUpdate.
    validity_without_next_update: float = 3600.0
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    # [bundle]: warn when an imported staple's nextUpdate is closer than this (seconds); where the
    # service writes the want file (after each load and reload, and on SIGUSR1), if anywhere
    bundle_warn_margin: float = 2 * 86400.0
    bundle_want_file: Path | None = None

    def reloaded(self, new: Config) -> tuple[Config, list[str]]:
        """This configuration with what a reload applies at once taken from new (certificate
        settings), and the names of the other keys that differ: they take effect at a restart."""
        changed = [f.name for f in fields(Config) if getattr(self, f.name) != getattr(new, f.name)]
        later = [name for name in changed if name not in _RELOADABLE]
        return replace(self, **{name: getattr(new, name) for name in _RELOADABLE}), later

    @property
    def rules(self) -> Rules:
        """The configured parts of validation."""
        return Rules(
            skew=timedelta(seconds=self.skew),
            without_next_update=timedelta(seconds=self.validity_without_next_update),
        )


def parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(key, f"host must be an IP address or localhost, got {host!r}") from None
    return host, int(port)


# section -> key -> (Config attribute or "section.attribute", checker)
_SCHEMA: dict[str, dict[str, tuple[str, Callable[[str, Any], Any]]]] = {
    "": {
        "listen": ("listen", _string),
        "state_dir": ("state_dir", _string),
        "certs": ("certs", _strings),
        "issuers": ("issuers", _strings),
        "apache_config": ("apache_config", _string),
        "log_level": ("log_level", _choice("debug", "info", "warning", "error")),
        "log_format": ("log_format", _choice("auto", "json", "console")),
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
_PATH_KEYS = {"state_dir", "apache_config", "upstream.proxy_auth_file", "bundle.want_file"}


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _apply(values: dict[str, Any], sub: dict[str, dict[str, Any]], attr: str, value: Any) -> None:
    if "." in attr:
        section, name = attr.split(".", 1)
        sub.setdefault(section, {})[name] = value
    else:
        values[attr] = value


def _from_table(data: Mapping[str, Any], base: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    values: dict[str, Any] = {}
    sub: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key == "issuer":
            values["issuer_urls"], values["issuer_proxies"] = _issuer_tables(value, base)
        elif isinstance(value, dict) and key in _SCHEMA and key != "":
            for name, item in value.items():
                if name not in _SCHEMA[key]:
                    raise ConfigError(f"{key}.{name}", "unknown key")
                attr, check = _SCHEMA[key][name]
                checked = check(f"{key}.{name}", item)
                _apply(
                    values, sub, attr, _resolve(base, checked) if f"{key}.{name}" in _PATH_KEYS else checked
                )
        elif key in _SCHEMA[""]:
            attr, check = _SCHEMA[""][key]
            checked = check(key, value)
            if key in _PATH_KEYS:
                checked = _resolve(base, checked)
            elif key in ("certs", "issuers"):
                checked = tuple(str(_resolve(base, v)) for v in checked)
            _apply(values, sub, attr, checked)
        else:
            raise ConfigError(key, "unknown key")
    return values, sub


def _issuer_tables(
    value: Any, base: Path
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
        cert = _resolve(base, _string(f"{where}.certificate", table.get("certificate")))
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


def proxy_route(config: Config) -> ProxyRoute:
    """The forward proxies of the configuration, with the credentials file read now. Raises
    ConfigError."""
    settings = config.upstream
    try:
        return ProxyRoute.from_settings(
            default=settings.proxy,
            issuers=dict(config.issuer_proxies),
            use_env=settings.use_env_proxy,
            auth_file=settings.proxy_auth_file,
        )
    except ProxyError as exc:
        raise ConfigError("upstream", str(exc)) from exc


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read the TOML file (if any), then apply command-line overrides (already typed)."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
        base = path.parent.resolve()
    values, sub = _from_table(data, base)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    listen = values.pop("listen", None)
    if listen is not None:
        values["listen_host"], values["listen_port"] = parse_listen(listen)
    if "issuers" in values:
        values["issuers"] = tuple(Path(p) for p in values["issuers"])
    # Computed here, not as the dataclass default alone: a missing home is a ConfigError the
    # callers report on one line.
    values["state_dir"] = Path(values["state_dir"]) if "state_dir" in values else default_state_dir()
    for name in ("apache_config", "bundle_want_file"):
        if name in values:
            values[name] = Path(values[name])
    config = Config(**values)
    config = replace(
        config,
        refresh=replace(config.refresh, **sub.get("refresh", {})),
        upstream=replace(config.upstream, **_paths(sub.get("upstream", {}), "proxy_auth_file")),
    )
    _check(config)
    return config


def _paths(values: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: Path(v) if k in names else v for k, v in values.items()}


def _check(config: Config) -> None:
    if not 1 <= config.workers <= 64:
        raise ConfigError("server.workers", f"must be between 1 and 64, got {config.workers}")
    if config.refresh.retry_initial > config.refresh.retry_max:
        raise ConfigError("refresh.retry_initial", "must not exceed refresh.retry_max")
    if config.refresh.fraction + config.refresh.jitter >= 1 - config.refresh.margin:
        raise ConfigError("refresh.fraction", "fraction + jitter must stay below 1 - margin")
    if config.connection_lifetime <= config.answer_budget + config.request_timeout:
        raise ConfigError("server.connection_lifetime", "must exceed answer_budget + request_timeout")
    if config.upstream.connect_timeout > config.upstream.total_timeout:
        raise ConfigError("upstream.connect_timeout", "must not exceed upstream.total_timeout")
