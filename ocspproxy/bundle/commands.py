"""``ocspproxy bundle want | fetch | import``: the CLI edge (arguments, output, exit statuses).

Exit statuses: ``want`` 0 written, 2 unusable input (configuration) or not written. ``fetch`` 0 every
certificate got a valid response, 1 some got nothing usable (the bundle holds the rest), 2 the want
file is unusable or the bundle cannot be written. ``import`` 0 every entry imported (or already
held), 1 some skipped (each reported with why), 2 unusable (not a bundle, a newer format, a
configuration error, nothing in it usable, or the hand-over to the service failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocspproxy.bundle.fetch import ERROR, Got, fetch_want, write_bundle
from ocspproxy.bundle.format import BundleError
from ocspproxy.bundle.importer import (
    IMPORTED,
    SKIPPED,
    UNCHANGED,
    ImportReport,
    check_bundle,
    hand_over,
    held,
)
from ocspproxy.bundle.want import read_want, wanted, write_want
from ocspproxy.certs.catalog import Catalog
from ocspproxy.certs.index import read_index
from ocspproxy.certs.inventory import Inventory
from ocspproxy.certs.sources import certificate_sources, inventory_steps
from ocspproxy.config import Config, ConfigError, load_config, proxy_route
from ocspproxy.core.validate import Rules
from ocspproxy.steps import run_steps
from ocspproxy.upstream.http import Fetcher, UpstreamSettings

__all__ = ["add_parser", "run"]


def _now() -> datetime:
    return datetime.now(UTC)


def _err(text: str) -> None:
    print(f"ocspproxy bundle: {text}", file=sys.stderr)


def add_parser(commands: Any) -> None:
    bundle = commands.add_parser("bundle", help="carry staples across an air gap: want, fetch, import")
    actions = bundle.add_subparsers(dest="action", required=True)
    want = actions.add_parser("want", help="write what this side needs fetched (inside)")
    _inside_flags(want)
    want.add_argument("--out", type=Path, required=True, metavar="FILE", help="the want file to write")
    fetch = actions.add_parser(
        "fetch",
        help="fetch and validate responses for a want file (connected side)",
        epilog="exit status: 0 every certificate got a valid response; 1 some got nothing usable "
        "(the bundle holds the rest); 2 the want file is unusable or the bundle cannot be written",
    )
    fetch.add_argument("want", type=Path, metavar="WANT", help="the want file")
    fetch.add_argument("--out", type=Path, required=True, metavar="BUNDLE", help="the bundle to write")
    fetch.add_argument(
        "--via", metavar="URL", help="ask this OCSP responder (e.g. an ocspproxy) instead of each CA"
    )
    fetch.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML configuration ([upstream]: timeouts, proxy)"
    )
    fetch.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="requests at once per responder (8)"
    )
    fetch.add_argument("--quiet", action="store_true", help="report only certificates that are not good")
    fetch.add_argument("--json", action="store_true", help="print one JSON object")
    imp = actions.add_parser(
        "import",
        help="validate a bundle against this side's issuers and hand it to the service (inside)",
        epilog="exit status: 0 every entry imported or already held; 1 some skipped; 2 unusable "
        "(not a bundle, a newer format, nothing usable in it, a configuration error)",
    )
    imp.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle to import")
    _inside_flags(imp)
    imp.add_argument("--quiet", action="store_true", help="report only entries that were skipped")


def _inside_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration, as for serve")
    parser.add_argument("--cert", action="append", metavar="PATH", help="certificate PEM, as for serve")
    parser.add_argument("--issuers", action="append", metavar="PATH", help="CA certificates, as for serve")
    parser.add_argument(
        "--apache-config", type=Path, metavar="FILE", help="Apache's configuration, as for serve"
    )
    parser.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="the service's state directory, as for serve"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace, *, now: Callable[[], datetime] = _now) -> int:
    try:
        if args.action == "want":
            return _want(args, now)
        if args.action == "fetch":
            return _fetch(args, now)
        return _import(args, now)
    except ConfigError as exc:
        _err(f"configuration error: {exc}")
        return 2


def _config(args: argparse.Namespace) -> Config:
    def absolute(paths: list[str] | None) -> tuple[str, ...] | None:
        return tuple(str(Path(p).expanduser().absolute()) for p in paths) if paths else None

    return load_config(
        args.config,
        {
            "state_dir": args.state_dir.resolve() if args.state_dir else None,
            "certs": absolute(args.cert),
            "issuers": absolute(args.issuers),
            "apache_config": args.apache_config.resolve() if args.apache_config else None,
        },
    )


def inventory_of(config: Config) -> Inventory:
    """The certificates the configuration names, as ``serve`` reads them; the state directory's
    certificate index is read (it spares parsing unchanged files) but never written: that is the
    service's."""
    sources = certificate_sources(config)
    return run_steps(inventory_steps(config, sources.certs, read_index(config.state_dir)))


def _want(args: argparse.Namespace, now: Callable[[], datetime]) -> int:
    inventory = inventory_of(_config(args))
    entries = wanted(inventory)
    try:
        write_want(args.out, entries, now())
    except OSError as exc:
        _err(f"cannot write {args.out}: {exc.strerror or exc}")
        return 2
    without = sum(1 for e in entries if e.url is None)
    if args.json:
        print(
            json.dumps(
                {
                    "want": str(args.out),
                    "certificates": len(entries),
                    "without_url": without,
                    "problems": inventory.problems,
                }
            )
        )
    else:
        for problem in inventory.problems:
            print(f"problem: {problem}")
        note = f" ({without} without an OCSP URL: fetch them with --via)" if without else ""
        print(f"want: {len(entries)} certificates{note} -> {args.out}")
    return 0 if entries or not inventory.problems else 2


def _fetch(args: argparse.Namespace, now: Callable[[], datetime]) -> int:
    if args.via is not None and urlsplit(args.via).scheme not in ("http", "https"):
        _err(f"--via: expected an http:// or https:// URL, got {args.via!r}")
        return 2
    try:
        want = read_want(args.want)
    except BundleError as exc:
        _err(str(exc))
        return 2
    config = load_config(args.config) if args.config else None
    upstream = config.upstream if config is not None else UpstreamSettings()
    settings = replace(upstream, max_per_upstream=max(1, args.concurrency))
    route = proxy_route(config) if config is not None else None
    rules = config.rules if config is not None else Rules()

    async def go() -> list[Got]:
        fetcher = Fetcher(settings, route)
        await fetcher.start()
        try:
            return await fetch_want(want, fetcher=fetcher, rules=rules, clock=now, via=args.via)
        finally:
            await fetcher.close()

    got = asyncio.run(go())
    try:
        written = write_bundle(args.out, got, now())
    except OSError as exc:
        _err(f"cannot write {args.out}: {exc.strerror or exc}")
        return 2
    failed = [g for g in got if not g.usable]
    counts = {r: sum(1 for g in got if g.result == r) for r in ("good", "revoked", "unknown", ERROR)}
    if args.json:
        print(
            json.dumps(
                {
                    "bundle": str(args.out),
                    "written": written,
                    **counts,
                    "problems": want.problems,
                    "certificates": [_got_json(g) for g in got],
                }
            )
        )
    else:
        for problem in want.problems:
            print(f"problem: {problem}")
        for g in got:
            if not args.quiet or g.result != "good":
                print(_got_line(g))
        print(
            f"bundle: {written} responses ({counts['good']} good, {counts['revoked']} revoked, "
            f"{counts['unknown']} unknown), {counts[ERROR]} errors -> {args.out}"
        )
    return 1 if failed or want.problems else 0


def _got_line(g: Got) -> str:
    if g.staple is None:
        return f"{g.result:8} {g.item.key}  {g.item.subject}: {g.reason}"
    return f"{g.result:8} {g.item.key}  {g.item.subject}  (nextUpdate {g.staple.next_update.isoformat()})"


def _got_json(g: Got) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cert_id": str(g.item.key),
        "subject": g.item.subject,
        "result": g.result,
        "reason": g.reason,
        "asked": g.asked,
    }
    if g.staple is not None:
        out.update(this_update=g.staple.this_update.isoformat(), next_update=g.staple.next_update.isoformat())
    return out


def _import(args: argparse.Namespace, now: Callable[[], datetime]) -> int:
    config = _config(args)
    catalog = Catalog(inventory_of(config))
    rules, moment = config.rules, now()
    try:
        report = check_bundle(
            args.bundle,
            catalog=catalog,
            rules=rules,
            now=moment,
            current=held(config.state_dir, rules, moment, catalog),
        )
    except BundleError as exc:
        _err(str(exc))
        return 2
    try:
        spooled = hand_over(config.state_dir, report.entries, moment)
    except OSError as exc:
        _err(f"cannot hand the bundle over in {config.state_dir}: {exc.strerror or exc}")
        return 2
    earliest = report.earliest_next_update()
    margin = timedelta(seconds=config.bundle_warn_margin)
    soon = earliest is not None and bool(margin) and earliest - moment < margin
    _print_import(args, report, spooled, earliest, soon, margin)
    usable = report.count(IMPORTED) + report.count(UNCHANGED)
    if report.entries and not usable:
        return 2
    return 1 if report.count(SKIPPED) or report.damage else 0


def _print_import(
    args: argparse.Namespace,
    report: ImportReport,
    spooled: Path | None,
    earliest: datetime | None,
    soon: bool,
    margin: timedelta,
) -> None:
    counts = {r: report.count(r) for r in (IMPORTED, UNCHANGED, SKIPPED)}
    if args.json:
        entries = []
        for e in report.entries:
            item: dict[str, Any] = {
                "cert_id": e.name,
                "subject": e.subject,
                "result": e.result,
                "reason": e.reason,
            }
            if e.staple is not None:
                item.update(
                    status=str(e.staple.status),
                    this_update=e.staple.this_update.isoformat(),
                    next_update=e.staple.next_update.isoformat(),
                )
            entries.append(item)
        print(
            json.dumps(
                {
                    "bundle": str(report.path),
                    "version": report.version,
                    "created": report.created.isoformat() if report.created else None,
                    **counts,
                    "damage": report.damage,
                    "spooled": str(spooled) if spooled else None,
                    "earliest_next_update": earliest.isoformat() if earliest else None,
                    "expires_soon": soon,
                    "entries": entries,
                }
            )
        )
    else:
        for e in report.entries:
            if e.result != SKIPPED and args.quiet:
                continue
            status = str(e.staple.status) if e.staple is not None and e.result != SKIPPED else ""
            print(f"{e.result:9} {status:7} {e.name}  {e.subject}: {e.reason}")
        for damage in report.damage:
            print(f"damaged: {damage}")
        where = f"; handed to the service in {spooled}" if spooled else ""
        held_already, skipped = counts[UNCHANGED], counts[SKIPPED]
        print(f"import: {counts[IMPORTED]} imported, {held_already} already held, {skipped} skipped{where}")
    if soon and earliest is not None:
        _err(
            f"warning: the earliest nextUpdate among these staples is {earliest.isoformat()}, within "
            f"the warning margin of {margin.total_seconds() / 3600:g} h: carry the next bundle in before then"
        )
