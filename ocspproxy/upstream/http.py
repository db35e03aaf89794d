"""HTTP client for the CAs' OCSP responders: timeouts, a size cap and a per-upstream concurrency cap,
through a forward proxy when configured (``upstream/proxy.py``); ``HttpSource``, the Source that asks
the CA named in the Job."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from ocspproxy.core.ocsp import CertKey, build_request
from ocspproxy.upstream.base import Job, SourceError
from ocspproxy.upstream.breaker import Breaker
from ocspproxy.upstream.proxy import ProxyRoute

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
    # [upstream] proxy, proxy_auth_file, use_env_proxy: read into a ProxyRoute at start-up
    proxy: str | None = None
    proxy_auth_file: Path | None = None
    use_env_proxy: bool = False
    # An upstream failing hold_after times in a row is given a pause: hold_first seconds, doubling
    # up to hold_max (``upstream/breaker.py``): a CA that comes back is noticed within about a
    # minute, as with refresh.retry_unservable. Not configuration keys: tests shorten them.
    hold_after: int = 5
    hold_first: float = 10.0
    hold_max: float = 60.0


class Fetcher:
    """POSTs DER OCSP requests. Redirects are not followed: the URL we were configured with is the one
    we talk to."""

    def __init__(
        self, settings: UpstreamSettings, route: ProxyRoute | None = None, breaker: Breaker | None = None
    ) -> None:
        self.settings = settings
        self.route = route or ProxyRoute()
        self.breaker = breaker or Breaker(
            threshold=settings.hold_after, first=settings.hold_first, cap=settings.hold_max
        )
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

    async def fetch(self, url: str, request_der: bytes, *, proxy: str | None = None) -> bytes:
        """POST request_der to url (through proxy, an absolute-URI request, when given). Raises
        UpstreamError; when the proxy failed, its reason names the proxy, not the CA; SourceHeld,
        without a connection, while this upstream is given a pause (``Breaker``)."""
        if self._session is None:
            raise RuntimeError("Fetcher.start() was not awaited")
        via = f" via proxy {proxy}" if proxy else ""
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}{via}"
        probe = self.breaker.check(where)
        try:
            der = await self._post(url, request_der, proxy, via)
        except UpstreamError as exc:
            self.breaker.failed(where, str(exc), probe=probe)
            raise
        except BaseException:
            if probe:
                self.breaker.abandoned(where)
            raise
        self.breaker.succeeded(where)
        return der

    async def _post(self, url: str, request_der: bytes, proxy: str | None, via: str) -> bytes:
        assert self._session is not None
        headers = {"Content-Type": "application/ocsp-request"}
        proxy_headers = None
        if proxy and self.route.authorization:
            # A plain http:// CA is asked with an absolute-URI request: the proxy reads this header
            # from the request itself; an https:// one through CONNECT, where it goes.
            if url.startswith("https:"):
                proxy_headers = {"Proxy-Authorization": self.route.authorization}
            else:
                headers["Proxy-Authorization"] = self.route.authorization
        try:
            # The wait for a slot counts against the total timeout: a CA that hangs must not
            # queue fetches for longer than total_timeout.
            async with (
                asyncio.timeout(self.settings.total_timeout),
                self._limit(url),
                self._session.post(
                    url,
                    data=request_der,
                    headers=headers,
                    allow_redirects=False,
                    proxy=proxy,
                    proxy_headers=proxy_headers,
                ) as resp,
            ):
                if proxy and resp.status == 407:
                    raise UpstreamError(f"proxy {proxy}: authentication required (HTTP 407)")
                if resp.status != 200:
                    raise UpstreamError(f"HTTP {resp.status}{via}")
                return await self._read(resp)
        except TimeoutError as exc:
            raise UpstreamError(f"timed out{via}") from exc
        except aiohttp.ClientProxyConnectionError as exc:
            raise UpstreamError(f"proxy {proxy}: {_why(exc)}") from exc
        except aiohttp.ClientHttpProxyError as exc:
            raise UpstreamError(f"proxy {proxy}: HTTP {exc.status} {exc.message}".rstrip()) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}{via}") from exc

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
        proxy = self.fetcher.route.proxy_for(job.url, job.issuer_cert)
        return await self.fetcher.fetch(job.url, build_request(key, job.name_hash), proxy=proxy)


def _why(exc: aiohttp.ClientProxyConnectionError) -> str:
    """A connection error in a few words: "connection refused", "Name or service not known"."""
    cause = exc.os_error
    if cause.errno:
        return os.strerror(cause.errno).lower()
    return cause.strerror or str(cause) or type(cause).__name__
