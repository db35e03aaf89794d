"""Command line: arguments -> Config -> run. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ocspproxy import __version__
from ocspproxy.admin import commands as admin_commands
from ocspproxy.apache import commands as apache_commands
from ocspproxy.app import App
from ocspproxy.bundle import commands as bundle_commands
from ocspproxy.config import Config, ConfigError, load_config
from ocspproxy.log import configure_logging
from ocspproxy.loop import event_loop_runner

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocspproxy", description="OCSP staple cache and responder for Apache httpd"
    )
    parser.add_argument("--version", action="version", version=f"ocspproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the responder (flags override the config file)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:2560)")
    serve.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where staples persist (default: $STATE_DIRECTORY, else /var/lib/ocspproxy for root, "
        "else $XDG_STATE_HOME/ocspproxy, else ~/.local/state/ocspproxy)",
    )
    serve.add_argument(
        "--cert",
        action="append",
        metavar="PATH",
        help="certificate PEM (leaf, then chain); globs allowed; repeatable",
    )
    serve.add_argument(
        "--issuers", action="append", metavar="PATH", help="PEM bundle of CA certificates; repeatable"
    )
    serve.add_argument(
        "--apache-config",
        type=Path,
        metavar="FILE",
        help="keep stapled every certificate in this Apache config",
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="processes answering cache hits on the port (default 1)"
    )
    serve.add_argument(
        "--shared-store",
        metavar="URL",
        help="the fleet's Redis: redis://host:port/db, rediss://..., unix:///path, "
        "sentinel://host:port[,host:port]/service (a password from the config file or "
        "$OCSPPROXY_SHARED_STORE_PASSWORD, never here)",
    )
    serve.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="admin listener (metrics, health, status): HOST:PORT, unix:/path, or '' for off "
        "(default 127.0.0.1 and the port after --listen's: 2561)",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["auto", "json", "console"])
    _apache_parser(commands.add_parser("apache", help="set up Apache httpd to staple through ocspproxy"))
    _admin_parsers(commands)
    bundle_commands.add_parser(commands)
    return parser


def _admin_parsers(commands: Any) -> None:
    admin_help = "the admin listener: http://HOST:PORT or unix:/path (default: admin_listen of --config)"
    status = commands.add_parser(
        "status",
        help="is every staple fine, and if not why (a Nagios/Icinga check as it is)",
        epilog="exit status: 0 every staple fine, 1 warning (a refresh failing, time left), 2 critical "
        "(no staple, expired or expiring within critical_margin, revoked, unknown), 3 cannot tell "
        "(service unreachable: the state directory is read instead, and 2 is still given for a "
        "critical staple)",
    )
    refresh = commands.add_parser(
        "refresh", help="ask the running service to fetch these staples now, and print what each gave"
    )
    for sub in (status, refresh):
        sub.add_argument("--admin", metavar="URL", help=admin_help)
        sub.add_argument("--config", type=Path, metavar="FILE", help="ocspproxy's TOML configuration")
        sub.add_argument("--state-dir", type=Path, metavar="DIR", help="the state directory (as for serve)")
        sub.add_argument("--json", action="store_true", help="print JSON")
    which = refresh.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every configured certificate with an OCSP URL")
    which.add_argument("certfile", nargs="*", default=[], help="certificate files, as configured")


def _apache_parser(apache: argparse.ArgumentParser) -> None:
    actions = apache.add_subparsers(dest="action", required=True)
    config_help = "ocspproxy's TOML configuration (listen, state_dir, answer_budget)"
    apache_help = "Apache's main configuration file (default: from apachectl -V, or the usual places)"
    scan = actions.add_parser(
        "scan",
        help="list TLS virtual hosts and whether they can staple",
        epilog="exit status: 0 every TLS site staples a good, current response through ocspproxy; "
        "1 at least one needs attention (a revoked, expired, invalid, missing or unreadable staple, "
        'stapling off or not through ocspproxy, or a PROBLEM line; "attention" in --json); '
        "2 the input was unusable (a configuration not found or unreadable)",
    )
    scan.add_argument("--apache-config", type=Path, metavar="FILE", help=apache_help)
    scan.add_argument("--state-dir", type=Path, help="ocspproxy's state directory (as for serve)")
    scan.add_argument("--config", type=Path, metavar="FILE", help=config_help)
    scan.add_argument("--json", action="store_true", help="print a JSON array, one object per TLS site")
    snippet = actions.add_parser("snippet", help="print Apache configuration to staple through ocspproxy")
    snippet.add_argument("--proxy-url", metavar="URL", help="ocspproxy's http:// URL (default: from listen)")
    snippet.add_argument("--config", type=Path, metavar="FILE", help=config_help)
    snippet.add_argument("--apache-config", type=Path, metavar="FILE", help=apache_help)
    install = actions.add_parser(
        "install", help="write and enable that configuration, test it, undo on failure"
    )
    install.add_argument("--apache-config", type=Path, metavar="FILE", help=apache_help)
    install.add_argument("--proxy-url", metavar="URL", help="ocspproxy's http:// URL (default: from listen)")
    install.add_argument("--config", type=Path, metavar="FILE", help=config_help)
    install.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    install.add_argument("--reload", action="store_true", help="reload Apache gracefully after the test")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "apache":
        return _apache(args)
    if args.command == "status":
        return admin_commands.status_command(
            admin=args.admin, config_file=args.config, state_dir=args.state_dir, as_json=args.json
        )
    if args.command == "refresh":
        return admin_commands.refresh_command(
            admin=args.admin,
            config_file=args.config,
            state_dir=args.state_dir,
            everything=args.all,
            files=args.certfile,
            as_json=args.json,
        )
    if args.command == "bundle":
        return bundle_commands.run(args)
    return 2


def _apache(args: argparse.Namespace) -> int:
    if args.action == "scan":
        return apache_commands.scan_command(
            apache_config=args.apache_config,
            state_dir=args.state_dir,
            config_file=args.config,
            as_json=args.json,
        )
    if args.action == "snippet":
        return apache_commands.snippet_command(
            proxy_url=args.proxy_url, config_file=args.config, apache_config=args.apache_config
        )
    return apache_commands.install_command(
        apache_config=args.apache_config,
        proxy_url=args.proxy_url,
        config_file=args.config,
        dry_run=args.dry_run,
        reload=args.reload,
    )


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        "listen": args.listen,
        "state_dir": args.state_dir.resolve() if args.state_dir else None,
        "certs": tuple(str(Path(c).expanduser().absolute()) for c in args.cert) if args.cert else None,
        "issuers": tuple(str(Path(c).expanduser().absolute()) for c in args.issuers)
        if args.issuers
        else None,
        "apache_config": args.apache_config.resolve() if args.apache_config else None,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "workers": args.workers,
        "shared_store": args.shared_store,
        "admin_listen": args.admin_listen,
    }
    try:
        config = load_config(args.config, overrides)
        configure_logging(level=config.log_level, fmt=config.log_format)
        return event_loop_runner()(_run(config, lambda: load_config(args.config, overrides)))
    except ConfigError as exc:
        print(f"ocspproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _run(config: Config, reread: Callable[[], Config]) -> int:
    # The app is built inside the loop: its asyncio primitives belong to it.
    return await App(config, reread=reread).run()
