"""Finding Apache httpd, its main configuration, its layout; testing and reloading it.

Pure parts (parsing ``-V``, detecting the layout, building command lines) are separate from the parts
that run programs, and every program runs through a ``Runner`` (injected in tests) with a timeout.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "Command",
    "Layout",
    "RunResult",
    "Runner",
    "Tools",
    "compiled_main_config",
    "config_test_command",
    "default_server_root",
    "detect_layout",
    "discover_tools",
    "find_main_config",
    "parse_compiled_config",
    "reload_commands",
    "run_command",
    "systemd_booted",
]

#: where distributions put the main configuration, tried after ``-V``
USUAL_MAIN_FILES = (Path("/etc/apache2/apache2.conf"), Path("/etc/httpd/conf/httpd.conf"))
_SBIN = "/usr/sbin:/usr/local/sbin:/sbin:/usr/bin:/bin"
VERSION_TIMEOUT = 15.0
TEST_TIMEOUT = 60.0
RELOAD_TIMEOUT = 60.0


class Layout(enum.Enum):
    DEBIAN = "Debian"  # /etc/apache2: conf-available/ + conf-enabled/, envvars, apache2ctl
    RHEL = "RHEL"  # /etc/httpd: conf/httpd.conf + conf.d/
    OTHER = "other"


@dataclass(frozen=True, kw_only=True)
class RunResult:
    returncode: int
    output: str  # stdout and stderr, interleaved as the program wrote them


class Runner(Protocol):
    def __call__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None, timeout: float
    ) -> RunResult: ...


def run_command(argv: Sequence[str], *, env: Mapping[str, str] | None, timeout: float) -> RunResult:
    """Run a program to completion; a missing program or a timeout is a result, not an exception."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return RunResult(returncode=124, output=f"{argv[0]}: no answer within {timeout:.0f} s; stopped\n")
    except OSError as exc:
        return RunResult(returncode=127, output=f"{argv[0]}: cannot run: {exc.strerror or exc}\n")
    return RunResult(returncode=proc.returncode, output=proc.stdout.decode("utf-8", "replace"))


@dataclass(frozen=True, kw_only=True)
class Tools:
    """Absolute paths of the programs found (None when missing)."""

    ctl: str | None = None  # apachectl / apache2ctl
    httpd: str | None = None  # apache2 / httpd
    systemctl: str | None = None  # only where systemd is the running init
    control_names: tuple[str, ...] = field(default=())  # every *ctl found, for -V


def systemd_booted(marker: Path = Path("/run/systemd/system")) -> bool:
    """Whether systemd is the running init, as sd_booted(3) tells: its runtime directory exists.
    A container or a SysV host may have systemctl installed all the same ("System has not been
    booted with systemd")."""
    return marker.is_dir()


def discover_tools(
    which: Callable[[str, str], str | None] | None = None, *, booted: Callable[[], bool] = systemd_booted
) -> Tools:
    """Look for Apache's programs on PATH and in the sbin directories (often not on a user's PATH);
    systemctl only where systemd runs (``booted``), so that a reload goes straight to apachectl
    elsewhere."""

    def find(name: str) -> str | None:
        if which is not None:
            return which(name, _SBIN)
        return shutil.which(name) or shutil.which(name, path=_SBIN)

    controls = tuple(p for p in (find("apachectl"), find("apache2ctl")) if p)
    httpd = find("apache2") or find("httpd")
    return Tools(
        ctl=controls[0] if controls else None,
        httpd=httpd,
        systemctl=find("systemctl") if booted() else None,
        control_names=controls,
    )


_DEFINE = re.compile(r'^\s*-D\s+(HTTPD_ROOT|SERVER_CONFIG_FILE)="([^"]*)"\s*$', re.MULTILINE)


def parse_compiled_config(text: str) -> Path | None:
    """The main configuration file named by ``httpd -V`` (HTTPD_ROOT + SERVER_CONFIG_FILE), or None."""
    found = {match[1]: match[2] for match in _DEFINE.finditer(text)}
    config = found.get("SERVER_CONFIG_FILE")
    if not config:
        return None
    path = Path(config)
    if not path.is_absolute():
        root = found.get("HTTPD_ROOT")
        if not root:
            return None
        path = Path(root) / path
    return path


def find_main_config(
    *, tools: Tools, runner: Runner = run_command, exists: Callable[[Path], bool] = Path.is_file
) -> tuple[Path, str] | None:
    """Apache's main configuration file and how it was found, or None."""
    compiled = compiled_main_config(tools=tools, runner=runner)
    if compiled is not None and exists(compiled[0]):
        return compiled[0], f"from {compiled[1]} -V"
    for path in USUAL_MAIN_FILES:
        if exists(path):
            return path, "in the usual place"
    return None


def compiled_main_config(*, tools: Tools, runner: Runner = run_command) -> tuple[Path, str] | None:
    """The main file Apache uses by default and the program that said so (``-V``); None if none answers."""
    for program in [*tools.control_names, *([tools.httpd] if tools.httpd else [])]:
        result = runner([program, "-V"], env=None, timeout=VERSION_TIMEOUT)
        if result.returncode == 0 and (path := parse_compiled_config(result.output)) is not None:
            return path, Path(program).name
    return None


def detect_layout(main_file: Path, *, is_dir: Callable[[Path], bool] = Path.is_dir) -> Layout:
    """Debian when conf-available/ and conf-enabled/ sit next to the main file; RHEL when conf.d/ sits
    next to the conf/ directory holding it."""
    here = main_file.parent
    if is_dir(here / "conf-available") and is_dir(here / "conf-enabled"):
        return Layout.DEBIAN
    if here.name == "conf" and is_dir(here.parent / "conf.d"):
        return Layout.RHEL
    return Layout.OTHER


def default_server_root(main_file: Path) -> Path:
    """ServerRoot for ``-d``: the directory above conf/ for .../conf/httpd.conf, else the file's directory."""
    return main_file.parent.parent if main_file.parent.name == "conf" else main_file.parent


@dataclass(frozen=True, kw_only=True)
class Command:
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None  # None: inherit

    def shown(self) -> str:
        """The command as a person would type it (Debian's envvars sourcing included)."""
        prefix = ""
        if self.env is not None and "APACHE_CONFDIR" in self.env:
            prefix = f"APACHE_CONFDIR={self.env['APACHE_CONFDIR']} "
        if self.argv[:2] == ("/bin/sh", "-c"):
            return f"{prefix}. {self.argv[4]} && " + " ".join(self.argv[5:])
        return prefix + " ".join(self.argv)


def _is_compiled_default(main_file: Path, compiled: Path | None) -> bool:
    return compiled is not None and os.path.realpath(compiled) == os.path.realpath(main_file)


def _with_envvars(main_file: Path, argv: list[str]) -> Command:
    """Run argv after sourcing the envvars next to main_file, as apache2ctl does (Debian)."""
    envvars = main_file.parent / "envvars"
    if not envvars.is_file():
        return Command(argv=tuple(argv))
    env = {**os.environ, "APACHE_CONFDIR": str(main_file.parent)}
    script = '. "$1" && shift && exec "$@"'
    return Command(argv=("/bin/sh", "-c", script, "sh", str(envvars), *argv), env=env)


def _tree_command(main_file: Path, tools: Tools, args: list[str]) -> Command | None:
    if tools.httpd is None:
        return None
    argv = [tools.httpd, *args, "-f", str(main_file), "-d", str(default_server_root(main_file))]
    return _with_envvars(main_file, argv)


def config_test_command(*, main_file: Path, tools: Tools, compiled: Path | None) -> Command | None:
    """``apachectl -t`` for the compiled-in configuration; else ``httpd -t -f FILE -d ROOT`` so the test
    checks that tree (after Debian's envvars when there is one). None when no program was found."""
    if tools.ctl is not None and _is_compiled_default(main_file, compiled):
        return Command(argv=(tools.ctl, "-t"))
    return _tree_command(main_file, tools, ["-t"])


def reload_commands(*, main_file: Path, tools: Tools, compiled: Path | None, layout: Layout) -> list[Command]:
    """What to try, in order, to reload Apache gracefully (the first that succeeds counts)."""
    if not _is_compiled_default(main_file, compiled):
        command = _tree_command(main_file, tools, ["-k", "graceful"])
        return [command] if command else []
    commands: list[Command] = []
    if tools.systemctl is not None:
        unit = "apache2" if layout is Layout.DEBIAN else "httpd"
        commands.append(Command(argv=(tools.systemctl, "reload", unit)))
    if tools.ctl is not None:
        commands.append(Command(argv=(tools.ctl, "graceful")))
    return commands
