"""The rows of the benchmark table, one builder per benchmark, from its results: our figure, the
peer's from the same run, the target and whether it is met."""

from __future__ import annotations

from typing import Any

from bench.bundle import BundleResults
from bench.fleet import FleetResults
from bench.handshake import HandshakeResults
from bench.loadtest import VARIANTS, CacheHitResults
from bench.report import Row
from bench.scale import ScaleResults

__all__ = ["bundle_rows", "cache_hit_rows", "fleet_rows", "handshake_rows", "metrics_rows", "scale_rows"]


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else float(seconds) * 1000


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def cache_hit_rows(r: CacheHitResults) -> list[Row]:
    rows: list[Row] = []
    nginx = r.runs.get("nginx")
    rate = f"{r.settings.rate:,.0f}/s"
    for run_name, level, workers in VARIANTS:
        run = r.runs.get(run_name)
        if run is None or run.wrk is None or run.fixed is None:
            continue
        peer_wrk = nginx.wrk if nginx else None
        peer_fixed = nginx.fixed if nginx else None
        sec = f"cache hit, log {level}" + (f", {workers} processes" if workers > 1 else "")
        rows += [
            Row(
                sec,
                "full load, requests/s",
                run.wrk.rps,
                peer_wrk.rps if peer_wrk else None,
                "req/s",
                target="≥ 0.5 times nginx",
                met=peer_wrk is not None and run.wrk.rps >= 0.5 * peer_wrk.rps,
                digits=0,
            ),
            Row(sec, "full load, p50", run.wrk.p50_ms, peer_wrk.p50_ms if peer_wrk else None, "ms", digits=2),
            Row(sec, "full load, p99", run.wrk.p99_ms, peer_wrk.p99_ms if peer_wrk else None, "ms", digits=2),
        ]
        for name, key in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
            rows.append(
                Row(
                    sec,
                    f"{rate} fixed, {name}",
                    _f(_get(run.fixed, "latency_ms", key)),
                    _f(_get(peer_fixed, "latency_ms", key)),
                    "ms",
                    digits=2,
                )
            )
        errors = _f(run.fixed.get("errors"))
        achieved = _f(run.fixed.get("achieved_rps")) or 0.0
        rows.append(
            Row(
                sec,
                f"{rate} fixed, errors",
                errors,
                _f(peer_fixed.get("errors")) if peer_fixed else None,
                "",
                target=f"0, ≥ {0.99 * r.settings.rate:,.0f}/s served",
                met=errors == 0 and achieved >= 0.99 * r.settings.rate,
                digits=0,
            )
        )
    return rows


def metrics_rows(r: CacheHitResults) -> list[Row]:
    """Metrics on (admin listener, scraped every second) against off, the same run, alternating."""
    cost = r.metrics_cost
    if cost is None or cost.on is None or cost.off is None:
        return []
    return [
        Row(
            "cache hit, log info, 1 process",
            f"metrics on / off, median of {cost.rounds} alternating wrk runs, requests/s",
            cost.on,
            cost.off,
            "req/s",
            target="≥ 0.95 times off",
            met=cost.on >= 0.95 * cost.off,
            digits=0,
        )
    ]


def handshake_rows(r: HandshakeResults) -> list[Row]:
    via = r.variants.get("ocspproxy", {})
    direct = r.variants.get("direct", {})
    sec = "handshake"
    server_ours = _f(via.get("first_handshake_server_ms"))
    server_peer = _f(direct.get("first_handshake_server_ms"))
    met = None
    if server_ours is not None:
        met = server_ours <= 10 and (server_peer is None or server_peer >= 500)
    return [
        Row(
            sec,
            "Apache spawn → first good staple",
            _ms(via.get("first_good_staple_s")),
            _ms(direct.get("first_good_staple_s")),
            "ms",
            digits=0,
        ),
        Row(
            sec,
            "first stapled handshake, server side",
            server_ours,
            server_peer,
            "ms",
            target="≤ 10 ms (direct ≥ 500)",
            met=met,
            digits=1,
        ),
        Row(
            sec,
            "first stapled handshake, s_client run",
            _f(via.get("first_stapled_handshake_ms")),
            _f(direct.get("first_stapled_handshake_ms")),
            "ms",
            digits=1,
        ),
        Row(
            sec,
            "mod_ssl stapling stall in it",
            _f(via.get("first_stapling_stall_ms")),
            _f(direct.get("first_stapling_stall_ms")),
            "ms",
            digits=1,
        ),
        *(
            Row(
                sec,
                f"s_client {stat}, first {r.loop_seconds:g} s",
                _f(_get(via, "handshake_ms", stat)),
                _f(_get(direct, "handshake_ms", stat)),
                "ms",
                digits=1,
            )
            for stat in ("p50", "p99", "max")
        ),
    ]


def _rss_row(section: str, measure: str, mib: float | None) -> Row:
    """Resident memory of the service, read in MiB, shown in MB (10⁶ bytes); target ≤ 400 MB."""
    mb = None if mib is None else mib * 1024 * 1024 / 1e6
    met = None if mb is None else mb <= 400
    return Row(section, measure, mb, unit="MB", target="≤ 400 MB", met=met, digits=0)


def _cpu_row(section: str, measure: str, pct: float | None) -> Row:
    """CPU of a process that should be doing next to nothing: % of one core, target ≤ 1 %."""
    met = None if pct is None else pct <= 1
    return Row(section, measure, pct, unit="% core", target="≤ 1 %", met=met, digits=2)


def scale_rows(r: ScaleResults) -> list[Row]:
    sec = f"scale, N={r.n:,}"
    fill = r.fill
    complete = bool(fill.get("complete"))
    fill_s = _f(fill.get("from_spawn_s")) if complete else _f(fill.get("extrapolated_from_spawn_s"))
    refresh = r.refresh
    rss = _f(r.startup.get("rss_mib_after_startup"))
    startup = _f(r.startup.get("startup_s"))
    restart = _f(r.startup.get("restart_s"))
    loaded = [
        _f(phases.get("store loaded")) if isinstance(phases, dict) else None
        for phases in (r.startup.get("phases_s"), r.startup.get("restart_phases_s"))
    ]
    idle = _f(r.startup.get("idle_cpu_pct_of_core"))
    per_fetch = _f(refresh.get("cpu_ms_per_fetch"))  # ms: N/3,600 a second is N/36 ms per 10 s
    return [
        Row(
            sec,
            "fill from empty, spawn → N staples" + ("" if complete else " (extrapolated)"),
            fill_s,
            unit="s",
        ),
        Row(sec, "fill rate (cap 4 per upstream)", _f(fill.get("per_second")), unit="fetches/s", digits=0),
        *(
            Row(
                sec,
                f"start-up with N staples, {when} (spawn → a stored staple served)",
                seconds,
                unit="s",
                target="≤ 5 s",
                met=None if seconds is None else seconds <= 5,
                digits=2,
            )
            for when, seconds in (("first start after the fill", startup), ("restart", restart))
        ),
        *(
            Row(sec, f"every certificate and staple loaded, {when} (spawn →)", seconds, unit="s", digits=2)
            for when, seconds in zip(("first start", "restart"), loaded, strict=True)
        ),
        *(
            Row(
                sec,
                f"hits while the full load runs (restart, {during.get('n')} asked), {name}",
                _f(during.get(key)),
                unit="ms",
                digits=2,
            )
            for during in [r.startup.get("hits_during_load")]
            if isinstance(during, dict)
            for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms"))
        ),
        _rss_row(sec, "RSS after start-up (all loaded)", rss),
        _cpu_row(sec, f"idle CPU over {r.startup.get('idle_window_s', '?')} s (hourly checks off)", idle),
        Row(
            sec,
            "the hourly checks of N certificates: N/3,600 fetches/s times the CPU per fetch (refresh run)",
            None if per_fetch is None else r.n / 3600 * per_fetch / 10,
            unit="% core",
            digits=1,
        ),
        _cpu_row(
            sec,
            f"CA down, all N due: CPU over {r.ca_down.get('window_s', '?')} s after the start-up work",
            _f(r.ca_down.get("cpu_pct_of_core")),
        ),
        Row(
            sec,
            "CA down, all N due: fetches that reached the network in that window",
            _f(r.ca_down.get("network_fetches")),
            unit="fetches",
            digits=0,
        ),
        Row(sec, "CA down, all N due: log lines in that window", _f(r.ca_down.get("log_lines")), digits=0),
        Row(
            sec,
            "refresh rate, all N due" + ("" if refresh.get("complete") else " (partial run)"),
            _f(refresh.get("per_second")),
            unit="fetches/s",
            digits=0,
        ),
    ]


def bundle_rows(r: BundleResults) -> list[Row]:
    sec = f"bundle, N={r.n:,}"
    rows = []
    for name in ("want", "fetch", "import"):
        run = r.commands.get(name, {})
        rows += [
            Row(sec, f"bundle {name}: time", _f(run.get("seconds")), unit="s", digits=1),
            Row(sec, f"bundle {name}: peak RSS", _f(run.get("peak_rss_mib")), unit="MiB", digits=0),
        ]
    rows.append(
        Row(
            sec,
            "service takes the bundle in (door, persisted)",
            _f(r.service.get("ingest_s")),
            unit="s",
            digits=1,
        )
    )
    for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms")):
        p99 = name == "p99"
        value = _f(r.hits.get(key))
        rows.append(
            Row(
                sec,
                f"cache hits while importing ({r.hits.get('n')} asked), {name}",
                value,
                unit="ms",
                target="≤ 50 ms" if p99 else "—",
                met=(value is not None and value <= 50) if p99 else None,
                digits=2,
            )
        )
    return rows


def _n(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def fleet_rows(r: FleetResults) -> list[Row]:
    sec = "fleet"
    req, prop, fresh = r.requests, r.propagation, r.fresh
    per_cert = req.get("per_certificate_per_minute")
    per = per_cert if isinstance(per_cert, dict) else {}
    cycle = req.get("per_cycle")
    per_cycle = cycle if isinstance(cycle, dict) else {}
    ratio = _n(req.get("ratio"))
    fleet_per_cycle = _n(per_cycle.get("fleet_of_3"))
    held = _n(fresh.get("held_s"))
    rss = _n(fresh.get("rss_mib"))
    return [
        Row(
            sec,
            "CA requests per refresh cycle (a new staple): 3 instances on Redis vs 1 alone",
            fleet_per_cycle,
            _n(per_cycle.get("alone")),
            unit="",
            target="≈ 1 (one fetch per cycle)",
            met=None if fleet_per_cycle is None else fleet_per_cycle <= 1.1,
            digits=2,
        ),
        Row(
            sec,
            "CA requests per certificate per minute: 3 instances on Redis vs 1 alone",
            _n(per.get("fleet_of_3")),
            _n(per.get("alone")),
            unit="/min",
            target="ratio ≈ 1",
            met=None if ratio is None else ratio <= 1.3,
            digits=2,
        ),
        *(
            Row(
                sec,
                f"accepted by one instance → held by another, {name} ({prop.get('samples')} samples)",
                _n(prop.get(key)),
                unit="ms",
                target="≤ 1,000 ms" if name == "p99" else "—",
                met=None if name != "p99" or _n(prop.get(key)) is None else (_n(prop.get(key)) or 0) <= 1000,
            )
            for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"))
        ),
        Row(
            sec,
            f"fresh instance, {fresh.get('n', 0):,} staples in Redis: spawn → every one held and served",
            held,
            unit="s",
            target="≤ 10 s",
            met=None if held is None else held <= 10 and not fresh.get("sample_wrong"),
            digits=2,
        ),
        *(
            Row(
                sec,
                f"then {fresh.get('sample')} of them asked while the certificates are read, {name}",
                _n(fresh.get(key)),
                unit="ms",
                digits=1,
            )
            for name, key in (("p50", "sample_p50_ms"), ("p99", "sample_p99_ms"))
        ),
        _rss_row(sec, "fresh instance RSS, everything loaded and checked", rss),
        Row(sec, "Redis memory per staple", _n(fresh.get("redis_bytes_per_staple")), unit="bytes", digits=0),
    ]
