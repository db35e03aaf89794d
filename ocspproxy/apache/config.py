"""Read Apache httpd's configuration the way httpd does, and find the TLS certificates it serves.

Only what ocspproxy needs is interpreted: Include/IncludeOptional, ServerRoot, Define and ``${VAR}``,
the conditional sections, ``<VirtualHost>`` and mod_ssl's certificate and stapling directives.
Certificate files are never opened.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ocspproxy.apache.syntax import (
    MAX_DEPTH,
    MOD_SSL,
    VAR,
    WS,
    ApacheConfigError,
    expand_include,
    logical_lines,
    read_envvars,
    section_tag,
    word,
    words,
)

__all__ = [
    "ApacheConfig",
    "ApacheConfigError",
    "Misspelling",
    "TLSSite",
    "logical_lines",
    "read_apache_config",
]

_BUILTIN_MODULES = frozenset(
    {"core.c", "http_core.c", "mod_so.c", "mod_watchdog.c", "mod_log_config.c", "mod_logio.c"}
    | {"mod_version.c", "mod_unixd.c", "core_module", "http_module", "so_module", "watchdog_module"}
    | {"log_config_module", "logio_module", "version_module", "unixd_module"}
)
_PATH_DIRECTIVES = {
    "sslcertificatechainfile": "chain_file",
    "sslcacertificatefile": "ca_certificate_file",
    "sslcacertificatepath": "ca_certificate_path",
}
# mod_ssl's directives in httpd 2.4: an unknown SSL* name close to one of these is likely a typo that
# leaves a vhost without what it was meant to set.
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class TLSSite:
    """One SSLCertificateFile in effect, with the settings httpd applies to it."""

    config_file: Path  # file holding the SSLCertificateFile directive
    line: int  # 1-based; the first line of a continued directive
    server_name: str | None  # ServerName of the <VirtualHost> itself, as written
    vhost: str  # <VirtualHost> addresses as written ("*:443"), "_default_" for the main server
    certificate_file: Path  # absolute, like every path below
    # the rest: the vhost's own setting, else the server-wide one
    chain_file: Path | None
    ca_certificate_file: Path | None
    ca_certificate_path: Path | None
    stapling_force_url: str | None
    use_stapling: bool | None  # None when SSLUseStapling is not set
    # where the <VirtualHost> section opens (None for the main server): shown, not part of identity
    vhost_file: Path | None = field(default=None, compare=False)
    vhost_line: int | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class Misspelling:
    """A directive that mod_ssl does not know, spelt much like one it does (SSLCertificateFiel)."""

    name: str  # as written
    meant: str  # the mod_ssl directive it resembles
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.name} at {self.file}:{self.line} (mod_ssl has {self.meant})"


@dataclass(frozen=True, kw_only=True)
class ApacheConfig:
    main_file: Path
    server_root: Path  # after any ServerRoot directive
    sites: tuple[TLSSite, ...]  # in config order
    files_read: tuple[Path, ...]  # every file read (envvars included), in order, each once
    misspellings: tuple[Misspelling, ...] = ()  # in sections httpd reads, in config order

    def no_sites(self) -> str:
        """Why there is no site, for a warning: what was read, and what was found instead."""
        count = len(self.files_read)
        return (
            f"Apache configuration {self.main_file} ({count} file{'s' if count != 1 else ''} read) has "
            "no TLS virtual host: no SSLCertificateFile in effect"
        )


@dataclass
class _Scope:
    """Settings of one <VirtualHost>, or of the main server (vhost "_default_")."""

    vhost: str
    file: Path | None = None  # where the <VirtualHost> opens
    line: int | None = None
    server_name: str | None = None
    engine: str | None = None
    chain_file: Path | None = None
    ca_certificate_file: Path | None = None
    ca_certificate_path: Path | None = None
    stapling_force_url: str | None = None
    use_stapling: bool | None = None


def _inherit(own: _T | None, server_wide: _T | None) -> _T | None:
    return own if own is not None else server_wide


class _Reader:
    def __init__(self, server_root: Path, defines: dict[str, str | None], env: Mapping[str, str]) -> None:
        self.server_root = server_root
        self.defines = defines
        self.env = env
        self.modules: set[str] = set()
        self.files_read: dict[Path, None] = {}  # ordered set
        self.stack: list[str] = []  # real paths of the files being read, for the recursion guard
        self.main = _Scope(vhost="_default_")
        self.certs: list[tuple[_Scope, Path, int, Path]] = []
        self.misspellings: list[Misspelling] = []

    def path(self, arg: str) -> Path:
        return Path(os.path.normpath(os.path.join(self.server_root, arg)))

    def read_file(self, path: Path, scope: _Scope | None, origin: tuple[Path, int] | None) -> None:
        """Read one file; scope is where directives go (None inside <Directory> and the like)."""
        where, line = origin or (path, None)
        real = os.path.realpath(path)
        if real in self.stack:
            raise ApacheConfigError(f"include recursion: {path} is already being read", where, line)
        if len(self.stack) > MAX_DEPTH:
            raise ApacheConfigError(f"includes nested more than {MAX_DEPTH} deep at {path}", where, line)
        try:
            text = path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")
        except OSError as e:
            problem = f"cannot read {path}: {e.strerror}" if origin else f"cannot read: {e.strerror}"
            raise ApacheConfigError(problem, where, line) from e
        self.files_read.setdefault(path)
        self.stack.append(real)
        self.parse(path, text, scope)
        self.stack.pop()

    def parse(self, path: Path, text: str, scope: _Scope | None) -> None:
        sections: list[tuple[str, int, _Scope | None]] = []  # name, line, scope outside it
        # A false If* section or a <Macro> is skipped unparsed up to its end tag, as httpd does.
        skipping: tuple[str, int] | None = None
        nesting = 0
        for number, raw in logical_lines(text):
            if skipping is not None:
                tag = section_tag(word(raw, 0)[0])
                if tag and tag[1].lower() == skipping[0].lower():
                    nesting += -1 if tag[0] else 1
                    skipping = None if nesting == 0 else skipping
                continue
            line = VAR.sub(self._variable, raw) if "${" in raw else raw
            name, end = word(line, 0)
            rest = line[end:].strip(WS)
            tag = section_tag(name)
            if tag is None:
                self.directive(name, words(rest), scope, path, number)
                continue
            closing, section = tag
            if closing:
                if not sections or sections[-1][0].lower() != section.lower():
                    open_one = f" (expected </{sections[-1][0]}>)" if sections else ""
                    problem = f"</{section}> without matching <{section}> section{open_one}"
                    raise ApacheConfigError(problem, path, number)
                scope = sections.pop()[2]
                continue
            close = len(rest) if name.endswith(">") else rest.rfind(">")
            if close < 0 or not section:
                raise ApacheConfigError(f"<{section}> directive missing closing '>'", path, number)
            args = words(rest[:close])
            kind = section.lower()
            conditional = kind.startswith("if") and kind != "if"  # <If expr> is per-request
            if kind == "macro" or (conditional and not self.condition(kind, args)):
                skipping, nesting = (section, number), 1
                continue
            sections.append((section, number, scope))
            if kind == "virtualhost":
                if scope is not self.main:
                    raise ApacheConfigError("<VirtualHost> cannot be nested in another section", path, number)
                if not args:
                    raise ApacheConfigError("<VirtualHost> needs an address", path, number)
                scope = _Scope(vhost=" ".join(args), file=path, line=number)
            elif not conditional:
                scope = None  # <Directory>, <Location>, <Files>, ...: no server-level directives
        if skipping is not None:
            raise ApacheConfigError(f"<{skipping[0]}> section is not closed", path, skipping[1])
        if sections:
            raise ApacheConfigError(f"<{sections[-1][0]}> section is not closed", path, sections[-1][1])

    def _variable(self, match: re.Match[str]) -> str:
        # httpd keeps an undefined ${VAR} as written (and warns)
        value = self.defines.get(match[1])
        return value if value is not None else self.env.get(match[1], match[0])

    def condition(self, kind: str, args: list[str]) -> bool:
        arg = args[0] if args else ""
        negate = arg.startswith("!")
        arg = arg.removeprefix("!")
        if kind == "ifdefine":
            found = arg in self.defines
        elif kind == "ifmodule":
            # No LoadModule at all: a static build (or a partial tree), so assume the module is there.
            name = arg.lower()
            found = not self.modules or name in self.modules or name in _BUILTIN_MODULES
        elif kind == "iffile":
            found = self.path(arg).exists()
        else:
            return True  # <IfVersion>, <IfDirective>, <IfSection>: assume a current httpd 2.4
        return found != negate

    def directive(self, name: str, args: list[str], scope: _Scope | None, path: Path, line: int) -> None:
        def one() -> str:
            if len(args) != 1:
                raise ApacheConfigError(f"{name} takes one argument", path, line)
            return args[0]

        key = name.lower()
        if key.startswith("ssl") and key not in MOD_SSL:
            self.misspelt(name, path, line)
        if key == "serverroot":
            self.server_root = self.path(one())
        elif key == "define":
            if not 1 <= len(args) <= 2:
                raise ApacheConfigError(f"{name} takes one or two arguments", path, line)
            self.defines[args[0]] = args[1] if len(args) == 2 else None
        elif key == "undefine":
            self.defines.pop(one(), None)
        elif key == "loadmodule":
            if len(args) != 2:
                raise ApacheConfigError(f"{name} takes two arguments", path, line)
            module = args[0].lower()
            stem = Path(args[1]).stem.lower()
            self.modules |= {module, f"mod_{module.removesuffix('_module')}.c", f"{stem}.c"}
        elif key in ("include", "includeoptional"):
            self.include(name, one(), scope, path, line)
        elif scope is None:
            return
        elif key == "servername":
            scope.server_name = one()
        elif key == "sslengine":
            scope.engine = one().lower()
        elif key == "sslcertificatefile":
            self.certs.append((scope, path, line, self.path(one())))
        elif key in _PATH_DIRECTIVES:
            setattr(scope, _PATH_DIRECTIVES[key], self.path(one()))
        elif key == "sslstaplingforceurl":
            scope.stapling_force_url = one()
        elif key == "sslusestapling":
            flag = one().lower()
            if flag not in ("on", "off"):
                raise ApacheConfigError(f"{name} must be On or Off", path, line)
            scope.use_stapling = flag == "on"

    def misspelt(self, name: str, path: Path, line: int) -> None:
        close = difflib.get_close_matches(name.lower(), MOD_SSL, n=1, cutoff=0.75)
        if close:
            self.misspellings.append(Misspelling(name=name, meant=MOD_SSL[close[0]], file=path, line=line))

    def include(self, name: str, arg: str, scope: _Scope | None, path: Path, line: int) -> None:
        optional = name.lower() == "includeoptional"
        target = self.path(arg)
        try:
            files = expand_include(target)
        except OSError as e:
            raise ApacheConfigError(f"{name} {arg}: {e.strerror}", path, line) from e
        if files is None and not optional:
            raise ApacheConfigError(f"{name} {arg}: {target} does not exist", path, line)
        for file in files or ():
            if not optional or file.exists():  # IncludeOptional also skips dangling symlinks
                self.read_file(file, scope, (path, line))

    def sites(self) -> tuple[TLSSite, ...]:
        # Server-wide settings reach every vhost, even when they come later in the config.
        main = self.main
        return tuple(
            TLSSite(
                config_file=path,
                line=line,
                server_name=scope.server_name,
                vhost=scope.vhost,
                certificate_file=certificate,
                chain_file=_inherit(scope.chain_file, main.chain_file),
                ca_certificate_file=_inherit(scope.ca_certificate_file, main.ca_certificate_file),
                ca_certificate_path=_inherit(scope.ca_certificate_path, main.ca_certificate_path),
                stapling_force_url=_inherit(scope.stapling_force_url, main.stapling_force_url),
                use_stapling=_inherit(scope.use_stapling, main.use_stapling),
                vhost_file=scope.file,
                vhost_line=scope.line,
            )
            for scope, path, line, certificate in self.certs
            if _inherit(scope.engine, main.engine) != "off"  # httpd serves no TLS there
        )


def read_apache_config(
    main_file: Path,
    *,
    server_root: Path | None = None,
    defines: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> ApacheConfig:
    """Read main_file and everything it includes; list each SSLCertificateFile in effect as a TLSSite.

    Sites of vhosts (or a main server) with ``SSLEngine off`` are left out: httpd serves no TLS there.

    ServerRoot in the config wins over server_root, which defaults to what httpd is compiled with:
    the main file's directory (Debian's /etc/apache2), or for .../conf/httpd.conf the directory above.
    ``defines`` are like ``httpd -D``; ``environment`` (default os.environ) is overlaid by the
    assignments of an ``envvars`` file next to the main file, as apache2ctl does.
    """
    main = Path(os.path.abspath(main_file))
    if server_root is None:
        server_root = main.parent.parent if main.parent.name == "conf" else main.parent
    env: dict[str, str] = dict(os.environ if environment is None else environment)
    envvars = main.parent / "envvars"
    has_envvars = envvars.is_file()
    if has_envvars:
        env = read_envvars(envvars, env)
    initial: dict[str, str | None] = {**(defines or {})}
    reader = _Reader(Path(os.path.abspath(server_root)), initial, env)
    if has_envvars:
        reader.files_read.setdefault(envvars)
    reader.read_file(main, reader.main, None)
    return ApacheConfig(
        main_file=main,
        server_root=reader.server_root,
        sites=reader.sites(),
        files_read=tuple(reader.files_read),
        misspellings=tuple(reader.misspellings),
    )
