"""The status of each configured certificate and its verdict: pure functions of what is known about
it and the time now (injected), shared by ``/status.json``, the page, the metrics and
``ocspproxy status`` (the service's view or, without it, the state directory's).

Verdicts:

- ``ok``: a good staple, its last fetch fine, and more than the critical margin left;
- ``warning``: the staple is good with more than the margin left, but its refresh is failing;
- ``critical``: no staple, an expired one, one that expires within the margin (``critical_margin``,
  at most the last ``refresh.margin`` of its validity: 20 %, so a one-minute test response is not
  critical all its life), or the CA says revoked or unknown;
- ``none``: nothing to staple, and why (no OCSP URL, issuer not found, file unreadable).

``ocspproxy status`` exits with the worst: 0 ok or none, 1 warning, 2 critical (monitoring-plugin
codes; 3, cannot tell, is the command's own).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ocspproxy.core.staple import CertStatus, Staple

__all__ = ["Row", "Verdict", "exit_code", "judge", "orphan_row", "sort_rows", "span", "summary"]


class Verdict(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    NONE = "none"

    @property
    def code(self) -> int:
        """The monitoring-plugin exit code it stands for."""
        return {"ok": 0, "none": 0, "warning": 1, "critical": 2}[self.value]

    @property
    def urgency(self) -> int:
        return {"critical": 0, "warning": 1, "none": 2, "ok": 3}[self.value]


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One configured certificate, as reported."""

    files: tuple[str, ...]
    subject: str | None
    serial: str | None  # hex, as in the request lines
    issuer: str | None
    ocsp_url: str | None
    status: str  # good, revoked, unknown, expired, missing, or none (nothing to staple)
    this_update: datetime | None = None
    next_update: datetime | None = None
    produced_at: datetime | None = None
    next_refresh: datetime | None = None
    last_fetch: datetime | None = None
    last_result: str | None = None
    last_error: str | None = None
    failures: int = 0
    verdict: Verdict
    why: str

    def to_json(self) -> dict[str, object]:
        def t(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "files": list(self.files),
            "subject": self.subject,
            "serial": self.serial,
            "issuer": self.issuer,
            "ocsp_url": self.ocsp_url,
            "status": self.status,
            "this_update": t(self.this_update),
            "next_update": t(self.next_update),
            "produced_at": t(self.produced_at),
            "next_refresh": t(self.next_refresh),
            "last_fetch": {"time": t(self.last_fetch), "result": self.last_result, "error": self.last_error}
            if self.last_fetch is not None
            else None,
            "consecutive_failures": self.failures,
            "verdict": self.verdict.value,
            "why": self.why,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Row:
        """A row as ``to_json`` gave it (``ocspproxy status`` reading the service's JSON)."""

        def t(value: object) -> datetime | None:
            return None if value is None else datetime.fromisoformat(str(value))

        def s(value: object) -> str | None:
            return None if value is None else str(value)

        last = data.get("last_fetch")
        last = last if isinstance(last, dict) else {}
        files = data.get("files")
        failures = data.get("consecutive_failures")
        return cls(
            files=tuple(str(f) for f in files) if isinstance(files, list) else (),
            subject=s(data.get("subject")),
            serial=s(data.get("serial")),
            issuer=s(data.get("issuer")),
            ocsp_url=s(data.get("ocsp_url")),
            status=str(data.get("status")),
            this_update=t(data.get("this_update")),
            next_update=t(data.get("next_update")),
            produced_at=t(data.get("produced_at")),
            next_refresh=t(data.get("next_refresh")),
            last_fetch=t(last.get("time")),
            last_result=s(last.get("result")),
            last_error=s(last.get("error")),
            failures=failures if isinstance(failures, int) else 0,
            verdict=Verdict(str(data.get("verdict"))),
            why=str(data.get("why")),
        )


def span(seconds: float) -> str:
    """A duration for people: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _margin(staple: Staple, critical_margin: float, refresh_margin: float) -> timedelta:
    return timedelta(seconds=min(critical_margin, refresh_margin * staple.validity_seconds))


def judge(
    *,
    url: str | None,
    staple: Staple | None,
    failures: int,
    error: str | None,
    now: datetime,
    critical_margin: float,
    refresh_margin: float,
) -> tuple[str, Verdict, str]:
    """(status, verdict, why) of a certificate of the configuration: its CA's URL, the staple held
    (expired or not), how many fetches in a row brought nothing usable, the last one's error."""
    failing = f"; last {failures} fetch{'es' if failures > 1 else ''} failed: {error}" if failures else ""
    if url is None:
        return "none", Verdict.NONE, "no OCSP URL in the certificate and none configured for its issuer"
    if staple is None:
        why = f"no staple: {error}" if error else "no staple fetched yet"
        return "missing", Verdict.CRITICAL, why
    if not staple.servable(now):
        why = f"expired {span((now - staple.next_update).total_seconds())} ago"
        return "expired", Verdict.CRITICAL, why + failing
    left = staple.next_update - now
    if staple.status is CertStatus.REVOKED:
        when = staple.revocation_time.isoformat() if staple.revocation_time else "an unknown time"
        return "revoked", Verdict.CRITICAL, f"the CA says the certificate is revoked (since {when})"
    if staple.status is CertStatus.UNKNOWN:
        return "unknown", Verdict.CRITICAL, "the CA does not know this certificate (wrong CA or URL?)"
    expires = f"expires in {span(left.total_seconds())}"
    if left <= _margin(staple, critical_margin, refresh_margin):
        return "good", Verdict.CRITICAL, expires + failing
    if failures:
        return "good", Verdict.WARNING, f"refresh failing ({failures} in a row: {error}); good, {expires}"
    return "good", Verdict.OK, f"good, {expires}"


def orphan_row(path: str, subject: str | None, reason: str) -> Row:
    """A configured certificate file with nothing to staple."""
    return Row(
        files=(path,),
        subject=subject,
        serial=None,
        issuer=None,
        ocsp_url=None,
        status="none",
        verdict=Verdict.NONE,
        why=reason,
    )


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Most urgent first: by verdict, then the soonest nextUpdate, then the file."""
    far = datetime.max.replace(tzinfo=None)

    def key(row: Row) -> tuple[int, datetime, tuple[str, ...]]:
        when = row.next_update.replace(tzinfo=None) if row.next_update is not None else far
        return row.verdict.urgency, when, row.files

    return sorted(rows, key=key)


def summary(rows: Iterable[Row]) -> dict[str, int]:
    counts = {verdict.value: 0 for verdict in Verdict}
    for row in rows:
        counts[row.verdict.value] += 1
    return counts


def exit_code(rows: Iterable[Row]) -> int:
    """0 all ok (or nothing to staple), 1 a warning, 2 a critical."""
    return max((row.verdict.code for row in rows), default=0)
