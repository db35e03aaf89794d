"""The admin listener: a second aiohttp server on its own address (``admin_listen``: loopback TCP by
default, or a unix socket), never the OCSP port, which decodes every GET path as OCSP.

``GET /healthz`` (200 while it answers), ``GET /readyz`` (200 once the stored staples are loaded,
else 503), ``GET /metrics`` (Prometheus text), ``GET /status.json`` (every configured certificate
and its verdict), ``GET /`` (the status page), ``POST /refresh`` (``ocspproxy refresh``: fetch the
named certificates now and say what each fetch gave). None of them waits on a CA, except
``/refresh``, whose fetches go through the refresher (single flight, the per-upstream cap).

Bounded like the OCSP port: at most ``MAX_CONNECTIONS`` connections, each closed after
``LIFETIME`` seconds, request lines and headers capped, a request body only for ``/refresh`` and
at most ``MAX_BODY`` bytes read within ``BODY_TIMEOUT``, one refresh at a time. It shows what the
certificates already make public, the files they are read from, and the service's own numbers:
never a file's contents or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from ocspproxy import __version__
from ocspproxy.admin import metrics
from ocspproxy.admin.address import AdminAddress
from ocspproxy.admin.listen import GatedServer, unix_socket
from ocspproxy.admin.page import CSP, render_page
from ocspproxy.admin.status import Row, exit_code, summary
from ocspproxy.admin.view import ServiceView
from ocspproxy.serve.limits import Gate, Limits

__all__ = ["BODY_TIMEOUT", "LIFETIME", "MAX_BODY", "MAX_CONNECTIONS", "AdminServer", "status_document"]

log = structlog.get_logger("ocspproxy")

MAX_CONNECTIONS = 64
LIFETIME = 60.0  # seconds any admin connection may last (a refresh waits at most REFRESH_WAIT)
MAX_BODY = 64 * 1024
BODY_TIMEOUT = 5.0
REFRESH_WAIT = 30.0  # a refresh answers after this even if fetches go on (they are "pending")
REFRESH_AT_ONCE = 32  # forced fetches started at a time (the per-upstream cap applies below)


def status_document(rows: list[Row], *, now: datetime, ready: bool, source: str) -> dict[str, Any]:
    """The JSON of /status.json (and of ``ocspproxy status --json``)."""
    return {
        "source": source,
        "version": __version__,
        "now": now.isoformat(),
        "ready": ready,
        "summary": summary(rows),
        "exit_code": exit_code(rows) if ready else 3,
        "certificates": [row.to_json() for row in rows],
    }


def _json(data: object, status: int = 200) -> web.Response:
    response = web.Response(
        status=status,
        text=json.dumps(data, indent=1) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )
    if status >= 400:
        response.force_close()  # a body left unread is not waited for
    return response


class AdminServer:
    def __init__(self, view: ServiceView, address: AdminAddress) -> None:
        self.view = view
        self.address = address
        self.limits = Limits(
            max_request_bytes=MAX_BODY,
            max_connections=MAX_CONNECTIONS,
            request_timeout=BODY_TIMEOUT,
            connection_lifetime=LIFETIME,
        )
        self.server = GatedServer(
            self.handle,
            Gate(self.limits),
            access_log=None,
            keepalive_timeout=5.0,
            lingering_time=0.0,  # a body left unread (an error answered) is not waited for
            max_line_size=4096,
            max_field_size=8190,
            max_headers=32,
        )
        self.bound: str | None = None  # where it listens, once it does (port 0 resolved)
        self._listener: asyncio.Server | None = None
        self._refreshing = asyncio.Lock()
        self._fetches: set[asyncio.Future[Any]] = set()  # forced fetches, held until done
        self._routes = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/status.json": self.status_json,
            "/": self.page,
        }

    async def start(self) -> bool:
        """Listen; False (logged) when the address cannot be had: the OCSP port serves on."""
        loop = asyncio.get_running_loop()
        try:
            if self.address.path is not None:
                sock = unix_socket(str(self.address.path))
                self._listener = await loop.create_server(self.server, sock=sock)
                self.bound = self.address.url
            else:
                host, port = self.address.host, self.address.port
                self._listener = await loop.create_server(self.server, host, port, reuse_address=True)
                bound_host, bound_port = self._listener.sockets[0].getsockname()[:2]
                self.bound = AdminAddress(bound_host, bound_port).url
        except OSError as exc:
            log.error("cannot listen for the admin listener", address=self.address.url, error=str(exc))
            return False
        if not self.address.loopback:
            log.warning(
                "admin listener not on loopback: anyone who reaches it may read the status and ask "
                "for refreshes",
                address=self.bound,
            )
        log.info("admin listening", address=self.bound)
        return True

    async def close(self) -> None:
        if self._listener is None:
            return
        self._listener.close()
        await self.server.shutdown(1.0)
        if self.address.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.address.path)
        self._listener = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/refresh":
            if request.method != "POST":
                return _json({"error": "use POST"}, 405)
            return await self.refresh(request)
        route = self._routes.get(path)
        if route is None:
            return _json({"error": "not found"}, 404)
        if request.method not in ("GET", "HEAD"):
            return _json({"error": "use GET"}, 405)
        return await route()

    async def healthz(self) -> web.Response:
        return _json({"status": "ok", "version": __version__})

    async def readyz(self) -> web.Response:
        ready = self.view.loaded.is_set()
        return _json({"ready": ready}, 200 if ready else 503)

    async def metrics(self) -> web.Response:
        rows = await self.view.rows()
        found = metrics.families(self.view, rows)
        body = await asyncio.to_thread(metrics.render, found)
        headers = {"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"}
        return web.Response(body=body, headers=headers)

    async def status_json(self) -> web.Response:
        rows = await self.view.rows()
        now = self.view.clock()
        ready = self.view.loaded.is_set()
        return _json(status_document(rows, now=now, ready=ready, source="service"))

    async def page(self) -> web.Response:
        rows = await self.view.rows()
        ready = self.view.loaded.is_set()
        html = render_page(rows, now=self.view.clock(), ready=ready, source=f"ocspproxy at {self.bound}")
        headers = {
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        }
        return web.Response(text=html, content_type="text/html", headers=headers)

    async def refresh(self, request: web.BaseRequest) -> web.Response:
        """Body: {"all": true} or {"files": [...]}. One refresh at a time."""
        if request.content_length is None or request.content_length > MAX_BODY:
            return _json({"error": f"a JSON body of at most {MAX_BODY} bytes, with Content-Length"}, 413)
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                body = await request.content.read(MAX_BODY + 1)
            asked = json.loads(body)
            files = asked.get("files", []) if isinstance(asked, dict) else None
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ValueError("files must be a list of paths")
        except (TimeoutError, ValueError, UnicodeDecodeError) as exc:
            return _json({"error": f'expected {{"all": true}} or {{"files": [...]}}: {exc}'}, 400)
        if not self.view.loaded.is_set():
            return _json({"error": "still loading the certificates; try again shortly"}, 503)
        if self._refreshing.locked():
            return _json({"error": "a refresh is running; try again when it is done"}, 409)
        async with self._refreshing:
            if asked.get("all") is True:
                keys, unknown = self.view.all_keys(), list[str]()
            else:
                keys, unknown = self.view.keys_for(files)
            results = await self._fetch_all(keys)
        return _json({"results": results, "unknown": unknown})

    async def _fetch_all(self, keys: dict[str, Any]) -> list[dict[str, object]]:
        slots = asyncio.Semaphore(REFRESH_AT_ONCE)

        async def one(key: Any) -> Any:
            async with slots:
                return await self.view.refresh(key)

        tasks = {name: asyncio.ensure_future(one(key)) for name, key in keys.items()}
        for task in tasks.values():  # those still running when the answer goes go on: keep them
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)
        if tasks:
            await asyncio.wait(tasks.values(), timeout=REFRESH_WAIT)
        results: list[dict[str, object]] = []
        for name, task in tasks.items():
            row: dict[str, object] = {"file": name, "serial": f"{keys[name].serial:x}"}
            if not task.done():
                row.update(result="pending", reason=f"still fetching after {REFRESH_WAIT:g}s")
            elif task.exception() is not None:
                row.update(result="error", reason=repr(task.exception()))
            elif (outcome := task.result()) is None:
                row.update(result="none", reason="no CA to ask for it (no OCSP URL, or issuer unknown)")
            else:
                staple = outcome.staple
                row.update(
                    result=str(outcome.result),
                    reason=outcome.reason,
                    failed=outcome.failed,
                    status=str(staple.status) if staple else None,
                    next_update=staple.next_update.isoformat() if staple else None,
                )
            results.append(row)
        return results
