"""The rows of ``/status.json`` and of ``ocspproxy status``: from the running service (its catalog,
cache, scheduler and fetch history, a slice at a time), or, with no service to ask, from the
configuration and the state directory (read only: nothing is written there)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509 import ocsp as x509_ocsp

from ocspproxy.admin.history import History
from ocspproxy.admin.status import Row, judge, orphan_row, sort_rows
from ocspproxy.cache.memory import Cache
from ocspproxy.certs.index import CertIndex
from ocspproxy.certs.inventory import Inventory, Target
from ocspproxy.certs.sources import certificate_sources, inventory_steps
from ocspproxy.config import Config
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import ExpiredResponse, InvalidResponse, Rules
from ocspproxy.steps import Steps, run_steps
from ocspproxy.store.atomic import read_regular
from ocspproxy.store.files import MAX_FILE_BYTES, file_name

__all__ = ["service_rows", "state_rows"]


def _row(target: Target, staple: Staple | None, **fields: object) -> Row:
    return Row(
        files=(target.path,),
        subject=target.subject,
        serial=f"{target.key.serial:x}",
        issuer=target.issuer.name,
        ocsp_url=target.url,
        this_update=staple.this_update if staple else None,
        next_update=staple.next_update if staple else None,
        produced_at=staple.produced_at if staple else None,
        **fields,  # type: ignore[arg-type]
    )


def _orphans(inventory: Inventory) -> list[Row]:
    paths = {target.path for target in inventory.targets.values()}
    return [orphan_row(o.path, o.subject, o.reason) for o in inventory.orphans if o.path not in paths]


def service_rows(
    *,
    inventory: Inventory,
    cache: Cache,
    next_due: Callable[[CertKey], datetime | None],
    history: History,
    now: datetime,
    config: Config,
    every: int = 256,
) -> Steps[list[Row]]:
    """Every configured certificate as the running service sees it, most urgent first; a step every
    few rows, so 100,000 certificates do not hold up the requests in between."""
    rows: list[Row] = []
    for n, target in enumerate(list(inventory.targets.values()), 1):
        key = target.key
        staple = cache.current(key)
        last = history.last.get(key)
        failures = history.failures.get(key, 0)
        status, verdict, why = judge(
            url=target.url,
            staple=staple,
            failures=failures,
            error=last.error if last else None,
            now=now,
            critical_margin=config.critical_margin,
            refresh_margin=config.refresh.margin,
        )
        rows.append(
            _row(
                target,
                staple,
                status=status,
                verdict=verdict,
                why=why,
                next_refresh=next_due(key) if target.url else None,
                last_fetch=last.at if last else None,
                last_result=last.result if last else None,
                last_error=last.error if last else None,
                failures=failures,
            )
        )
        if n % every == 0:
            yield
    return sort_rows([*rows, *_orphans(inventory)])


def stored_staple(
    path: Path, key: CertKey, issuer: x509.Certificate, rules: Rules, now: datetime
) -> Staple | str:
    """The staple stored at path, checked as the service checks it (an expired one as of just before
    its nextUpdate); else why there is none: missing, invalid or unreadable."""
    try:
        der, _ = read_regular(path, limit=MAX_FILE_BYTES)
    except FileNotFoundError:
        return "missing"
    except ValueError:
        return "invalid"
    except OSError:
        return "unreadable"
    try:
        return rules.validate(der, key=key, issuer=issuer, now=now)
    except ExpiredResponse:
        try:
            next_update = x509_ocsp.load_der_ocsp_response(der).next_update_utc
            if next_update is None:
                raise InvalidResponse("no nextUpdate") from None
            return rules.validate(der, key=key, issuer=issuer, now=next_update - timedelta(seconds=1))
        except (InvalidResponse, ValueError):
            return "invalid"
    except InvalidResponse:
        return "invalid"


def state_rows(config: Config, now: datetime) -> list[Row]:
    """Every configured certificate as the configuration and the state directory tell it, most
    urgent first. Raises ConfigError when Apache's configuration cannot be read."""
    sources = certificate_sources(config)
    inventory = run_steps(inventory_steps(config, sources.certs, CertIndex()))
    rows = []
    for target in inventory.targets.values():
        found = stored_staple(
            config.state_dir / file_name(target.key), target.key, target.issuer.cert, config.rules, now
        )
        staple = found if isinstance(found, Staple) else None
        status, verdict, why = judge(
            url=target.url,
            staple=staple,
            failures=0,
            error=None if staple else f"{found} in {config.state_dir}",
            now=now,
            critical_margin=config.critical_margin,
            refresh_margin=config.refresh.margin,
        )
        rows.append(_row(target, staple, status=status, verdict=verdict, why=why))
    return sort_rows([*rows, *_orphans(inventory)])
