"""Apache httpd's configuration syntax as httpd reads it: logical lines (continuations, comments),
words and quoting, section tags, Include globs, Debian's envvars file, and mod_ssl's directive names
(to tell a typo from a directive of another module)."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = [
    "MAX_DEPTH",
    "MOD_SSL",
    "VAR",
    "WS",
    "ApacheConfigError",
    "expand_include",
    "logical_lines",
    "read_envvars",
    "section_tag",
    "word",
    "words",
]

MAX_DEPTH = 64  # of nested includes and directories


class ApacheConfigError(Exception):
    """A config file that cannot be read or parsed; str() names file:line and the problem."""

    def __init__(self, problem: str, file: Path | None = None, line: int | None = None) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        where = "" if file is None else f"{file}:{line}: " if line else f"{file}: "
        super().__init__(where + problem)


WS = " \t\r\n\v\f"  # httpd's apr_isspace is ASCII-only
VAR = re.compile(r"\$\{([^}]*)\}")
_WILDCARD = re.compile(r"[*?\[]")
# envvars: [export] NAME=value with value '...', "..." or bare; what follows it is ignored
_ASSIGNMENT = re.compile(
    r"\s*(?:export\s+)?([A-Za-z_]\w*)=(?:'([^']*)'|\"([^\"\\`]*)\"|([^\s'\"\\`;]*))(?:[\s;].*)?"
)
_SHELLVAR = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")
_SHELL_OTHER = re.compile(r"\$(?![A-Za-z_]|\{[A-Za-z_]\w*\})")  # $(...), ${X##y}, $1: needs a shell
# fmt: off
MOD_SSL_NAMES = (
    "SSLCACertificateFile", "SSLCACertificatePath", "SSLCADNRequestFile", "SSLCADNRequestPath",
    "SSLCARevocationCheck", "SSLCARevocationFile", "SSLCARevocationPath", "SSLCertificateChainFile",
    "SSLCertificateFile", "SSLCertificateKeyFile", "SSLCipherSuite", "SSLCompression",
    "SSLCryptoDevice", "SSLEngine", "SSLFIPS", "SSLHonorCipherOrder", "SSLInsecureRenegotiation",
    "SSLOCSPDefaultResponder", "SSLOCSPEnable", "SSLOCSPNoverify", "SSLOCSPOverrideResponder",
    "SSLOCSPProxyURL", "SSLOCSPResponderCertificateFile", "SSLOCSPResponderTimeout",
    "SSLOCSPResponseMaxAge", "SSLOCSPResponseTimeSkew", "SSLOCSPUseRequestNonce", "SSLOpenSSLConfCmd",
    "SSLOptions", "SSLPassPhraseDialog", "SSLProtocol", "SSLProxyCACertificateFile",
    "SSLProxyCACertificatePath", "SSLProxyCARevocationCheck", "SSLProxyCARevocationFile",
    "SSLProxyCARevocationPath", "SSLProxyCheckPeerCN", "SSLProxyCheckPeerExpire",
    "SSLProxyCheckPeerName", "SSLProxyCipherSuite", "SSLProxyEngine",
    "SSLProxyMachineCertificateChainFile", "SSLProxyMachineCertificateFile",
    "SSLProxyMachineCertificatePath", "SSLProxyProtocol", "SSLProxyVerify", "SSLProxyVerifyDepth",
    "SSLRandomSeed", "SSLRenegBufferSize", "SSLRequire", "SSLRequireSSL", "SSLSessionCache",
    "SSLSessionCacheTimeout", "SSLSessionTicketKeyFile", "SSLSessionTickets", "SSLSRPUnknownUserSeed",
    "SSLSRPVerifierFile", "SSLStaplingCache", "SSLStaplingErrorCacheTimeout", "SSLStaplingFakeTryLater",
    "SSLStaplingForceURL", "SSLStaplingResponderTimeout", "SSLStaplingResponseMaxAge",
    "SSLStaplingResponseTimeSkew", "SSLStaplingReturnResponderErrors",
    "SSLStaplingStandardCacheTimeout", "SSLStrictSNIVHostCheck", "SSLUserName", "SSLUseStapling",
    "SSLVerifyClient", "SSLVerifyDepth", "SSLVHostSNIPolicy"
)
# fmt: on
MOD_SSL = {name.lower(): name for name in MOD_SSL_NAMES}


def word(s: str, i: int) -> tuple[str, int]:
    """The argument starting at or after s[i] and the index after it, like httpd's ap_getword_conf."""
    n = len(s)
    while i < n and s[i] in WS:
        i += 1
    quote = s[i] if i < n and s[i] in "\"'" else ""
    i += bool(quote)
    out: list[str] = []
    while i < n and (s[i] != quote if quote else s[i] not in WS):
        if s[i] == "\\" and i + 1 < n and s[i + 1] in ("\\", quote or "\\"):
            i += 1
        out.append(s[i])
        i += 1
    return "".join(out), i + 1 if quote and i < n else i


def words(s: str) -> list[str]:
    words: list[str] = []
    i = 0
    while s[i:].strip(WS):
        found, i = word(s, i)
        words.append(found)
    return words


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) per directive: continuations joined, blanks and comments dropped."""
    pending: list[str] = []
    start = 1
    lines = text.split("\n")
    for number, raw in enumerate(lines, 1):
        raw = raw.removesuffix("\r")
        # httpd 2.4 continues on any final backslash (even an escaped one), if a newline follows
        if raw.endswith("\\") and number < len(lines):
            pending.append(raw[:-1])
            continue
        line = ("".join(pending) + raw).strip(WS)
        pending = []
        if line and not line.startswith("#"):
            yield start, line
        start = number + 1


def section_tag(word: str) -> tuple[bool, str] | None:
    """(closing?, section name) when word opens or closes a section, e.g. <VirtualHost or </IfModule>."""
    if not word.startswith("<"):
        return None
    closing = word.startswith("</")
    return closing, word[2 if closing else 1 :].removesuffix(">")


def _files_under(path: Path, depth: int) -> list[Path]:
    """path, or for a directory every file below it, in httpd's order (sorted per directory)."""
    if not path.is_dir():
        return [path]
    if depth > MAX_DEPTH:
        raise OSError(errno.ELOOP, "directories nested too deeply", str(path))
    return [f for name in sorted(os.listdir(path)) for f in _files_under(path / name, depth + 1)]


def expand_include(path: Path) -> list[Path] | None:
    """Files an Include of path reads, in order; None when a path without wildcards does not exist."""
    parts = path.parts
    first = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), None)
    if first is None:
        return _files_under(path, 0) if path.exists() else None
    found = [Path(*parts[:first])]
    for pattern in parts[first:]:
        # apr_fnmatch with APR_FNM_PERIOD: a wildcard does not match a leading dot
        dot = pattern.startswith(".")
        found = [
            base / name
            for base in found
            if base.is_dir()
            for name in sorted(os.listdir(base))
            if fnmatch.fnmatchcase(name, pattern) and (dot or not name.startswith("."))
        ]
    return [file for match in found for file in _files_under(match, 0)]


def read_envvars(path: Path, environment: Mapping[str, str]) -> dict[str, str]:
    """The environment after Debian's envvars, which apache2ctl sources before starting httpd.

    The script is not executed: each simple assignment is applied in turn, and one that needs a shell
    to evaluate is skipped (so of Debian's two SUFFIX assignments, SUFFIX= is the one that counts).
    """
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise ApacheConfigError(f"cannot read: {e.strerror}", path) from e
    env = {**environment, "APACHE_CONFDIR": str(path.parent)}
    for match in filter(None, map(_ASSIGNMENT.fullmatch, text.split("\n"))):
        name, literal, value = match[1], match[2], match[3] if match[3] is not None else match[4]
        if literal is not None:
            env[name] = literal
        elif not _SHELL_OTHER.search(value):
            env[name] = _SHELLVAR.sub(lambda var: env.get(var[1] or var[2], ""), value)
    return env
