"""The benchmarks' CA: answers OCSP POSTs from a table of pre-signed DER responses keyed by serial.

    python -m bench.upstream --port P --responses FILE [--delay SECONDS]

Raw asyncio (no framework), so the CA is never the bottleneck. HTTP/1.0 and ``Connection: close``
requests (nginx, aiohttp with force_close, mod_ssl) are answered and closed; HTTP/1.1 keep-alive is
honoured. ``GET /stats`` returns ``{"requests": N, "unknown": M}``. An unknown serial gets HTTP 404.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from cryptography.x509 import ocsp

from bench.pkiset import load_responses

__all__ = ["main"]

_MAX_HEAD = 16 * 1024
_MAX_BODY = 64 * 1024


class Stats:
    requests = 0
    unknown = 0


def _reply(status: str, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


class OcspHandler(asyncio.Protocol):
    def __init__(self, responses: dict[int, bytes], delay: float, stats: Stats) -> None:
        self.responses = responses
        self.delay = delay
        self.stats = stats
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self._close()
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            self._close()
            return
        method, path, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > _MAX_BODY:
            self._close()
            return
        if len(self.buffer) < end + 4 + length:
            return  # body not complete yet
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        connection = headers.get("connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        if method == "GET" and path == "/stats":
            stats = {"requests": self.stats.requests, "unknown": self.stats.unknown}
            self._send(
                _reply("200 OK", json.dumps(stats).encode(), "application/json", keep_alive), keep_alive
            )
            return
        self.stats.requests += 1
        try:
            serial = ocsp.load_der_ocsp_request(body).serial_number
        except ValueError:
            self._send(_reply("400 Bad Request", b"", "text/plain", False), False)
            return
        der = self.responses.get(serial)
        if der is None:
            self.stats.unknown += 1
            reply = _reply("404 Not Found", b"", "text/plain", keep_alive)
        else:
            reply = _reply("200 OK", der, "application/ocsp-response", keep_alive)
        if self.delay > 0:
            self.busy = True
            asyncio.get_running_loop().call_later(self.delay, self._send, reply, keep_alive)
        else:
            self._send(reply, keep_alive)

    def _send(self, reply: bytes, keep_alive: bool) -> None:
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(reply)
        if keep_alive:
            if self.buffer:
                self._next()
        else:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, responses: dict[int, bytes], delay: float) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(
        lambda: OcspHandler(responses, delay, stats), "127.0.0.1", port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"upstream listening on 127.0.0.1:{port} with {len(responses)} responses, delay {delay}s", flush=True
    )
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", required=True, help="pickle of {serial: DER} (bench.pkiset)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    responses = load_responses(Path(args.responses))
    asyncio.run(serve(args.port, responses, args.delay))


if __name__ == "__main__":
    main()
