"""An in-process HTTP forward proxy for tests: takes absolute-URI requests, records them, and
relays them to the origin they name (or answers 407 when it wants credentials it did not get)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Seen:
    method: str
    target: str  # the request target as sent: an absolute URI through a proxy
    authorization: str | None


@dataclass
class ForwardProxy:
    credentials: tuple[str, str] | None = None  # required Proxy-Authorization, if any
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.seen.append(Seen(method, target, headers.get("proxy-authorization")))
            if self.credentials is not None:
                wanted = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
                if headers.get("proxy-authorization") != wanted:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    return
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            up_writer.write(
                f"{method} {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                f"Content-Type: application/ocsp-request\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await up_writer.drain()
            writer.write(await up_reader.read())
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        finally:
            await writer.drain()
            writer.close()
