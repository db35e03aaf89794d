"""structlog set-up: JSON lines when not on a terminal (journald, files), readable lines on one."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

import structlog

__all__ = ["configure_logging", "request_line"]

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


def configure_logging(*, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    global _fast
    console = fmt == "console" or (fmt == "auto" and (stream or sys.stderr).isatty())
    _fast = _RequestLine(stream) if not console and level == "info" else None
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=stream or _Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
