"""Install the stapling snippet where the distribution expects it, test Apache's configuration, and undo
everything exactly when the test fails.

Debian: ``conf-available/ocspproxy.conf`` plus the link ``conf-enabled/ocspproxy.conf`` (what
``a2enconf ocspproxy`` makes). RHEL: ``conf.d/ocspproxy.conf``. No other file is ever written.
"""

from __future__ import annotations

import difflib
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocspproxy.apache.ctl import Command, Layout, Runner, RunResult
from ocspproxy.apache.syntax import logical_lines

__all__ = [
    "FILE_NAME",
    "Directive",
    "InstallError",
    "PathState",
    "Placement",
    "apply_file",
    "apply_link",
    "check_placement",
    "describe_changes",
    "find_stapling_directives",
    "path_state",
    "plan_placement",
    "restore",
    "run_first",
    "stapling_warnings",
]

FILE_NAME = "ocspproxy.conf"


class InstallError(Exception):
    """Installing is impossible as things are; str() says why and what to do. Nothing was changed."""


@dataclass(frozen=True, kw_only=True)
class Placement:
    layout: Layout
    file: Path  # where the snippet is written
    link: Path | None = None  # Debian: the conf-enabled/ link that enables it
    link_value: str | None = None  # what the link points to, relative like a2enconf makes it

    @property
    def included_as(self) -> Path:
        """The path Apache's Include reads."""
        return self.link or self.file

    def link_in_place(self, before: PathState) -> bool:
        """True when the link is there and points at the file (relative, like a2enconf, or not)."""
        if self.link is None or before.kind != "link" or before.link_value is None:
            return self.link is None
        target = os.path.normpath(os.path.join(self.link.parent, before.link_value))
        return target == os.path.normpath(self.file)


def plan_placement(main_file: Path, layout: Layout) -> Placement:
    here = main_file.parent
    if layout is Layout.DEBIAN:
        return Placement(
            layout=layout,
            file=here / "conf-available" / FILE_NAME,
            link=here / "conf-enabled" / FILE_NAME,
            link_value=f"../conf-available/{FILE_NAME}",
        )
    if layout is Layout.RHEL:
        return Placement(layout=layout, file=here.parent / "conf.d" / FILE_NAME)
    raise InstallError(
        f"{main_file}: neither a Debian layout (conf-available/ and conf-enabled/ next to it) nor a RHEL "
        "one (conf/ with conf.d/ next to it); put the output of `ocspproxy apache snippet` in a file "
        "and Include it from the main configuration yourself"
    )


# --- exact snapshots --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PathState:
    kind: str  # missing | file | link | other
    content: bytes | None = None
    mode: int | None = None
    owner: tuple[int, int] | None = None
    times_ns: tuple[int, int] | None = None
    link_value: str | None = None


def path_state(path: Path) -> PathState:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return PathState(kind="missing")
    if os.path.islink(path):
        return PathState(kind="link", link_value=os.readlink(path))
    if not path.is_file():
        return PathState(kind="other")
    return PathState(
        kind="file",
        content=path.read_bytes(),
        mode=st.st_mode & 0o7777,
        owner=(st.st_uid, st.st_gid),
        times_ns=(st.st_atime_ns, st.st_mtime_ns),
    )


def _temporary(path: Path) -> Path:
    # a dot name that no Include pattern like *.conf matches
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _write_file(path: Path, content: bytes, mode: int) -> None:
    """Replace path atomically (temporary file, fsync, rename)."""
    tmp = _temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # whatever the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_link(path: Path, value: str) -> None:
    tmp = _temporary(path)
    os.symlink(value, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def restore(path: Path, state: PathState) -> None:
    """Put path back as path_state() saw it: same content, mode, owner and times, or same link, or none."""
    if state.kind == "missing":
        if os.path.lexists(path):
            path.unlink()
    elif state.kind == "link":
        assert state.link_value is not None
        _make_link(path, state.link_value)
    elif state.kind == "file":
        assert state.content is not None and state.mode is not None
        _write_file(path, state.content, state.mode)
        if state.owner is not None and os.geteuid() == 0:
            os.chown(path, *state.owner)
        if state.times_ns is not None:
            os.utime(path, ns=state.times_ns)
    # "other" (a directory, a FIFO) is never touched, so there is nothing to restore


def apply_file(path: Path, content: str, before: PathState) -> str:
    """Write content unless it is there already; returns what happened."""
    data = content.encode()
    if before.kind == "file" and before.content == data:
        return "unchanged"
    if before.kind not in ("missing", "file"):
        raise InstallError(f"{path} is a {before.kind}, not a file; move it away and try again")
    _write_file(path, data, before.mode if before.mode is not None else 0o644)
    return "created" if before.kind == "missing" else "replaced"


def apply_link(path: Path, value: str, before: PathState) -> str:
    if before.kind not in ("missing", "link"):
        raise InstallError(
            f"{path} is a {'regular file' if before.kind == 'file' else before.kind}, not the link "
            f"a2enconf makes; move it away and try again"
        )
    _make_link(path, value)
    return "created" if before.kind == "missing" else "replaced"


def describe_changes(path: Path, before: PathState, content: str) -> list[str]:
    """A unified diff from the file as it is to content (empty when equal)."""
    old = (before.content or b"").decode("utf-8", "replace").splitlines(keepends=True)
    new = content.splitlines(keepends=True)
    label = "(none)" if before.kind == "missing" else str(path)
    return [line.rstrip("\n") for line in difflib.unified_diff(old, new, label, str(path))]


def check_placement(placement: Placement) -> None:
    """Raise InstallError when something that is not a file (or, for the link, not a link) is in the way."""
    for path, allowed in ((placement.file, ("missing", "file")), (placement.link, ("missing", "link"))):
        if path is None:
            continue
        if not path.parent.is_dir():
            raise InstallError(f"{path.parent} does not exist")
        kind = path_state(path).kind
        if kind not in allowed:
            what = {"file": "regular file", "link": "symbolic link"}.get(kind, kind)
            raise InstallError(f"{path} is a {what}, not what ocspproxy writes there; move it away and retry")


# --- stapling directives set elsewhere ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Directive:
    file: Path
    line: int
    name: str
    value: str
    vhost: str | None  # the <VirtualHost> it is in, None when server-wide


def find_stapling_directives(files: Iterable[tuple[Path, str]]) -> list[Directive]:
    """Every SSLUseStapling / SSLStapling* line in the given (path, text) pairs, in order.

    A plain scan of the lines as httpd reads them (``logical_lines``: comments skipped, continuation
    lines joined), so it also lists directives inside sections httpd may skip: good enough for
    warnings, which is all it is used for.
    """
    found: list[Directive] = []
    for path, text in files:
        vhost: str | None = None
        for start, line in logical_lines(text):
            lower = line.lower()
            if lower.startswith("<virtualhost"):
                vhost = line[len("<virtualhost") :].strip().rstrip(">").strip()
            elif lower.startswith("</virtualhost"):
                vhost = None
            elif lower.startswith(("sslusestapling", "sslstapling")):
                name, *rest = line.split(None, 1)
                value = rest[0].strip() if rest else ""
                found.append(Directive(file=path, line=start, name=name, value=value, vhost=vhost))
    return found


def stapling_warnings(directives: Sequence[Directive], proxy_url: str) -> list[str]:
    """What in the existing configuration overrides or competes with the snippet's settings."""
    warnings: list[str] = []
    for d in directives:
        where = f"{d.file}:{d.line}: {d.name} {d.value}"
        scope = f"in <VirtualHost {d.vhost}>" if d.vhost else "server-wide"
        key = d.name.lower()
        if key == "sslstaplingforceurl" and d.value.strip("\"'") != proxy_url:
            effect = (
                "that vhost will not ask ocspproxy"
                if d.vhost
                else "it competes with ocspproxy's (the one Apache reads last wins)"
            )
            warnings.append(f"{where} ({scope}): {effect}")
        elif key == "sslusestapling" and d.value.lower() == "off":
            warnings.append(f"{where} ({scope}): stapling stays off {'there' if d.vhost else 'everywhere'}")
        elif key not in ("sslstaplingforceurl", "sslusestapling"):
            effect = "this one wins there" if d.vhost else "the one Apache reads last wins"
            warnings.append(f"{where} ({scope}): ocspproxy's file sets it too; {effect}")
    return warnings


# --- running -------------------------------------------------------------------------------------


def run_first(
    commands: Sequence[Command], *, runner: Runner, timeout: float, out: Callable[[str], None]
) -> bool:
    """Run commands in turn until one succeeds, printing each attempt and the output of the one that
    succeeded. What the failed ones printed is shown only when every one failed: an error from a
    method that does not fit the host is noise when the next one works. False when none did."""
    failed: list[tuple[Command, RunResult]] = []
    for command in commands:
        out(f"running: {command.shown()}")
        result = runner(command.argv, env=command.env, timeout=timeout)
        if result.returncode == 0:
            _show_output(result, out)
            return True
        failed.append((command, result))
    for command, result in failed:
        if len(failed) > 1:
            out(f"failed: {command.shown()}")
        _show_output(result, out)
        out(f"  exit status {result.returncode}")
    return False


def _show_output(result: RunResult, out: Callable[[str], None]) -> None:
    for line in result.output.rstrip().splitlines():
        out(f"  | {line}")
