"""``GET /metrics``: Prometheus text, made at scrape time from what the service holds (a custom
collector: nothing is done per event beyond the plain counters of ``serve/tally.py`` and
``admin/history.py``). Names follow Prometheus' conventions: the ``ocspproxy_`` prefix, base
units, ``_total`` counters, ``_seconds``, absolute ``_timestamp_seconds`` rather than time left.

Per-certificate series carry ``file``, ``serial`` and ``subject`` of configured certificates only,
so their number is the configuration's.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from ocspproxy import __version__
from ocspproxy.admin.history import FETCH_BUCKETS
from ocspproxy.admin.status import Row, Verdict
from ocspproxy.admin.view import ServiceView
from ocspproxy.serve.answer import Outcome
from ocspproxy.serve.tally import LATENCY_BUCKETS, TallySnapshot

__all__ = ["CONTENT_TYPE", "families", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily

# The OCSP response status each outcome is answered with (serve/edge.py).
_STATUS: dict[str, str] = {
    Outcome.HIT: "successful",
    Outcome.MISS: "successful",
    Outcome.UNAUTHORIZED: "unauthorized",
    Outcome.NO_UPSTREAM: "unauthorized",
    Outcome.MALFORMED: "malformedRequest",
    Outcome.ERROR: "internalError",
}


def _histogram(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    buckets, total = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=False):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return buckets


def _requests(tallies: dict[str, TallySnapshot]) -> Iterator[Family]:
    requests = CounterMetricFamily(
        "ocspproxy_requests",
        "OCSP requests answered, by process, outcome and the OCSP status answered",
        labels=["process", "outcome", "status"],
    )
    refused = CounterMetricFamily(
        "ocspproxy_connections_refused", "Connections closed at once at max_connections", labels=["process"]
    )
    latency = HistogramMetricFamily(
        "ocspproxy_request_duration_seconds",
        "Time from a request's first byte to its answer, every process, by outcome",
        labels=["outcome"],
    )
    together = TallySnapshot()
    for process, tally in tallies.items():
        for outcome, count in sorted(tally.answers.items()):
            status = _STATUS.get(outcome, "tryLater")  # (Outcome members hash as their values)
            requests.add_metric([process, outcome, status], count)
        refused.add_metric([process], tally.refused)
        together.add(tally)
    for outcome, counts in sorted(together.buckets.items()):
        latency.add_metric([outcome], _histogram(LATENCY_BUCKETS, counts), together.seconds.get(outcome, 0.0))
    yield from (requests, latency, refused)


def _upstream(view: ServiceView) -> Iterator[Family]:
    fetches = CounterMetricFamily(
        "ocspproxy_upstream_fetches",
        "Fetches from CA responders, by host, result and reason (the validation class for invalid)",
        labels=["host", "result", "reason"],
    )
    latency = HistogramMetricFamily(
        "ocspproxy_upstream_fetch_duration_seconds", "Time a fetch took, by CA host", labels=["host"]
    )
    for host, counts in sorted(view.history.hosts.items()):
        for (result, reason), count in sorted(counts.results.items()):
            fetches.add_metric([host, result, reason], count)
        latency.add_metric([host], _histogram(FETCH_BUCKETS, counts.buckets), counts.seconds)
    yield from (fetches, latency)


def _per_certificate(rows: list[Row]) -> Iterator[Family]:
    labels = ["file", "serial", "subject"]
    status = GaugeMetricFamily(
        "ocspproxy_certificate_staple_status",
        "1 for the state of the staple held: good, revoked, unknown, expired, missing, none",
        labels=[*labels, "status"],
    )
    verdict = GaugeMetricFamily(
        "ocspproxy_certificate_verdict", "1 for the certificate's verdict", labels=[*labels, "verdict"]
    )
    times = {
        name: GaugeMetricFamily(f"ocspproxy_certificate_{name}_timestamp_seconds", text, labels=labels)
        for name, text in (
            ("staple_this_update", "thisUpdate of the staple held (Unix time)"),
            ("staple_next_update", "nextUpdate of the staple held: it is served until then (Unix time)"),
            ("next_refresh", "When the next fetch is scheduled (Unix time)"),
            ("last_fetch", "When the last fetch ended (Unix time)"),
        )
    }
    failures = GaugeMetricFamily(
        "ocspproxy_certificate_consecutive_fetch_failures",
        "Fetches in a row that brought nothing usable (0 after a good one)",
        labels=labels,
    )
    by_verdict = dict.fromkeys((v.value for v in Verdict), 0)
    for row in rows:
        values = [row.files[0] if row.files else "", row.serial or "", row.subject or ""]
        status.add_metric([*values, row.status], 1)
        verdict.add_metric([*values, row.verdict.value], 1)
        by_verdict[row.verdict.value] += 1
        for name, when in (
            ("staple_this_update", row.this_update),
            ("staple_next_update", row.next_update),
            ("next_refresh", row.next_refresh),
            ("last_fetch", row.last_fetch),
        ):
            if when is not None:
                times[name].add_metric(values, when.timestamp())
        if row.serial is not None:
            failures.add_metric(values, row.failures)
    counts = GaugeMetricFamily(
        "ocspproxy_certificates", "Configured certificates by verdict", labels=["verdict"]
    )
    for name, count in by_verdict.items():
        counts.add_metric([name], count)
    yield from (status, verdict, *times.values(), failures, counts)


def _service(view: ServiceView) -> Iterator[Family]:
    info = InfoMetricFamily("ocspproxy_build", "ocspproxy's version and Python's")
    info.add_metric([], {"version": __version__, "python": platform.python_version()})
    yield info
    inventory = view.catalog.inventory
    no_url = sum(1 for t in inventory.targets.values() if t.url is None)
    unstapled = GaugeMetricFamily(
        "ocspproxy_certificates_unstapled",
        "Configured certificates with nothing to staple, by why",
        labels=["reason"],
    )
    reasons = {"no_ocsp_url": no_url, "issuer_not_found": 0, "unreadable": 0}
    paths = {t.path for t in inventory.targets.values()}
    for orphan in inventory.orphans:
        if orphan.path not in paths:
            reasons["issuer_not_found" if orphan.reason == "issuer not found" else "unreadable"] += 1
    for reason, count in reasons.items():
        unstapled.add_metric([reason], count)
    yield unstapled
    yield GaugeMetricFamily(
        "ocspproxy_ready", "1 once every stored staple is loaded", 1 if view.loaded.is_set() else 0
    )
    yield GaugeMetricFamily(
        "ocspproxy_start_time_seconds", "When the service started (Unix time)", view.started.timestamp()
    )
    yield GaugeMetricFamily("ocspproxy_staples_in_memory", "Staples held in memory", len(view.cache))
    yield CounterMetricFamily(
        "ocspproxy_staples_stored", "Signature-checked staples that entered memory", view.history.stored_total
    )
    yield CounterMetricFamily(
        "ocspproxy_staples_dropped", "Staples dropped from memory as unusable", view.history.dropped_total
    )
    yield CounterMetricFamily(
        "ocspproxy_store_write_failures", "Staple writes the store refused", view.persister.failures
    )
    yield GaugeMetricFamily(
        "ocspproxy_store_unsaved_staples", "Staples waiting for a failing store", view.persister.unsaved
    )
    yield CounterMetricFamily(
        "ocspproxy_worker_handoffs",
        "Connections worker processes handed to the main process",
        view.handoffs(),
    )


def families(view: ServiceView, rows: list[Row]) -> list[Family]:
    """Every metric family, from the view now and the rows just built."""
    return [*_service(view), *_requests(view.tallies()), *_upstream(view), *_per_certificate(rows)]


class _Fixed(Collector):
    def __init__(self, found: Iterable[Family]) -> None:
        self.found = list(found)

    def collect(self) -> Iterable[Family]:
        return self.found


def render(found: list[Family]) -> bytes:
    """The text exposition format (slow for many certificates: the caller runs it in a thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(found))
    ProcessCollector(registry=registry)  # process_*: the main process's CPU, memory, descriptors
    return generate_latest(registry)
