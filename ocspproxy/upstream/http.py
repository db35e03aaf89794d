"""HTTP client for the CAs' OCSP responders: timeouts, a size cap and a per-upstream concurrency cap;
``HttpSource``, the Source that asks the CA named in the Job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from ocspproxy.core.ocsp import CertKey, build_request
from ocspproxy.upstream.base import Job, SourceError

__all__ = ["Fetcher", "HttpSource", "UpstreamError", "UpstreamSettings"]


class UpstreamError(SourceError):
    """The upstream gave no usable answer; str() says why in a few words."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamSettings:
    connect_timeout: float = 3.0
    total_timeout: float = 10.0
    max_per_upstream: int = 4
    max_response_bytes: int = 64 * 1024
    user_agent: str = "ocspproxy"


class Fetcher:
    """POSTs DER OCSP requests. Redirects are not followed: the URL we were configured with is the one
    we talk to."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._limits: dict[str, asyncio.Semaphore] = {}

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=self.settings.total_timeout,
            connect=self.settings.connect_timeout,
            sock_connect=self.settings.connect_timeout,
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            headers={"User-Agent": self.settings.user_agent},
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _limit(self, url: str) -> asyncio.Semaphore:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        sem = self._limits.get(origin)
        if sem is None:
            sem = self._limits[origin] = asyncio.Semaphore(self.settings.max_per_upstream)
        return sem

    async def fetch(self, url: str, request_der: bytes) -> bytes:
        if self._session is None:
            raise RuntimeError("Fetcher.start() was not awaited")
        try:
            # The wait for a slot counts against the total timeout: a CA that hangs must not
            # queue fetches for longer than total_timeout.
            async with (
                asyncio.timeout(self.settings.total_timeout),
                self._limit(url),
                self._session.post(
                    url,
                    data=request_der,
                    headers={"Content-Type": "application/ocsp-request"},
                    allow_redirects=False,
                ) as resp,
            ):
                if resp.status != 200:
                    raise UpstreamError(f"HTTP {resp.status}")
                return await self._read(resp)
        except TimeoutError as exc:
            raise UpstreamError("timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.settings.max_response_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise UpstreamError(f"response of {resp.content_length} bytes exceeds {cap}")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(16384):
            body += chunk
            if len(body) > cap:
                raise UpstreamError(f"response exceeds {cap} bytes")
        return bytes(body)


class HttpSource:
    """The Source that POSTs the key's OCSP request to the CA responder the Job names."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher

    async def fetch(self, key: CertKey, job: Job) -> bytes:
        return await self.fetcher.fetch(job.url, build_request(key, job.name_hash))
