"""``GET /``: the status page. Server-rendered HTML, one row per configured certificate, most urgent
first, the verdict in colour, and a timeline per certificate (thisUpdate → nextUpdate, now, the
next refresh) so a glance shows which staples are at risk. No script, no external asset; every
value is escaped; it reloads itself every 30 s (a meta refresh)."""

from __future__ import annotations

from datetime import datetime
from html import escape

from ocspproxy import __version__
from ocspproxy.admin.status import Row, span, summary

__all__ = ["CSP", "render_page"]

# Nothing but the page itself and its inline style.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_COLOURS = {"ok": "#1a7f37", "warning": "#b35900", "critical": "#c62828", "none": "#57606a"}

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;color:#1f2328}
h1{font-size:1.3rem;margin:0 0 .3rem}
.meta{color:#57606a;margin-bottom:1rem}
.counts span{display:inline-block;margin-right:1rem;font-weight:600}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
.verdict{color:#fff;border-radius:4px;padding:.1rem .5rem;font-weight:700;text-transform:uppercase;
font-size:.8rem;white-space:nowrap}
.file{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;word-break:break-all}
.small{color:#57606a;font-size:.85rem}
.fetch{min-width:11rem}
.cert{max-width:32rem}
"""


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "—"
    seconds = (value - now).total_seconds()
    relative = f"in {span(seconds)}" if seconds >= 0 else f"{span(seconds)} ago"
    return f'<span title="{escape(value.isoformat())}">{relative}</span>'


def _fraction(start: datetime, end: datetime, at: datetime) -> float:
    whole = (end - start).total_seconds()
    return 0.0 if whole <= 0 else min(1.0, max(0.0, (at - start).total_seconds() / whole))


def timeline(row: Row, now: datetime, width: int = 260) -> str:
    """An SVG bar: thisUpdate at the left, nextUpdate at the right, the elapsed part filled in the
    verdict's colour, a black line at now and a blue mark at the next refresh."""
    if row.this_update is None or row.next_update is None:
        return f'<span class="small">{"nothing to staple" if row.status == "none" else "no staple"}</span>'
    colour = _COLOURS[row.verdict.value]
    x_now = round(_fraction(row.this_update, row.next_update, now) * width, 1)
    parts = [
        f'<svg width="{width}" height="26" viewBox="0 0 {width} 26" role="img" '
        f'aria-label="validity timeline">',
        f'<rect x="0" y="6" width="{width}" height="10" fill="#eaeef2" rx="3"/>',
        f'<rect x="0" y="6" width="{x_now}" height="10" fill="{colour}" rx="3"/>',
        f'<line x1="{x_now}" y1="2" x2="{x_now}" y2="20" stroke="#1f2328" stroke-width="2">'
        f"<title>now</title></line>",
    ]
    if row.next_refresh is not None:
        x_refresh = round(_fraction(row.this_update, row.next_update, row.next_refresh) * width, 1)
        parts.append(
            f'<path d="M{x_refresh} 3 l5 8 l-5 8 l-5 -8 z" fill="#0969da" stroke="#fff">'
            f"<title>next refresh {escape(row.next_refresh.isoformat())}</title></path>"
        )
    parts.append("</svg>")
    left = (row.next_update - now).total_seconds()
    caption = f"{span(left)} left" if left > 0 else f"expired {span(left)} ago"
    if row.next_refresh is not None:
        caption += f" · refresh {_when(row.next_refresh, now)}"
    return "".join(parts) + f'<div class="small">{caption}</div>'


def _row_html(row: Row, now: datetime) -> str:
    colour = _COLOURS[row.verdict.value]
    files = "<br>".join(escape(f) for f in row.files)
    subject = escape(row.subject or "—")
    serial = escape(row.serial or "—")
    last = "—"
    if row.last_fetch is not None:
        last = f"{escape(row.last_result or '')} {_when(row.last_fetch, now)}"
        if row.last_error:
            last += f'<div class="small">{escape(row.last_error)}</div>'
    return (
        f'<tr data-verdict="{row.verdict.value}">'
        f'<td><span class="verdict" style="background:{colour}">{row.verdict.value}</span></td>'
        f'<td class="cert">{subject}<div class="file">{files}</div>'
        f'<div class="small">serial {serial}</div></td>'
        f'<td>{escape(row.status)}<div class="small">{escape(row.why)}</div></td>'
        f"<td>{timeline(row, now)}</td>"
        f'<td class="fetch">{last}<div class="small">failures in a row: {row.failures}</div></td>'
        f'<td class="small">{escape(row.issuer or "—")}<br>{escape(row.ocsp_url or "")}</td>'
        "</tr>"
    )


def render_page(rows: list[Row], *, now: datetime, ready: bool, source: str) -> str:
    """The whole page for rows (already in urgency order)."""
    counts = summary(rows)
    count_html = "".join(
        f'<span style="color:{_COLOURS[name]}">{count} {name}</span>' for name, count in counts.items()
    )
    state = "" if ready else " — still loading stored staples"
    body = "".join(_row_html(row, now) for row in rows) or (
        '<tr><td colspan="6">No certificate is configured.</td></tr>'
    )
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="refresh" content="30">'
        f"<title>ocspproxy status</title><style>{_STYLE}</style></head><body>"
        f"<h1>ocspproxy — staples</h1>"
        f'<div class="meta">{escape(source)} · {escape(now.isoformat(timespec="seconds"))} · '
        f"version {escape(__version__)}{state}</div>"
        f'<div class="counts">{count_html}</div>'
        '<p class="legend small">Timeline: thisUpdate on the left, nextUpdate on the right; '
        "the black line is now, the blue mark the next refresh.</p>"
        "<table><thead><tr><th>verdict</th><th>certificate</th><th>staple</th>"
        "<th>validity</th><th>last fetch</th><th>issuer, OCSP URL</th></tr></thead>"
        f"<tbody>{body}</tbody></table></body></html>"
    )
