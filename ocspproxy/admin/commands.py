"""``ocspproxy status`` and ``ocspproxy refresh``: the admin listener's clients, for a terminal, a
script (``--json``) and a monitoring system.

``status`` exits with monitoring-plugin codes, so it is a Nagios/Icinga check as it is: 0 every
staple fine (or nothing to staple), 1 a warning, 2 a critical, 3 cannot tell. With no service to
ask it reads the configuration and the state directory instead and says so; then it exits 2 when a
stored staple is critical, else 3 (whether anything serves them cannot be told).

``refresh`` exits 0 when every fetch brought a usable answer, 1 when one did not (or a file is no
configured certificate), 3 when the service cannot be asked.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ocspproxy.admin.address import AdminAddress, parse_admin
from ocspproxy.admin.rows import state_rows
from ocspproxy.admin.server import REFRESH_WAIT, status_document
from ocspproxy.admin.status import Row, span, summary
from ocspproxy.config import Config, ConfigError, load_config

__all__ = ["Context", "refresh_command", "status_command"]

UNKNOWN = 3
_NAMES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass(kw_only=True)
class Context:
    """What the commands touch outside their arguments (replaced in tests)."""

    out: Callable[[str], None] = print
    err: Callable[[str], None] = _stderr
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    timeout: float = 10.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Unreachable(Exception):
    """The admin listener could not be asked (refused, missing socket, timeout)."""


def ask(address: AdminAddress, method: str, path: str, body: object, timeout: float) -> tuple[int, Any]:
    """(HTTP status, decoded JSON) of one request. Raises Unreachable."""
    if address.path is not None:
        conn: http.client.HTTPConnection = _UnixConnection(str(address.path), timeout)
    else:
        conn = http.client.HTTPConnection(address.host or "127.0.0.1", address.port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read(64 << 20)
        return response.status, json.loads(text)
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
    except ValueError as exc:
        raise Unreachable(f"not a JSON answer: {exc}") from exc
    finally:
        conn.close()


def _config(config_file: Path | None, state_dir: Path | None) -> Config:
    overrides = {"state_dir": state_dir.resolve()} if state_dir else {}
    return load_config(config_file, overrides)


def _address(admin: str | None, config_file: Path | None, state_dir: Path | None) -> AdminAddress | None:
    """The admin listener to ask: --admin, else the configuration's admin_listen (None: off)."""
    if admin is not None:
        try:
            return parse_admin(admin)
        except ValueError as exc:
            raise ConfigError("--admin", str(exc)) from None
    return _config(config_file, state_dir).admin_listen


def _cell(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = (value - now).total_seconds()
    return f"in {span(seconds)}" if seconds >= 0 else f"{span(seconds)} ago"


def table(rows: list[Row], now: datetime) -> list[str]:
    """The rows for a terminal: verdict, status, expiry, next refresh, certificate, why."""
    head = ("VERDICT", "STATUS", "NEXT UPDATE", "REFRESH", "CERTIFICATE", "WHY")
    lines = [head]
    for row in rows:
        name = row.subject or "?"
        where = row.files[0] if row.files else ""
        lines.append(
            (
                row.verdict.value,
                row.status,
                _cell(row.next_update, now),
                _cell(row.next_refresh, now),
                f"{name} ({where})" if where else name,
                row.why,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(line[:4], widths, strict=False)), *line[4:]])
        for line in lines
    ]


def _headline(code: int, rows: list[Row], where: str) -> str:
    counts = summary(rows)
    text = ", ".join(f"{n} {name}" for name, n in counts.items())
    perf = " ".join(f"{name}={n}" for name, n in counts.items())
    return f"OCSPPROXY {_NAMES[code]} - {text} ({where}) | {perf}"


def status_command(
    *,
    admin: str | None,
    config_file: Path | None,
    state_dir: Path | None,
    as_json: bool,
    ctx: Context | None = None,
) -> int:
    ctx = ctx or Context()
    try:
        address = _address(admin, config_file, state_dir)
    except ConfigError as exc:
        ctx.out(f"OCSPPROXY UNKNOWN - configuration error: {exc}")
        return UNKNOWN
    why = "the admin listener is off (admin_listen is empty)"
    if address is not None:
        try:
            status, document = ask(address, "GET", "/status.json", None, ctx.timeout)
        except Unreachable as exc:
            why = f"service not reachable at {address.url} ({exc})"
        else:
            if status != 200 or not isinstance(document, dict):
                ctx.out(f"OCSPPROXY UNKNOWN - {address.url} answered HTTP {status}")
                return UNKNOWN
            return _print_service(document, address, as_json, ctx)
    return _from_state(why, config_file, state_dir, as_json, ctx)


def _print_service(document: dict[str, Any], address: AdminAddress, as_json: bool, ctx: Context) -> int:
    rows = [Row.from_json(item) for item in document.get("certificates", [])]
    ready = bool(document.get("ready"))
    code = int(document.get("exit_code", UNKNOWN)) if ready else UNKNOWN
    if as_json:
        ctx.out(json.dumps(document, indent=1))
        return code
    where = f"service at {address.url}" + ("" if ready else ", still loading its stored staples")
    ctx.out(_headline(code, rows, where))
    now = datetime.fromisoformat(document["now"]) if "now" in document else ctx.now()
    for line in table(rows, now):
        ctx.out(line)
    return code


def _from_state(
    why: str, config_file: Path | None, state_dir: Path | None, as_json: bool, ctx: Context
) -> int:
    try:
        config = _config(config_file, state_dir)
        rows = state_rows(config, ctx.now())
    except ConfigError as exc:
        ctx.out(f"OCSPPROXY UNKNOWN - {why}; cannot read the configuration instead: {exc}")
        return UNKNOWN
    worst = max((row.verdict.code for row in rows), default=0)
    code = 2 if worst == 2 else UNKNOWN
    source = f"state directory {config.state_dir}"
    if as_json:
        document = status_document(rows, now=ctx.now(), ready=True, source=source)
        document.update(exit_code=code, service_error=why)
        ctx.out(json.dumps(document, indent=1))
        return code
    ctx.out(_headline(code, rows, f"{why}; read the {source} instead"))
    for line in table(rows, ctx.now()):
        ctx.out(line)
    return code


def refresh_command(
    *,
    admin: str | None,
    config_file: Path | None,
    state_dir: Path | None,
    everything: bool,
    files: list[str],
    as_json: bool,
    ctx: Context | None = None,
) -> int:
    ctx = ctx or Context()
    try:
        address = _address(admin, config_file, state_dir)
    except ConfigError as exc:
        ctx.err(f"ocspproxy refresh: configuration error: {exc}")
        return UNKNOWN
    if address is None:
        ctx.err("ocspproxy refresh: the admin listener is off (admin_listen is empty); give --admin")
        return UNKNOWN
    body: dict[str, object] = {"all": True} if everything else {"files": [os.path.abspath(f) for f in files]}
    try:
        status, answer = ask(address, "POST", "/refresh", body, REFRESH_WAIT + ctx.timeout)
    except Unreachable as exc:
        ctx.err(f"ocspproxy refresh: service not reachable at {address.url} ({exc})")
        return UNKNOWN
    if status != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else answer
        ctx.err(f"ocspproxy refresh: {address.url} answered HTTP {status}: {error}")
        return UNKNOWN if status >= 500 else 1
    if as_json:
        ctx.out(json.dumps(answer, indent=1))
    results: list[dict[str, Any]] = answer.get("results", [])
    unknown: list[str] = answer.get("unknown", [])
    bad = [r for r in results if r.get("failed", True)]
    if not as_json:
        for r in results:
            line = f"{r.get('file')}: {r.get('result')}"
            if r.get("status"):
                line += f", staple {r['status']} until {r.get('next_update')}"
            if r.get("reason"):
                line += f" ({r['reason']})"
            ctx.out(line)
        for name in unknown:
            ctx.out(f"{name}: not a configured certificate")
        ctx.out(f"{len(results) - len(bad)} of {len(results)} fetched a usable answer")
    return 1 if bad or unknown else 0
