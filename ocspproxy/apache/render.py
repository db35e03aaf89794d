"""Scan reports as JSON objects and as readable text (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ocspproxy.apache.scan import REASONS, SiteReport, attention

__all__ = ["render_text", "summary", "to_json"]


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def to_json(reports: Sequence[SiteReport]) -> list[dict[str, Any]]:
    """One object per site; ``problem`` is the first problem's text (null when none), ``problems`` all;
    ``attention`` whether anything about the site needs it, ``reasons`` what (see ``attention``)."""
    out: list[dict[str, Any]] = []
    for r in reports:
        site = r.site
        reasons = attention(r)
        out.append(
            {
                "vhost": site.vhost,
                "server_name": site.server_name,
                "config_file": str(site.config_file),
                "line": site.line,
                "certificate_file": str(site.certificate_file),
                "subject": r.subject,
                "serial": r.serial,
                "issuer_found": r.issuer_source is not None,
                "issuer": r.issuer,
                "issuer_source": r.issuer_source,
                "ocsp_url": r.ocsp_url,
                "use_stapling": site.use_stapling,
                "stapling_force_url": site.stapling_force_url,
                "through_ocspproxy": r.through_ocspproxy,
                "stapling_possible": r.stapling_possible,
                "staple_status": r.staple_status,
                "staple_next_update": _iso(r.staple_next_update),
                "staple_file": None if r.staple_file is None else str(r.staple_file),
                "problem": r.problems[0].message if r.problems else None,
                "problems": [{"kind": p.kind, "message": p.message, "fix": p.fix} for p in r.problems],
                "attention": bool(reasons),
                "reasons": list(reasons),
            }
        )
    return out


def _stapling(r: SiteReport) -> str:
    site = r.site
    state = {True: "on", False: "off", None: "not set (off)"}[site.use_stapling]
    force = site.stapling_force_url
    if force is None:
        where = "the CA directly (no SSLStaplingForceURL)"
    elif r.through_ocspproxy:
        where = f"ocspproxy at {force}"
    else:
        where = f"{force} (SSLStaplingForceURL; not ocspproxy)"
    return f"SSLUseStapling {state}; {'asks' if site.use_stapling else 'would ask'} {where}"


def _staple(r: SiteReport) -> str:
    if r.staple_status is None:
        return "cannot tell (no issuer)" if r.serial else "cannot tell"
    if r.staple_status == "none":
        return "none: the certificate has no OCSP URL, nothing to staple"
    text = r.staple_status
    if r.staple_next_update is not None:
        text += f", nextUpdate {_iso(r.staple_next_update)}"
    if r.staple_status == "missing":
        text += " (nothing stored yet: is ocspproxy running with this certificate?)"
    elif r.staple_status == "unreadable":
        text += f" ({r.staple_file} cannot be read: run as ocspproxy's user or root)"
    return text


def _block(r: SiteReport) -> list[str]:
    site = r.site
    title = site.server_name or "(no ServerName)"
    vhost = "main server" if site.vhost == "_default_" else f"<VirtualHost {site.vhost}>"
    if site.vhost_file is not None:
        vhost += f" at {site.vhost_file}:{site.vhost_line}"
    rows = [
        ("vhost", vhost),
        ("certificate", f"{site.certificate_file} (SSLCertificateFile at {site.config_file}:{site.line})"),
    ]
    if r.subject is not None:
        rows += [("subject", r.subject), ("serial", r.serial or "")]
        issuer = f"found in {r.issuer_source} ({r.issuer})" if r.issuer_source else "NOT FOUND"
        rows.append(("issuer", issuer))
        rows.append(("OCSP URL", r.ocsp_url or "none"))
    rows += [
        ("stapling", _stapling(r)),
        ("via ocspproxy", "possible" if r.stapling_possible else "NOT possible"),
        ("staple", _staple(r)),
    ]
    lines = [title]
    lines += [f"  {label:<15}{value}" for label, value in rows]
    for p in r.problems:
        lines.append(f"  PROBLEM        {p.message}")
        if p.fix:
            lines.append(f"    fix:         {p.fix}")
    return lines


def render_text(
    reports: Sequence[SiteReport], *, main_file: Path, found_how: str, files_read: int, state_dir: Path
) -> str:
    lines = [
        f"Apache configuration: {main_file} ({found_how}; {files_read} files read)",
        f"ocspproxy state directory: {state_dir}",
        "",
    ]
    if not reports:
        lines += ["No TLS virtual host (no SSLCertificateFile in effect).", ""]
    for r in reports:
        lines += [*_block(r), ""]
    lines.append(summary(reports))
    return "\n".join(lines) + "\n"


def summary(reports: Sequence[SiteReport]) -> str:
    """E.g. "3 TLS sites: 1 stapled good through ocspproxy, 2 need attention (1 revoked, 1 no OCSP
    URL)." Each reason is counted once per site that has it."""
    found = [attention(r) for r in reports]
    fine = sum(not reasons for reasons in found)
    needing = len(reports) - fine
    counts = Counter(reason for reasons in found for reason in reasons)
    text = (
        f"{len(reports)} TLS site{'s' if len(reports) != 1 else ''}: {fine} stapled good through ocspproxy, "
        f"{needing} need{'s' if needing == 1 else ''} attention"
    )
    if counts:
        text += " (" + ", ".join(f"{counts[reason]} {reason}" for reason in REASONS if reason in counts) + ")"
    return text + "."
