"""Benchmark 3, scale: ocspproxy with N certificates of one CA (N = 100,000; 2,000 with --quick).

(a) fill: empty state directory, time from spawn until N ``*.der`` exist (fetches under the default
    per-upstream cap of 4); (b) start-up with N stored staples: spawn until a request for a stored staple
    gets it (the listener opens before the certificate files are read; see the phases for when
    everything is loaded), for the first start after the fill and for a restart right after it;
    (c) VmRSS once everything is loaded; (d) CPU while idle (utime + stime over a window after
    start-up, % of one core), with the hourly checks off (``max_interval`` 30 days) for (b) to (d):
    with N certificates those are N/3,600 fetches a second, costed from (e) instead;
    (e) refresh: N stored staples all past their refresh time (the cached "stale" set: thisUpdate 20 days
    ago, nextUpdate in 10 days), the CA handing out newer ones: time until all N are replaced, counted
    from the ``"result": "stored"`` upstream log lines;
    (f) CA down (run before (e), on the same stale staples): N staples due and nothing listening on the
    CA's port, as behind an air gap: CPU over the idle window after the start-up work, the fetches that
    reached the network (one ``upstream`` line each) and the log lines in that window.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Proc, cpu_seconds, free_port, logged, percentile, port_accepts, rss_mib, wait_logged
from bench.pkiset import ScaleSet, load_responses, scale_set, staple_file_name
from bench.servers import der_count, get_json, post_ocsp, start_ocspproxy, start_upstream
from ocspproxy.core.ocsp import CertKey, build_request, issuer_key_hash, issuer_name_hash

__all__ = ["ScaleResults", "ScaleSettings", "issuer_config", "phases", "run_scale", "write_staples"]


@dataclass(frozen=True)
class ScaleSettings:
    n: int = 100_000
    idle_seconds: float = 30.0
    fill_limit_s: float = 300.0  # stop waiting after this long and extrapolate from the rate so far
    refresh_limit_s: float = 180.0
    poll_s: float = 1.0


@dataclass
class ScaleResults:
    n: int
    generated_in_s: float | None
    fill: dict[str, object] = field(default_factory=dict)
    startup: dict[str, object] = field(default_factory=dict)
    refresh: dict[str, object] = field(default_factory=dict)
    ca_down: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def issuer_config(path: Path, ca_pem: Path, upstream_port: int, *, extra: str = "") -> Path:
    # The cached certificates carry a dummy AIA URL; the issuer is pointed at this run's CA instead.
    issuer = f'[[issuer]]\ncertificate = "{ca_pem}"\nocsp_url = "http://127.0.0.1:{upstream_port}/"\n'
    path.write_text(extra + issuer)
    return path


def write_staples(state: Path, ss: ScaleSet, responses: dict[int, bytes], *, only_missing: bool) -> int:
    """Put DER files where ocspproxy's FileStore keeps them (same names, mode 0600). Returns how many."""
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    prefix = staple_file_name(ss.ca_cert, 1).rsplit("-", 1)[0]
    existing = set(os.listdir(state)) if only_missing else set()
    written = 0
    for serial, der in responses.items():
        name = f"{prefix}-{serial:x}.der"
        if name in existing:
            continue
        fd = os.open(state / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(der)
        written += 1
    return written


def _wait_listening(proc: Proc, port: int, timeout: float) -> float:
    """Seconds from spawn until the port accepts (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while not port_accepts(port, timeout=0.5):
        proc.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} did not listen within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - proc.spawned


def _wait_serving(proc: Proc, port: int, request: bytes, expected: bytes, timeout: float) -> float:
    """Seconds from spawn until a request for a stored staple gets that staple, byte for byte
    (asked on a new connection every 10 ms, as mod_ssl asks)."""
    deadline = time.monotonic() + timeout
    while True:
        proc.check_alive()
        try:
            answer = post_ocsp(port, request, timeout=5.0)
        except OSError:
            answer = None  # not listening yet
        if answer is not None and answer.status == 200 and answer.body == expected:
            return time.monotonic() - proc.spawned
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} served no stored staple within {timeout}s")
        time.sleep(0.01)


def _hits_until_loaded(proc: Proc, port: int, request: bytes, expected: bytes) -> dict[str, object]:
    """While the full load runs (until "store loaded" is logged): one stored staple asked for again
    and again, each on a new connection, one at a time; latency of each answer, as the client
    sees it. Every answer must be that staple."""
    needle = b'"event": "store loaded"'
    latencies: list[float] = []
    wrong = 0
    deadline = time.monotonic() + 600
    while needle not in proc.log_path.read_bytes() and time.monotonic() < deadline:
        for _ in range(20):
            started = time.perf_counter()
            answer = post_ocsp(port, request, timeout=10.0)
            latencies.append((time.perf_counter() - started) * 1000)
            wrong += answer.status != 200 or answer.body != expected
    return {
        "n": len(latencies),
        "wrong": wrong,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
    }


def _stored_lines(log_path: Path, offset: int) -> tuple[int, int]:
    """Upstream fetches logged as stored since offset; returns (count, new offset)."""
    with log_path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    return data[:end].count(b'"result": "stored"'), offset + end


def _progress(
    *,
    proc: Proc,
    port: int,
    n: int,
    count: Callable[[], int],
    limit: float,
    poll: float,
) -> dict[str, object]:
    """Wait for listening, then until count() reaches n or limit seconds have passed since spawn.
    The rate counts from when the certificates and stored staples are loaded: fetching starts then."""
    listen_s = _wait_listening(proc, port, timeout=limit)
    wait_logged(proc.log_path, "store loaded", timeout=limit)
    loaded_s = time.monotonic() - proc.spawned
    cpu_at_start = cpu_seconds(proc.pid)
    done = 0
    while True:
        proc.check_alive()
        done = count()
        elapsed = time.monotonic() - proc.spawned
        if done >= n or elapsed >= limit:
            break
        time.sleep(poll)
    working = max(elapsed - loaded_s, 1e-9)
    rate = done / working
    out: dict[str, object] = {
        "listening_s": round(listen_s, 2),
        "loaded_s": round(loaded_s, 1),
        "done": done,
        "complete": done >= n,
        "from_spawn_s": round(elapsed, 1),
        "after_loaded_s": round(working, 1),
        "per_second": round(rate, 1),
    }
    cpu_working = cpu_seconds(proc.pid) - cpu_at_start
    if done < n and rate > 0:
        out["extrapolated_from_spawn_s"] = round(loaded_s + n / rate, 1)
    out["cpu_s_after_loaded"] = round(cpu_working, 1)
    out["cpu_ms_per_fetch"] = round(cpu_working * 1000 / done, 2) if done else None
    out["cpu_pct_of_core_after_loaded"] = round(100 * cpu_working / working, 1)
    out["phases_s"] = phases(proc)
    return out


def phases(proc: Proc) -> dict[str, float]:
    """When ocspproxy logged its start-up steps, in seconds after the spawn (info level only)."""
    wanted = {"inventory loaded", "store loaded", "listening", "stored staples verified"}
    out: dict[str, float] = {}
    with proc.log_path.open("rb") as fh:
        for raw in fh:
            if not wanted - set(out):
                break  # (a run without stored staples logs "verified" too, with checked=0)
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            event = record.get("event") if isinstance(record, dict) else None
            if event in wanted and event not in out:
                when = dt.datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))
                out[event] = round(when.timestamp() - proc.spawned_wall, 2)
    return out


def run_scale(workdir: Path, s: ScaleSettings, log: list[str]) -> ScaleResults:
    started = time.monotonic()
    ss = scale_set(s.n)
    results = ScaleResults(n=s.n, generated_in_s=round(ss.generated_in, 1) if ss.generated_in else None)
    log.append(
        f"scale: {s.n} certificates "
        + (f"generated in {ss.generated_in:.0f}s" if ss.generated_in else "from the cache")
        + f" ({time.monotonic() - started:.1f}s)"
    )
    up_port = free_port()
    upstream, _ = start_upstream(ss.fresh_file, workdir / "upstream.log", port=up_port)
    config = issuer_config(workdir / "ocspproxy.toml", ss.ca_pem, up_port)
    # Start-up and idle without the hourly checks (max_interval 30 days): with N certificates they
    # are N/3,600 fetches a second, not idleness; their cost is computed from the refresh run.
    quiet = issuer_config(
        workdir / "quiet.toml", ss.ca_pem, up_port, extra="[refresh]\nmax_interval = 2592000\n"
    )

    def spawn(port: int, state_dir: Path, log_path: Path, config: Path = config) -> Proc:
        return start_ocspproxy(
            port=port,
            state_dir=state_dir,
            cert_glob=ss.cert_glob,
            issuers=ss.ca_pem,
            log_path=log_path,
            config=config,
            wait=False,
        )

    try:
        # (a) fill from empty
        state = workdir / "state"
        port = free_port()
        proc = spawn(port, state, workdir / "fill.log")
        try:
            results.fill = _progress(
                proc=proc,
                port=port,
                n=s.n,
                count=lambda: der_count(state),
                limit=s.fill_limit_s,
                poll=s.poll_s,
            )
            results.fill["rss_mib"] = round(rss_mib(proc.pid), 1)
        finally:
            proc.stop()
        log.append(f"scale: fill {results.fill}")

        # (b, c, d) start-up with N stored staples, memory, idle CPU
        fresh = load_responses(ss.fresh_file)
        topped_up = write_staples(state, ss, fresh, only_missing=True)
        if topped_up:
            results.notes.append(
                f"start-up: {topped_up} staples the fill did not reach were written directly"
            )
        os.sync()  # the fill's writes reach the disk now, not during the measurement
        requests_before = int(str(get_json(up_port, "/stats")["requests"]))
        probe = ss.serials[-1]
        ask = build_request(
            CertKey(alg="sha1", issuer_key_hash=issuer_key_hash(ss.ca_cert, "sha1"), serial=probe),
            issuer_name_hash(ss.ca_cert, "sha1"),
        )
        port = free_port()
        proc = spawn(port, state, workdir / "startup.log", quiet)
        try:
            startup_s = _wait_serving(proc, port, ask, fresh[probe], timeout=600)
            wait_logged(proc.log_path, "store loaded", timeout=600)
            rss_start = rss_mib(proc.pid)
            # Signatures of stored staples are checked in the background after the listener opens
            # (each before its first use), then the snapshot is written and the file watcher
            # compares every certificate file once (about 0.5 s of CPU in all): idle means after
            # that one-time work.
            wait_logged(proc.log_path, "stored staples verified", timeout=600)
            wait_logged(proc.log_path, "staples snapshot written", timeout=600)
            time.sleep(5.0)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(s.idle_seconds)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            rss_idle = rss_mib(proc.pid)
            proc.check_alive()
            loaded = (logged(proc.log_path, "store loaded") or {}).get("loaded")
            startup_phases = phases(proc)
        finally:
            proc.stop()
        results.startup = {
            "startup_s": round(startup_s, 2),
            "phases_s": startup_phases,
            "staples_loaded": loaded,
            "rss_mib_after_startup": round(rss_start, 1),
            "rss_mib_after_idle": round(rss_idle, 1),
            "idle_window_s": round(t1 - t0, 1),
            "idle_cpu_pct_of_core": round((cpu1 - cpu0) / (t1 - t0) * 100, 2),
            "upstream_requests_while_idle": int(str(get_json(up_port, "/stats")["requests"]))
            - requests_before,
        }
        # (b') a restart on the same state directory, as `systemctl restart` does
        port = free_port()
        proc = spawn(port, state, workdir / "restart.log", quiet)
        try:
            restart_s = _wait_serving(proc, port, ask, fresh[probe], timeout=600)
            results.startup["restart_s"] = round(restart_s, 2)
            results.startup["hits_during_load"] = _hits_until_loaded(proc, port, ask, fresh[probe])
            results.startup["restart_phases_s"] = phases(proc)
        finally:
            proc.stop()
        log.append(f"scale: start-up {results.startup}")

        # (e) refresh: every stored staple past its refresh time
        stale_state = workdir / "state-stale"
        write_staples(stale_state, ss, load_responses(ss.stale_file), only_missing=False)
        # The certificates are the same as before: a restarted service has its certificate index.
        index = state / "inventory.index"
        if index.exists():
            (stale_state / index.name).write_bytes(index.read_bytes())
            os.chmod(stale_state / index.name, 0o600)
        os.sync()

        # (f) the same due staples, the CA down (its port closed): first, as it leaves them due
        dead = issuer_config(workdir / "dead.toml", ss.ca_pem, free_port())
        port = free_port()
        proc = spawn(port, stale_state, workdir / "ca-down.log", dead)
        try:
            wait_logged(proc.log_path, "staples snapshot written", timeout=600)
            time.sleep(5.0)
            offset = proc.log_path.stat().st_size
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(s.idle_seconds)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            proc.check_alive()
        finally:
            proc.stop()
        with proc.log_path.open("rb") as f:
            f.seek(offset)
            window = [json.loads(x) for x in f.read().splitlines()[:-1] if x.startswith(b"{")]
        results.ca_down = {
            "window_s": round(t1 - t0, 1),
            "cpu_pct_of_core": round((cpu1 - cpu0) / (t1 - t0) * 100, 2),
            "network_fetches": sum(1 for e in window if e.get("event") == "upstream"),
            "log_lines": len(window),
            "held_lines_in_all": sum(
                1 for x in proc.log_path.read_bytes().splitlines() if b'"upstream failing; fetches held"' in x
            ),
        }
        log.append(f"scale: CA down {results.ca_down}")

        port = free_port()
        refresh_log = workdir / "refresh.log"
        proc = spawn(port, stale_state, refresh_log)
        counted = {"n": 0, "offset": 0}

        def stored() -> int:
            more, counted["offset"] = _stored_lines(refresh_log, counted["offset"])
            counted["n"] += more
            return counted["n"]

        try:
            results.refresh = _progress(
                proc=proc, port=port, n=s.n, count=stored, limit=s.refresh_limit_s, poll=s.poll_s
            )
        finally:
            proc.stop()
        log.append(f"scale: refresh {results.refresh}")
    finally:
        upstream.stop()
    return results
