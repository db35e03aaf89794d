"""A redis-py asyncio client for the settings: every operation bounded by ``timeout`` (connecting
included), no retries of its own (the fleet decides when to try again), Sentinel when configured."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ocspproxy.shared.settings import SharedSettings

__all__ = ["connect"]


def connect(settings: SharedSettings, password: str | None) -> Redis:
    """Nothing is sent until the first command (the caller's first probe)."""
    common: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry": Retry(NoBackoff(), 0),
        "username": settings.username,
        "password": password,
        "client_name": "ocspproxy",
    }
    if settings.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(settings.sentinels),
            sentinel_kwargs={"socket_timeout": settings.timeout, "socket_connect_timeout": settings.timeout},
        )
        assert settings.service is not None  # the settings' parser insists on it
        client: Redis = sentinel.master_for(settings.service, db=settings.db, **common)
        return client
    assert settings.url is not None
    if settings.url.startswith("rediss://") and settings.tls_ca_file is not None:
        common["ssl_ca_certs"] = str(settings.tls_ca_file)
    return Redis.from_url(settings.url, **common)
