"""structlog set-up: JSON lines when not on a terminal (journald, files), readable lines on one.

Every line is one structured line: what libraries write to stdlib logging (aiohttp, asyncio) is
rendered the same way, and a kind of event that clients can repeat at will is logged once per
interval with a count (``Repeats``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import structlog

__all__ = ["REPEAT_INTERVAL", "Repeats", "configure_logging", "request_line"]

REPEAT_INTERVAL = 60.0  # seconds: at most one line, plus one count, per kind of repeated event

_fast: _RequestLine | None = None


class _RequestLine:
    """The per-request line of the hot path, written without structlog's processor chain: the same
    JSON line (fields, event, level, timestamp) at a third of the cost. Used only for JSON output at
    info level; anything else goes through structlog."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._second = -1
        self._prefix = ""

    def write(self, fields: dict[str, object]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        (self.stream or sys.stderr).write(json.dumps(fields) + "\n")


def request_line(fields: dict[str, object]) -> None:
    """Log one request (event "request", level info)."""
    if _fast is not None:
        _fast.write(fields)
    else:
        structlog.get_logger("ocspproxy").info("request", **fields)


class _Stderr:
    """Whatever sys.stderr is at write time (so redirections made later, e.g. by tests, apply)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@dataclass(slots=True)
class _Window:
    end: float
    count: int = 0


class Repeats:
    """Which occurrences of a repeating kind of event to log: the first of each kind, then for the rest of
    its interval only a count, reported once the interval ends. A scanner or a flood of one kind of bad
    request costs two lines an interval, not one per request."""

    def __init__(self, *, interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = REPEAT_INTERVAL if interval is None else interval
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._ended: list[tuple[str, int]] = []

    def note(self, kind: str) -> bool:
        """True: log this one. False: counted for the kind's summary."""
        now = self.clock()
        window = self._windows.get(kind)
        if window is not None and now < window.end:
            window.count += 1
            return False
        if window is not None and window.count:
            self._ended.append((kind, window.count))  # not summarised yet: no timer ran
        self._windows[kind] = _Window(now + self.interval)
        return True

    def summaries(self) -> list[tuple[str, int]]:
        """(kind, count not logged) of each interval that has ended with a count; forgets those."""
        now = self.clock()
        ended, self._ended = self._ended, []
        for kind, window in list(self._windows.items()):
            if now >= window.end:
                del self._windows[kind]
                if window.count:
                    ended.append((kind, window.count))
        return ended

    def next_summary(self) -> float | None:
        """Seconds until the first interval with a count ends (0 when one is waiting), or None."""
        if self._ended:
            return 0.0
        ends = [window.end for window in self._windows.values() if window.count]
        return max(0.0, min(ends) - self.clock()) if ends else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _StdlibRecords(logging.Handler):
    """Records of stdlib logging (aiohttp, asyncio) as one structured line each. A traceback is reduced
    to the exception's type and message: these loggers report what clients and peers do (a reset, a bad
    request), and a traceback per client would let any client fill the log. Our own bugs are logged
    with structlog, traceback included (inside the one JSON line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's format string that does not fit its arguments
            message = str(record.msg)
        fields: dict[str, object] = {"logger": record.name}
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            fields["error"] = _one_line(f"{type(exc).__name__}: {exc}")
        level = min(logging.CRITICAL, max(logging.DEBUG, record.levelno // 10 * 10))
        try:
            structlog.get_logger("ocspproxy").log(level, _one_line(message), **fields)
        except Exception:
            self.handleError(record)


def _route_stdlib_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibRecords)]:
        root.removeHandler(handler)  # configured again (a test, a worker): one handler, not two
    root.addHandler(_StdlibRecords())
    root.setLevel(level)


def configure_logging(*, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    global _fast
    console = fmt == "console" or (fmt == "auto" and (stream or sys.stderr).isatty())
    _fast = _RequestLine(stream) if not console and level == "info" else None
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
    )
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=stream or _Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(numeric_level)
