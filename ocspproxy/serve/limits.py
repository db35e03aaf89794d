"""What one client may cost us, and the gate that applies it where connections are accepted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from ocspproxy.config import Config

__all__ = ["Gate", "Limits"]

log = structlog.get_logger("ocspproxy")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """mod_ssl sends one small request per connection and closes. The values come from the
    configuration (``from_config``), which holds their defaults."""

    max_request_bytes: int
    max_connections: int  # beyond this, new connections are closed at once
    request_timeout: float  # to receive a request body
    connection_lifetime: float  # any connection is closed after this (slow headers, idlers)
    keepalive_timeout: float = 5.0

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(
            max_request_bytes=config.max_request_bytes,
            max_connections=config.max_connections,
            request_timeout=config.request_timeout,
            connection_lifetime=config.connection_lifetime,
        )


class Gate:
    """The connection cap and the lifetime of every connection. aiohttp has no timeout for slowly
    sent headers; closing any connection older than ``connection_lifetime`` bounds what a slow or
    idle client can hold, and the cap bounds how many."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.active = 0
        self.refused = 0
        self._refusing = False

    def admit(self, transport: asyncio.Transport) -> asyncio.TimerHandle | None:
        """A timer that closes the connection at the end of its lifetime, or None (refused)."""
        if self.active >= self.limits.max_connections:
            self.refused += 1
            if not self._refusing:
                log.warning(
                    "connection limit reached; refusing new connections", limit=self.limits.max_connections
                )
                self._refusing = True
            transport.abort()
            return None
        if self._refusing:
            log.info("below the connection limit again", refused=self.refused)
            self._refusing = False
        self.active += 1
        return asyncio.get_running_loop().call_later(self.limits.connection_lifetime, transport.close)

    def release(self, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        self.active -= 1
