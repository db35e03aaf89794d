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

from ocspproxy.admin.address import DEFAULT_ADMIN, AdminAddress, admin_beside
from ocspproxy.core.policy import RefreshPolicy
from ocspproxy.core.validate import Rules
from ocspproxy.schema import PATH_KEYS, SCHEMA, ConfigError, admin_address, issuer_tables, shared_store
from ocspproxy.shared.settings import SharedSettings
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
    admin_listen: AdminAddress | None = DEFAULT_ADMIN  # None: no admin listener, no metrics kept
    # [admin]
    critical_margin: float = 86400.0  # a staple expiring sooner is critical (capped, admin/status.py)
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
    shared: SharedSettings | None = None  # shared_store: the fleet's Redis
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
            values["issuer_urls"], values["issuer_proxies"] = issuer_tables(value, base, _resolve)
        elif key == "shared_store":
            values["shared"] = shared_store(value, base)
        elif isinstance(value, dict) and key in SCHEMA and key != "":
            for name, item in value.items():
                if name not in SCHEMA[key]:
                    raise ConfigError(f"{key}.{name}", "unknown key")
                attr, check = SCHEMA[key][name]
                checked = check(f"{key}.{name}", item)
                _apply(
                    values, sub, attr, _resolve(base, checked) if f"{key}.{name}" in PATH_KEYS else checked
                )
        elif key in SCHEMA[""]:
            attr, check = SCHEMA[""][key]
            checked = check(key, value)
            if key in PATH_KEYS:
                checked = _resolve(base, checked)
            elif key in ("certs", "issuers"):
                checked = tuple(str(_resolve(base, v)) for v in checked)
            _apply(values, sub, attr, checked)
        else:
            raise ConfigError(key, "unknown key")
    return values, sub


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
        if value is None:
            continue
        if key == "shared_store":
            values["shared"] = shared_store(value, Path.cwd(), from_command_line=True)
        elif key == "admin_listen":
            values[key] = admin_address("--admin-listen", value)
        else:
            values[key] = value
    listen = values.pop("listen", None)
    if listen is not None:
        values["listen_host"], values["listen_port"] = parse_listen(listen)
    if "admin_listen" not in values:
        values["admin_listen"] = admin_beside(values.get("listen_port", DEFAULT_PORT))
    if "issuers" in values:
        values["issuers"] = tuple(Path(p) for p in values["issuers"])
    # Computed here, not as the dataclass default alone: a missing home is a ConfigError the
    # callers report on one line.
    values["state_dir"] = Path(values["state_dir"]) if "state_dir" in values else default_state_dir()
    for name in ("apache_config", "bundle_want_file"):
        if name in values:
            values[name] = Path(values[name])
    config = Config(**values)
    upstream: dict[str, Any] = {
        k: Path(v) if k == "proxy_auth_file" else v for k, v in sub.get("upstream", {}).items()
    }
    config = replace(
        config,
        refresh=replace(config.refresh, **sub.get("refresh", {})),
        upstream=replace(config.upstream, **upstream),
    )
    _check(config)
    return config


def _check(config: Config) -> None:
    if not 1 <= config.workers <= 64:
        raise ConfigError("server.workers", f"must be between 1 and 64, got {config.workers}")
    if config.refresh.retry_initial > config.refresh.retry_max:
        raise ConfigError("refresh.retry_initial", "must not exceed refresh.retry_max")
    if config.refresh.fraction + config.refresh.jitter >= 1 - config.refresh.margin:
        raise ConfigError("refresh.fraction", "fraction + jitter must stay below 1 - margin")
    if config.connection_lifetime <= config.answer_budget + config.request_timeout:
        raise ConfigError("server.connection_lifetime", "must exceed answer_budget + request_timeout")
    admin = config.admin_listen
    if admin is not None and admin.overlaps(config.listen_host, config.listen_port):
        raise ConfigError("admin_listen", f"{admin.url} is the OCSP port; give the admin listener its own")
    if config.upstream.connect_timeout > config.upstream.total_timeout:
        raise ConfigError("upstream.connect_timeout", "must not exceed upstream.total_timeout")
    shared = config.shared
    if shared is not None and shared.password_file is not None:
        try:
            shared.password()
        except OSError as exc:
            raise ConfigError(
                "shared_store.password_file", f"cannot read {shared.password_file}: {exc.strerror}"
            ) from None
    if shared is not None and shared.lease_ttl <= config.upstream.total_timeout:
        # A lease that ends before the CA's answer can arrive lets a second instance ask.
        raise ConfigError("shared_store.lease_ttl", "must exceed upstream.total_timeout")
