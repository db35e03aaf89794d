"""What the admin listener remembers from the door's events (it is a ``Listener``): each configured
certificate's last fetch and its run of failures, and the counters of fetches by CA host, result
and reason, with their latency, and of staples stored and dropped. Plain numbers, turned into
Prometheus metrics at scrape time (``admin/metrics.py``).

Bounded: per-certificate entries are kept for configured certificates only, and CA hosts come from
the configuration (never from a request); reasons are folded into a few classes (``fetch_class``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from ocspproxy.cache.events import Fetched, Listener
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple

__all__ = ["FETCH_BUCKETS", "FetchCounts", "History", "LastFetch", "fetch_class"]

# Upper bounds (seconds) of the fetch latency histogram; the total timeout is 10 s by default.
FETCH_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_OK = ("stored", "revoked", "same", "kept", "passed")
_HTTP = re.compile(r"^HTTP (\d{3})$")
# Validation's reasons (core/validate.py), by the words they start with or contain: the class is
# what an operator acts on (the CA's signer, its clock, the CertID it answers for, its status).
_INVALID: tuple[tuple[str, str], ...] = (
    ("expired", "expired"),
    ("responder answered", "error_status"),
    ("not an OCSP response", "malformed"),
    ("unreadable", "malformed"),
    ("has unused bits", "malformed"),
    ("CertID", "certid"),
    ("SingleResponse", "certid"),
    ("responder certificate", "signer"),
    ("signer", "signer"),
    ("signature", "signature"),
    ("thisUpdate", "times"),
    ("nextUpdate", "times"),
    ("producedAt", "times"),
    ("issuer not known", "issuer_unknown"),
)


def fetch_class(result: str, reason: str, *, shared: bool = False) -> tuple[str, str]:
    """(result, reason) labels of a fetch: result ``ok``, ``timeout``, ``http_error``,
    ``too_large``, ``connection_error``, ``invalid``, ``held`` (not asked: the upstream keeps
    failing and is given a pause), or ``shared`` (a fleet member's answer, taken from the shared
    store instead of asking the CA); reason the door's result for ok and
    shared (stored, same, ...), the status code for an HTTP error, the validation class for
    invalid, else the result again."""
    if shared:
        return "shared", result
    if result == "held":
        return "held", "held"
    if result in _OK:
        return "ok", result
    if result == "rejected":
        for words, kind in _INVALID:
            if words in reason:
                return "invalid", kind
        return "invalid", "other"
    if reason == "timed out":
        return "timeout", "timeout"
    if match := _HTTP.match(reason):
        return "http_error", match.group(1)
    if "exceeds" in reason:
        return "too_large", "too_large"
    return "connection_error", "connection_error"


def host_of(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "unknown"
    return f"{host}:{parts.port}" if parts.port else host


@dataclass(frozen=True, slots=True)
class LastFetch:
    at: datetime
    result: str  # the door's result, or failed
    error: str | None  # why, when it brought nothing usable


@dataclass(slots=True)
class FetchCounts:
    """One CA host's fetches: counts by (result, reason), and the latency histogram (per bucket of
    ``FETCH_BUCKETS`` plus +Inf, not cumulative) and its sum."""

    results: dict[tuple[str, str], int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(FETCH_BUCKETS) + 1))
    seconds: float = 0.0


class History(Listener):
    def __init__(self, configured: Callable[[CertKey], bool]) -> None:
        self.configured = configured
        self.last: dict[CertKey, LastFetch] = {}
        self.failures: dict[CertKey, int] = {}  # consecutive fetches that brought nothing usable
        self.hosts: dict[str, FetchCounts] = {}
        self.stored_total = 0
        self.dropped_total = 0

    def stored(self, staple: Staple) -> None:
        self.stored_total += 1

    def dropped(self, key: CertKey) -> None:
        self.dropped_total += 1

    def fetched(self, fetch: Fetched) -> None:
        counts = self.hosts.get(host := host_of(fetch.url))
        if counts is None:
            counts = self.hosts[host] = FetchCounts()
        labels = fetch_class(fetch.result, fetch.reason, shared=fetch.shared)
        counts.results[labels] = counts.results.get(labels, 0) + 1
        for i, bound in enumerate(FETCH_BUCKETS):
            if fetch.seconds <= bound:
                counts.buckets[i] += 1
                break
        else:
            counts.buckets[-1] += 1
        counts.seconds += fetch.seconds
        key = fetch.key
        if not self.configured(key):
            return
        self.last[key] = LastFetch(fetch.at, fetch.result, fetch.reason if fetch.failed else None)
        self.failures[key] = self.failures.get(key, 0) + 1 if fetch.failed else 0

    def forget_unconfigured(self) -> None:
        """Drop the entries of certificates no longer configured (after a reload)."""
        for key in [k for k in self.last if not self.configured(k)]:
            del self.last[key]
            self.failures.pop(key, None)
