"""The kinds of bad HTTP a client sends, as aiohttp's parser reports them."""

from __future__ import annotations

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, BadStatusLine, LineTooLong

from ocspproxy.serve.badhttp import classify, reason

CHUNK_SIZE = "Invalid character in chunk size:\n\n  b'ZZZ'\n  ^"
BAD_HTTP = {
    "request line too long": (LineTooLong(b"/AAA...", 16448), 414),
    "header too long": (LineTooLong(b"aaa...", 8190), 431),
    "too many headers": (BadHttpMessage("Too many headers received"), 431),
    "TLS on the plain HTTP port": (BadHttpMethod(error="Received HTTPS traffic on an HTTP port"), 400),
    "invalid method": (BadHttpMethod(error="Invalid method encountered:\n\n  b'G(T'\n   ^"), 400),
    "invalid request line": (
        BadStatusLine(error="Bad status line:\n  Invalid minor version:\n\n  b'1'"),
        400,
    ),
    "invalid body framing": (BadHttpMessage(CHUNK_SIZE), 400),
    "invalid header": (BadHttpMessage("Invalid header token:\n\n  b'Bad Header: x'"), 400),
    "invalid HTTP": (BadHttpMessage("Pause on PRI/Upgrade:\n\n  b''\n  ^"), 400),
}


@pytest.mark.parametrize("kind", BAD_HTTP)
def test_bad_http_is_classified_and_its_reason_quotes_no_client_bytes(kind: str) -> None:
    exc, http_status = BAD_HTTP[kind]
    assert classify(exc, max_field_size=8190) == (kind, http_status)
    assert "\n" not in reason(exc) and "b'" not in reason(exc)


def test_a_reason_is_aiohttps_message_up_to_the_bytes_it_quotes() -> None:
    assert reason(LineTooLong(b"/AAA...", 16448)) == "Got more than 16448 bytes when reading"
    assert reason(BAD_HTTP["invalid request line"][0]) == "Bad status line: Invalid minor version"
    assert reason(BadHttpMessage(CHUNK_SIZE)) == "Invalid character in chunk size"
