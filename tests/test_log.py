"""Every line logged is one structured line: stdlib logging's records, our own errors, repeats."""

from __future__ import annotations

import io
import json
import logging

import structlog
from aiohttp.http_exceptions import LineTooLong

from ocspproxy.log import Repeats, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_lets_the_first_of_a_kind_through_then_counts_per_interval() -> None:
    clock = Clock()
    repeats = Repeats(interval=60.0, clock=clock)
    assert repeats.note("garbage") and repeats.next_summary() is None
    assert [repeats.note("garbage") for _ in range(99)] == [False] * 99
    assert repeats.note("too many headers")  # each kind on its own
    clock.now += 30
    assert repeats.next_summary() == 30.0 and repeats.summaries() == []
    clock.now += 30
    assert repeats.summaries() == [("garbage", 99)]
    assert repeats.summaries() == [] and repeats.next_summary() is None
    assert repeats.note("garbage")  # a new interval starts with a line again
    repeats.note("garbage")
    clock.now += 61
    assert repeats.note("garbage")  # no timer ran: the count waits for the next summaries()
    assert repeats.next_summary() == 0.0 and repeats.summaries() == [("garbage", 1)]


def lines_of(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_stdlib_records_are_one_json_line_without_their_traceback() -> None:
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    try:
        raise LineTooLong(b"/AAAA...", 16448)
    except LineTooLong:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    logging.getLogger("asyncio").debug("below the level: not written")
    (line,) = lines_of(stream)
    assert line["event"] == "Error handling request from 127.0.0.1"
    assert line["level"] == "error" and line["logger"] == "aiohttp.server"
    assert line["error"] == "LineTooLong: 400, message: Got more than 16448 bytes when reading: b'/AAAA...'."
    assert "Traceback" not in stream.getvalue()


def test_our_own_errors_keep_their_traceback_inside_one_json_line() -> None:
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        structlog.get_logger("ocspproxy").exception("request failed", serial="1f")
    (line,) = lines_of(stream)
    assert line["event"] == "request failed" and line["serial"] == "1f"
    assert str(line["exception"]).startswith("Traceback (most recent call last):\n")
    assert "ZeroDivisionError: division by zero" in str(line["exception"])


def test_configuring_again_keeps_one_handler_for_stdlib_records() -> None:
    stream = io.StringIO()
    for _ in range(3):
        configure_logging(level="info", fmt="json", stream=stream)
    logging.getLogger("asyncio").warning("socket.send() raised exception.")
    assert [line["event"] for line in lines_of(stream)] == ["socket.send() raised exception."]
