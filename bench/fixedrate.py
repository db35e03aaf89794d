"""Open-loop load at a fixed rate, one new TCP connection per request, like mod_ssl's OCSP queries.

    python -m bench.fixedrate --port P --requests DIR [--expected DIR] --rate 1000 --duration 10

Request i is due at ``start + i / rate`` whatever happened to earlier ones (no coordinated omission):
at its due time a connection is opened, ``POST / HTTP/1.0`` with ``Content-Type:
application/ocsp-request`` is sent (the bodies ``DIR/1.der``, ``DIR/2.der``, ... in rotation), and the
response is read until the server closes. Latency runs from the due time to the close, so it includes
connecting and any lateness of the generator itself, which is reported separately as ``lag`` (due time
to the moment the connection was started): if lag grows, the generator did not keep up and the run says
nothing about the server. With ``--expected DIR`` every response must be HTTP 200 with exactly the bytes
of ``DIR/i.der``; anything else counts as an error. ``--procs N`` splits the schedule over N processes
(interleaved), for rates one Python process cannot sustain. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Outcome", "main", "run", "summarize"]


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    lags: list[float] = field(default_factory=list)  # seconds, every request
    errors: Counter[str] = field(default_factory=Counter)
    scheduled: int = 0
    started_at: float = 0.0  # loop time of the first due time
    last_done: float = 0.0


class _Request(asyncio.Protocol):
    def __init__(
        self, payload: bytes, expected: bytes | None, due: float, out: Outcome, timeout: float
    ) -> None:
        self.payload = payload
        self.expected = expected
        self.due = due
        self.out = out
        self.chunks: list[bytes] = []
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.timeout = timeout
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.payload)
        self.timer = self.loop.call_at(self.due + self.timeout, self._expire, transport)

    def _expire(self, transport: asyncio.WriteTransport) -> None:
        self.timed_out = True
        transport.abort()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        return False  # the server closed: so do we

    def connection_lost(self, exc: Exception | None) -> None:
        now = self.loop.time()
        if self.timer is not None:
            self.timer.cancel()
        self.out.last_done = max(self.out.last_done, now)
        data = b"".join(self.chunks)
        if self.timed_out:
            self.out.errors["timeout"] += 1
        elif exc is not None and not data:
            self.out.errors[f"read: {type(exc).__name__}"] += 1
        else:
            self._check(data, now)
        if not self.done.done():
            self.done.set_result(None)

    def _check(self, data: bytes, now: float) -> None:
        head, sep, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if not sep or len(status) < 2:
            self.out.errors["incomplete response"] += 1
        elif status[1] != b"200":
            self.out.errors[f"HTTP {status[1].decode(errors='replace')}"] += 1
        elif self.expected is not None and body != self.expected:
            self.out.errors["unexpected body"] += 1
        else:
            self.out.latencies.append(now - self.due)


async def _one(
    host: str, port: int, payload: bytes, expected: bytes | None, due: float, out: Outcome, limit: float
) -> None:
    loop = asyncio.get_running_loop()
    request = _Request(payload, expected, due, out, limit)
    try:
        async with asyncio.timeout(max(0.001, due + limit - loop.time())):
            await loop.create_connection(lambda: request, host, port)
    except TimeoutError:
        out.errors["connect timeout"] += 1
        return
    except OSError as exc:
        out.errors[f"connect: {exc.strerror or type(exc).__name__}"] += 1
        out.last_done = max(out.last_done, loop.time())
        return
    await request.done


def _payload(host: str, port: int, body: bytes) -> bytes:
    # What mod_ssl sends (modules/ssl/ssl_util_ocsp.c): HTTP/1.0, Host, Content-Type, Content-Length.
    head = (
        f"POST / HTTP/1.0\r\nHost: {host}:{port}\r\nContent-Type: application/ocsp-request\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run(
    host: str,
    port: int,
    bodies: list[bytes],
    expected: list[bytes] | None,
    *,
    rate: float,
    duration: float,
    limit: float = 5.0,
    part: int = 0,
    parts: int = 1,
) -> Outcome:
    """Requests part, part + parts, part + 2·parts, ... of the schedule ``i / rate`` over duration."""
    loop = asyncio.get_running_loop()
    payloads = [_payload(host, port, body) for body in bodies]
    total = int(rate * duration)
    mine = range(part, total, parts)
    out = Outcome(scheduled=len(mine))
    start = loop.time() + 0.05
    out.started_at = start
    tasks: set[asyncio.Task[None]] = set()
    index = 0
    while index < len(mine):
        now = loop.time()
        due = start + mine[index] / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        # launch everything due by now (after an oversleep there may be several)
        while index < len(mine) and start + mine[index] / rate <= now:
            i = mine[index]
            due = start + i / rate
            out.lags.append(now - due)
            k = i % len(payloads)
            task = loop.create_task(
                _one(host, port, payloads[k], expected[k] if expected else None, due, out, limit)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
    if tasks:
        await asyncio.wait(tasks, timeout=limit + 1)
    return out


def _run_part(
    args: tuple[str, int, list[bytes], list[bytes] | None, float, float, float, int, int],
) -> Outcome:
    host, port, bodies, expected, rate, duration, timeout, part, parts = args
    return asyncio.run(
        run(
            host,
            port,
            bodies,
            expected,
            rate=rate,
            duration=duration,
            limit=timeout,
            part=part,
            parts=parts,
        )
    )


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return round(ordered[rank - 1] * 1000, 3)


def summarize(outcomes: list[Outcome], rate: float, duration: float) -> dict[str, object]:
    latencies = [x for o in outcomes for x in o.latencies]
    lags = [x for o in outcomes for x in o.lags]
    errors: Counter[str] = Counter()
    for o in outcomes:
        errors.update(o.errors)
    scheduled = sum(o.scheduled for o in outcomes)
    return {
        "rate": rate,
        "duration_s": duration,
        "scheduled": scheduled,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        # successful responses per second of the schedule: = rate when every request succeeded
        "achieved_rps": round(len(latencies) / duration, 1),
        "latency_ms": {
            p: _pct(latencies, q) for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
        }
        | {"max": _pct(latencies, 100)},
        "lag_ms": {"p50": _pct(lags, 50), "p99": _pct(lags, 99), "max": _pct(lags, 100)},
    }


def _read_numbered(directory: Path) -> list[bytes]:
    files = sorted(directory.glob("*.der"), key=lambda p: int(p.stem))
    if not files:
        raise SystemExit(f"no N.der files in {directory}")
    return [f.read_bytes() for f in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True, help="directory of 1.der, 2.der, ...")
    parser.add_argument("--expected", type=Path, help="directory of the expected responses, same numbers")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, from its due time")
    parser.add_argument("--procs", type=int, default=1, help="generator processes")
    args = parser.parse_args(argv)
    bodies = _read_numbered(args.requests)
    expected = _read_numbered(args.expected) if args.expected else None
    if expected is not None and len(expected) != len(bodies):
        raise SystemExit("--requests and --expected hold different numbers of files")
    jobs = [
        (args.host, args.port, bodies, expected, args.rate, args.duration, args.timeout, part, args.procs)
        for part in range(args.procs)
    ]
    if args.procs == 1:
        outcomes = [_run_part(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(args.procs) as pool:
            outcomes = pool.map(_run_part, jobs)
    json.dump(summarize(outcomes, args.rate, args.duration), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
