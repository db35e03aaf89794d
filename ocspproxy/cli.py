"""Command line: arguments -> Config -> run. Nothing else lives here."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from ocspproxy import __version__
from ocspproxy.config import Config, ConfigError, load_config
from ocspproxy.daemon import Daemon
from ocspproxy.log import configure_logging

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
        "--state-dir", type=Path, help="where staples persist ($STATE_DIRECTORY, else per-user)"
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
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["auto", "json", "console"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2


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
    }
    try:
        config = load_config(args.config, overrides)
        configure_logging(level=config.log_level, fmt=config.log_format)
        return asyncio.run(_run(config))
    except ConfigError as exc:
        print(f"ocspproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _run(config: Config) -> int:
    # The daemon is built inside the loop: its asyncio primitives belong to it.
    return await Daemon(config).run()
