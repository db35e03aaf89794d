"""A staple as HTTP: its RFC 5019 cache headers, and whole pre-rendered responses for the fast path."""

from __future__ import annotations

from email.utils import format_datetime, formatdate

from ocspproxy.core.staple import Staple

__all__ = ["CONTENT_TYPE", "Rendered", "cache_headers"]

CONTENT_TYPE = "application/ocsp-response"


def cache_headers(staple: Staple, now: float) -> dict[str, str]:
    """RFC 5019 caching headers of a staple at time now (seconds since the epoch)."""
    max_age = max(0, int(staple.next_update.timestamp() - now))
    return {
        "Last-Modified": format_datetime(staple.this_update, usegmt=True),
        "Expires": format_datetime(staple.next_update, usegmt=True),
        "ETag": staple.etag,
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
    }


class Rendered:
    """Whole responses per staple, redone once a second (Date and max-age change)."""

    def __init__(self) -> None:
        self._second = -1
        self._date = b""
        self._cache: dict[tuple[int, bytes], tuple[Staple, bytes]] = {}

    def get(self, staple: Staple, version: bytes, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second, self._cache = second, {}
            self._date = formatdate(second, usegmt=True).encode()
        key = (id(staple), version)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is staple:
            return hit[1]
        lines = [version + b" 200 OK", b"Content-Type: " + CONTENT_TYPE.encode()]
        lines += [f"{name}: {value}".encode() for name, value in cache_headers(staple, second).items()]
        lines += [b"Content-Length: " + str(len(staple.der)).encode(), b"Date: " + self._date]
        lines += [b"Connection: close", b"", b""]
        rendered = b"\r\n".join(lines) + staple.der
        self._cache[key] = (staple, rendered)
        return rendered
