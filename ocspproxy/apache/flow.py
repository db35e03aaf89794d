"""The steps of ``ocspproxy apache install``, each one printed: find, plan, write, check, test, undo or keep,
reload. Programs run through the injected runner; files are the only other I/O."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ocspproxy.apache.config import ApacheConfig, ApacheConfigError
from ocspproxy.apache.ctl import (
    RELOAD_TIMEOUT,
    TEST_TIMEOUT,
    Command,
    Layout,
    Runner,
    Tools,
    config_test_command,
    detect_layout,
    reload_commands,
)
from ocspproxy.apache.install import (
    InstallError,
    PathState,
    Placement,
    apply_file,
    apply_link,
    check_placement,
    describe_changes,
    find_stapling_directives,
    path_state,
    plan_placement,
    restore,
    run_first,
    stapling_warnings,
)
from ocspproxy.apache.snippet import render_snippet

__all__ = ["InstallRequest", "run_install"]

_LAYOUTS = {
    Layout.DEBIAN: "Debian (conf-available/ + conf-enabled/)",
    Layout.RHEL: "RHEL (conf/ + conf.d/)",
}


@dataclass(frozen=True, kw_only=True)
class InstallRequest:
    main_file: Path
    apache: ApacheConfig
    proxy_url: str
    answer_budget: float
    skew: float
    tools: Tools
    compiled: Path | None  # the main file Apache uses by default (from -V)
    dry_run: bool = False
    reload: bool = False


def _same(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _other_files(request: InstallRequest, placement: Placement) -> list[tuple[Path, str]]:
    ours = [placement.file, *([placement.link] if placement.link else [])]
    texts: list[tuple[Path, str]] = []
    for path in request.apache.files_read:
        if any(_same(path, p) for p in ours) or path.name == "envvars":
            continue
        try:
            texts.append((path, path.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return texts


@dataclass(frozen=True, kw_only=True)
class _Plan:
    placement: Placement
    content: str
    test: Command
    file_before: PathState
    link_before: PathState | None


def _plan(request: InstallRequest, out: Callable[[str], None]) -> _Plan:
    layout = detect_layout(request.main_file)
    placement = plan_placement(request.main_file, layout)  # raises for an unknown layout
    out(f"layout: {_LAYOUTS[layout]}")
    test = config_test_command(main_file=request.main_file, tools=request.tools, compiled=request.compiled)
    if test is None:
        raise InstallError("no apache2 or httpd program found to test the configuration with")
    certificates = {site.certificate_file for site in request.apache.sites}
    out(f"TLS sites: {len(request.apache.sites)}, certificates: {len(certificates)}")
    if not certificates:
        out("note: no SSLCertificateFile in effect: stapling will be on, but there is nothing to staple yet")
    content = render_snippet(
        proxy_url=request.proxy_url,
        layout=layout,
        certificates=max(1, len(certificates)),
        answer_budget=request.answer_budget,
        skew=request.skew,
    )
    directives = find_stapling_directives(_other_files(request, placement))
    for warning in stapling_warnings(directives, request.proxy_url):
        out(f"warning: {warning}")
    check_placement(placement)
    link_before = path_state(placement.link) if placement.link else None
    return _Plan(
        placement=placement,
        content=content,
        test=test,
        file_before=path_state(placement.file),
        link_before=link_before,
    )


def _file_changes(plan: _Plan) -> bool:
    return bool(describe_changes(plan.placement.file, plan.file_before, plan.content))


def _link_changes(plan: _Plan) -> bool:
    return plan.link_before is not None and not plan.placement.link_in_place(plan.link_before)


def _show_plan(plan: _Plan, out: Callable[[str], None], *, dry_run: bool) -> None:
    """Print what will change, with a diff of the file (the whole new file in a dry run)."""
    p = plan.placement
    would = "would " if dry_run else "will "
    if not _file_changes(plan):
        out(f"{p.file}: unchanged")
    else:
        creating = plan.file_before.kind == "missing"
        out(f"{p.file}: {would}{'create' if creating else 'replace'}")
        for line in (
            describe_changes(p.file, plan.file_before, plan.content) if dry_run or not creating else []
        ):
            out(f"  {line}")
    if p.link is not None and plan.link_before is not None:
        before = plan.link_before
        if not _link_changes(plan):
            out(f"{p.link} -> {before.link_value}: unchanged")
        else:
            now = f" (now -> {before.link_value})" if before.kind == "link" else ""
            out(f"{p.link}: {would}link to {p.link_value}{now}")


def _undo(applied: list[tuple[Path, PathState]], out: Callable[[str], None]) -> None:
    """Put back, newest first, every path a change was attempted on."""
    while applied:
        path, before = applied.pop()
        restore(path, before)
        if before.kind == "missing":
            out(f"rolled back {path}: removed (it was not there)")
        elif before.kind == "link":
            out(f"rolled back {path}: -> {before.link_value} again")
        else:
            out(f"rolled back {path}: previous content, mode and owner")


def _apply(plan: _Plan, applied: list[tuple[Path, PathState]], out: Callable[[str], None]) -> None:
    """Make the changes, noting each path before touching it so that a failure half-way is undone too."""
    p = plan.placement
    if _file_changes(plan):
        applied.append((p.file, plan.file_before))
        out(f"{p.file}: {apply_file(p.file, plan.content, plan.file_before)}")
    if (
        p.link is not None
        and p.link_value is not None
        and plan.link_before is not None
        and _link_changes(plan)
    ):
        applied.append((p.link, plan.link_before))
        out(f"{p.link} -> {p.link_value}: {apply_link(p.link, p.link_value, plan.link_before)}")


def _install(
    request: InstallRequest,
    plan: _Plan,
    applied: list[tuple[Path, PathState]],
    *,
    runner: Runner,
    out: Callable[[str], None],
    err: Callable[[str], None],
    reread: Callable[[], ApacheConfig],
) -> bool:
    """Change, check that Apache reads the file, test; False (after undoing) when anything failed."""
    try:
        _apply(plan, applied, out)
        included = reread().files_read
    except (OSError, InstallError, ApacheConfigError) as exc:
        _undo(applied, out)
        err(f"ocspproxy: install failed: {exc}; rolled back")
        return False
    if not any(_same(path, plan.placement.included_as) for path in included):
        _undo(applied, out)
        err(
            f"ocspproxy: {request.main_file} does not read {plan.placement.included_as} "
            "(no Include matches it); rolled back"
        )
        return False
    out("testing Apache's configuration:")
    if run_first([plan.test], runner=runner, timeout=TEST_TIMEOUT, out=out):
        return True
    if not applied:
        err("ocspproxy: Apache's config test fails, and not because of ocspproxy's file (unchanged)")
        return False
    _undo(applied, out)
    out("testing again without ocspproxy's changes:")
    if run_first([plan.test], runner=runner, timeout=TEST_TIMEOUT, out=out):
        err("ocspproxy: Apache's config test failed with ocspproxy's settings; rolled back")
    else:
        err(
            "ocspproxy: Apache's config test failed; rolled back. It fails without ocspproxy's settings "
            "too: fix the error above, then run install again"
        )
    return False


def run_install(
    request: InstallRequest,
    *,
    runner: Runner,
    out: Callable[[str], None],
    err: Callable[[str], None],
    reread: Callable[[], ApacheConfig],
) -> int:
    try:
        plan = _plan(request, out)
    except InstallError as exc:
        err(f"ocspproxy: cannot install: {exc}; nothing changed")
        return 2
    _show_plan(plan, out, dry_run=request.dry_run)
    changed = _file_changes(plan) or _link_changes(plan)
    reloads = reload_commands(
        main_file=request.main_file,
        tools=request.tools,
        compiled=request.compiled,
        layout=plan.placement.layout,
    )
    if request.dry_run:
        out(f"would test the configuration with: {plan.test.shown()}")
        if request.reload:
            out("would reload Apache with: " + (" || ".join(c.shown() for c in reloads) or "(nothing found)"))
        out("dry run: nothing changed")
        return 0
    applied: list[tuple[Path, PathState]] = []
    try:
        if not _install(request, plan, applied, runner=runner, out=out, err=err, reread=reread):
            return 1
    except BaseException:  # interrupted (Ctrl-C, a bug) before the test passed: leave nothing half-done
        _undo(applied, out)
        raise
    out(
        "installed: Apache staples through ocspproxy once reloaded"
        if changed
        else "unchanged: already installed"
    )
    if not request.reload:
        if changed:
            how = " or ".join(f"`{c.shown()}`" for c in reloads) or "a restart"
            out(f"Apache not reloaded (no --reload); apply it with {how}")
        return 0
    if not run_first(reloads, runner=runner, timeout=RELOAD_TIMEOUT, out=out):
        err("ocspproxy: reloading Apache failed; the configuration stays installed, reload Apache yourself")
        return 1
    out("Apache reloaded")
    return 0
