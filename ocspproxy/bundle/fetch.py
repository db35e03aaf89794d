"""The connected side: ask each CA (or one OCSP responder given with ``--via``, such as a connected
ocspproxy that holds the staples already) for every certificate of a want file, validate each
answer against the issuer in the want file with the same rules as a direct fetch, and write what
was good enough into one bundle. The inside validates everything again against its own issuers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ocspproxy.bundle.format import BUNDLE, bundle_entry, write_archive
from ocspproxy.bundle.want import Want, Wanted
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import InvalidResponse, Rules
from ocspproxy.upstream.base import SourceError
from ocspproxy.upstream.http import Fetcher

__all__ = ["Got", "fetch_want", "write_bundle"]

ERROR = "error"


@dataclass(frozen=True, slots=True)
class Got:
    """What one certificate of the want file got: ``good``, ``revoked``, ``unknown`` (with the
    validated staple), or ``error`` and why."""

    item: Wanted
    result: str
    reason: str
    staple: Staple | None
    asked: str | None  # the URL asked (None: nowhere to ask)

    @property
    def usable(self) -> bool:
        return self.staple is not None


async def fetch_want(
    want: Want,
    *,
    fetcher: Fetcher,
    rules: Rules,
    clock: Callable[[], datetime],
    via: str | None = None,
    workers: int = 64,
    progress: Callable[[Got], None] | None = None,
) -> list[Got]:
    """Fetch and validate every entry, at most ``workers`` at once (and the fetcher's cap per
    responder). The answers in the want file's order."""
    results: list[Got | None] = [None] * len(want.entries)
    todo: Iterator[tuple[int, Wanted]] = iter(enumerate(want.entries))

    async def work() -> None:
        for i, item in todo:
            got = await _fetch_one(item, fetcher=fetcher, rules=rules, clock=clock, via=via)
            results[i] = got
            if progress is not None:
                progress(got)

    await asyncio.gather(*(work() for _ in range(max(1, min(workers, len(want.entries))))))
    return [got for got in results if got is not None]


async def _fetch_one(
    item: Wanted, *, fetcher: Fetcher, rules: Rules, clock: Callable[[], datetime], via: str | None
) -> Got:
    url = via or item.url
    if url is None:
        return Got(item, ERROR, "no OCSP responder URL for it (give --via URL)", None, None)
    try:
        der = await fetcher.fetch(url, item.request, proxy=fetcher.route.proxy_for(url, item.issuer))
    except SourceError as exc:
        return Got(item, ERROR, str(exc), None, url)
    try:
        staple = rules.validate(der, key=item.key, issuer=item.issuer, now=clock())
    except InvalidResponse as exc:
        return Got(item, ERROR, f"invalid answer: {exc}", None, url)
    return Got(item, str(staple.status), "valid", staple, url)


def write_bundle(path: Path, got: list[Got], created: datetime) -> int:
    """Write the bundle of every usable answer (whole or not at all); returns how many. Raises
    OSError."""
    entries: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    for answer in got:
        if answer.staple is not None:
            entry = bundle_entry(
                answer.staple, answer.item.name_hash, subject=answer.item.subject, source=answer.asked
            )
            files[entry["response"]] = answer.staple.der
            entries.append(entry)
    write_archive(path, BUNDLE, created, entries, files)
    return len(entries)
