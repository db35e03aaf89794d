"""Which HTTP forward proxy (if any) a request to a CA goes through, from the configuration only.

``[upstream] proxy`` for every CA, ``upstream_proxy`` in an ``[[issuer]]`` table for the CAs of one
issuer (``""``: straight to the CA), and — only with ``use_env_proxy = true`` — ``HTTP_PROXY`` /
``NO_PROXY`` as the environment had them at start-up (a service inheriting a stray variable would
otherwise send its CA traffic somewhere unexpected). Credentials come from ``proxy_auth_file``
(``user:password`` on one line, read once at start-up, never logged) and go to whichever proxy is
used. Nothing in a request ever chooses a proxy.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from ocspproxy.core.ocsp import issuer_key_hash

__all__ = ["ProxyError", "ProxyRoute", "check_proxy_url", "read_proxy_auth"]


class ProxyError(ValueError):
    """A proxy setting that cannot be used; str() says why."""


def check_proxy_url(url: str) -> str:
    """An ``http://host:port`` proxy URL, as given; raises ProxyError otherwise. Credentials in the
    URL are refused: they would end up in logs (``proxy_auth_file`` holds them)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ProxyError(f"expected an http://host:port URL, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ProxyError("credentials in the proxy URL; put them in proxy_auth_file")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyError(f"a proxy URL has no path or query, got {url!r}")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise ProxyError(f"bad port in {url!r}") from exc
    return url


def read_proxy_auth(path: Path) -> tuple[str, str]:
    """``user:password`` from the first line of path. Raises ProxyError (never quoting the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProxyError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ProxyError(f"{path} is not UTF-8 text") from exc
    line = text.splitlines()[0] if text else ""
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise ProxyError(f"{path} must hold user:password on its first line")
    return user, password


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyRoute:
    """The proxy for each request to a CA: by issuer first, then the default, then (when enabled)
    the environment as it was when this was made."""

    default: str | None = None
    by_issuer: Mapping[bytes, str] = field(default_factory=dict)  # issuer SHA-1 key hash -> URL or ""
    env: Mapping[str, str] | None = None  # the environment's proxies (use_env_proxy), else None
    auth: tuple[str, str] | None = None

    @classmethod
    def from_settings(
        cls,
        *,
        default: str | None,
        issuers: Mapping[Path, str],
        use_env: bool,
        auth_file: Path | None,
        environ: Mapping[str, str] = os.environ,
    ) -> ProxyRoute:
        """Raises ProxyError for an unusable setting (the caller reports it as a configuration error)."""
        env = None
        if use_env:
            env = {k.lower(): v for k, v in environ.items() if k.lower() in ("http_proxy", "no_proxy")}
            if "http_proxy" in env:
                check_proxy_url(env["http_proxy"])
        by_issuer = {
            issuer_key_hash(_certificate(path), "sha1"): url and check_proxy_url(url)
            for path, url in issuers.items()
        }
        return cls(
            default=check_proxy_url(default) if default else None,
            by_issuer=by_issuer,
            env=env,
            auth=read_proxy_auth(auth_file) if auth_file is not None else None,
        )

    @property
    def authorization(self) -> str | None:
        """The Proxy-Authorization header's value (Basic), when credentials are configured."""
        if self.auth is None:
            return None
        return "Basic " + base64.b64encode(":".join(self.auth).encode()).decode("ascii")

    @property
    def configured(self) -> bool:
        return bool(self.default or any(self.by_issuer.values()) or (self.env or {}).get("http_proxy"))

    def proxy_for(self, url: str, issuer: x509.Certificate | None = None) -> str | None:
        """The proxy URL for a request to url (a CA of issuer), or None: straight to it."""
        if issuer is not None:
            chosen = self.by_issuer.get(issuer_key_hash(issuer, "sha1"))
            if chosen is not None:
                return chosen or None
        if self.default:
            return self.default
        if self.env is not None and self.env.get("http_proxy") and urlsplit(url).scheme == "http":
            host = urlsplit(url).hostname or ""
            if not _bypass(host, self.env.get("no_proxy", "")):
                return self.env["http_proxy"]
        return None


def _bypass(host: str, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: ``*``, or host names and domain suffixes separated by commas."""
    host = host.lower().rstrip(".")
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


def _certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file ([[issuer]] certificate). Raises ProxyError."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]
    except OSError as exc:
        raise ProxyError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ProxyError(f"{path}: no PEM certificate in it") from exc
