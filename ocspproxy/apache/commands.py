"""``ocspproxy apache scan | snippet | install``: the I/O edge around scan, snippet and install.

Each command returns its exit status: 0 done, 1 the change was refused by Apache's config test (and
undone) or the reload failed, 2 the input was unusable (nothing found, nothing read, nothing changed).
``scan``: 0 every TLS site staples a good, current response through ocspproxy, 1 at least one needs
attention (``scan.attention``), 2 the input was unusable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from ocspproxy.apache.config import ApacheConfig, ApacheConfigError, read_apache_config
from ocspproxy.apache.ctl import (
    USUAL_MAIN_FILES,
    Layout,
    Runner,
    Tools,
    compiled_main_config,
    detect_layout,
    discover_tools,
    find_main_config,
    run_command,
)
from ocspproxy.apache.flow import InstallRequest, run_install
from ocspproxy.apache.render import render_text, to_json
from ocspproxy.apache.scan import attention, scan_sites
from ocspproxy.apache.snippet import SnippetError, check_proxy_url, proxy_url_for, render_snippet
from ocspproxy.certs.files import NotACertificate, load_certificates
from ocspproxy.config import Config, ConfigError, load_config

__all__ = ["Context", "install_command", "scan_command", "snippet_command"]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True)
class Context:
    """Everything the commands touch outside their arguments (replaced in tests)."""

    out: Callable[[str], None] = print
    err: Callable[[str], None] = _stderr
    runner: Runner = run_command
    tools: Tools | None = None  # None: look for Apache's programs
    environment: Mapping[str, str] | None = None  # for ${VAR} in Apache's config; None: os.environ
    now: Callable[[], datetime] = _now

    def apache_tools(self) -> Tools:
        if self.tools is None:
            self.tools = discover_tools()
        return self.tools


class _Fail(Exception):
    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _config(config_file: Path | None, state_dir: Path | None = None) -> Config:
    overrides = {"state_dir": state_dir.resolve()} if state_dir is not None else None
    try:
        return load_config(config_file, overrides)
    except ConfigError as exc:
        raise _Fail(f"ocspproxy: configuration error: {exc}") from exc


def _locate(apache_config: Path | None, ctx: Context) -> tuple[Path, str]:
    if apache_config is not None:
        return Path(os.path.abspath(apache_config)), "given with --apache-config"
    found = find_main_config(tools=ctx.apache_tools(), runner=ctx.runner)
    if found is None:
        tried = ", ".join(["apachectl -V", "apache2ctl -V", "httpd -V", *map(str, USUAL_MAIN_FILES)])
        raise _Fail(f"ocspproxy: Apache's configuration not found (tried {tried}); give --apache-config FILE")
    return found


def _read(main_file: Path, ctx: Context) -> ApacheConfig:
    try:
        return read_apache_config(main_file, environment=ctx.environment)
    except (ApacheConfigError, OSError) as exc:
        raise _Fail(f"ocspproxy: cannot read Apache's configuration: {exc}") from exc


def _proxy_url(proxy_url: str | None, config: Config, ctx: Context) -> str:
    url = proxy_url or proxy_url_for(config.listen_host, config.listen_port)
    try:
        warnings = check_proxy_url(url)
    except SnippetError as exc:
        raise _Fail(f"ocspproxy: {exc}") from exc
    for warning in warnings:
        ctx.err(f"ocspproxy: warning: {warning}")
    return url


def _guarded(run: Callable[[], int], ctx: Context) -> int:
    try:
        return run()
    except _Fail as exc:
        ctx.err(str(exc))
        return exc.status


def _issuer_overrides(config: Config, ctx: Context) -> list[tuple[x509.Certificate, str]]:
    out: list[tuple[x509.Certificate, str]] = []
    for path, url in config.issuer_urls:
        try:
            out += [(cert, url) for cert in load_certificates(path)]
        except (OSError, ValueError) as exc:
            what = exc.what if isinstance(exc, NotACertificate) else f"unreadable ({exc})"
            ctx.err(f"ocspproxy: warning: [[issuer]] certificate {path}: {what}")
    return out


def scan_command(
    *,
    apache_config: Path | None,
    state_dir: Path | None,
    config_file: Path | None,
    as_json: bool,
    ctx: Context | None = None,
) -> int:
    ctx = ctx or Context()

    def run() -> int:
        config = _config(config_file, state_dir)
        main_file, how = _locate(apache_config, ctx)
        apache = _read(main_file, ctx)
        reports = scan_sites(
            apache.sites,
            state_dir=config.state_dir,
            proxy_url=proxy_url_for(config.listen_host, config.listen_port),
            now=ctx.now(),
            rules=config.rules,
            overrides=_issuer_overrides(config, ctx),
        )
        if as_json:
            ctx.out(json.dumps(to_json(reports), indent=2))
        else:
            text = render_text(
                reports,
                main_file=main_file,
                found_how=how,
                files_read=len(apache.files_read),
                state_dir=config.state_dir,
            )
            ctx.out(text.rstrip("\n"))
        return 1 if any(attention(r) for r in reports) else 0

    return _guarded(run, ctx)


def _certificate_count(apache: ApacheConfig) -> int:
    return max(1, len({site.certificate_file for site in apache.sites}))


def snippet_command(
    *,
    proxy_url: str | None,
    config_file: Path | None,
    apache_config: Path | None = None,
    ctx: Context | None = None,
) -> int:
    ctx = ctx or Context()

    def run() -> int:
        config = _config(config_file)
        url = _proxy_url(proxy_url, config, ctx)
        layout, count = Layout.OTHER, 1
        try:
            main_file, _ = _locate(apache_config, ctx)
            apache = _read(main_file, ctx)
            layout, count = detect_layout(main_file), _certificate_count(apache)
        except _Fail as exc:
            if apache_config is not None:
                raise
            ctx.err(f"{exc} (using a generic stapling cache path and size)")
        text = render_snippet(
            proxy_url=url,
            layout=layout,
            certificates=count,
            answer_budget=config.answer_budget,
            skew=config.skew,
        )
        ctx.out(text.rstrip("\n"))
        return 0

    return _guarded(run, ctx)


def install_command(
    *,
    apache_config: Path | None,
    proxy_url: str | None,
    config_file: Path | None,
    dry_run: bool,
    reload: bool,
    ctx: Context | None = None,
) -> int:
    ctx = ctx or Context()

    def run() -> int:
        config = _config(config_file)
        url = _proxy_url(proxy_url, config, ctx)
        main_file, how = _locate(apache_config, ctx)
        apache = _read(main_file, ctx)
        ctx.out(f"Apache configuration: {main_file} ({how}; {len(apache.files_read)} files read)")
        tools = ctx.apache_tools()
        compiled = compiled_main_config(tools=tools, runner=ctx.runner)
        request = InstallRequest(
            main_file=main_file,
            apache=apache,
            proxy_url=url,
            answer_budget=config.answer_budget,
            skew=config.skew,
            tools=tools,
            compiled=compiled[0] if compiled else None,
            dry_run=dry_run,
            reload=reload,
        )
        return run_install(
            request,
            runner=ctx.runner,
            out=ctx.out,
            err=ctx.err,
            reread=lambda: read_apache_config(main_file, environment=ctx.environment),
        )

    return _guarded(run, ctx)
