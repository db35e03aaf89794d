"""Where the admin listener listens, from ``admin_listen`` / ``--admin-listen`` or a client's
``--admin``: ``HOST:PORT`` (an IP address or localhost), ``unix:/path``, or empty for off. Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["DEFAULT_ADMIN", "DEFAULT_ADMIN_PORT", "AdminAddress", "admin_beside", "parse_admin"]

DEFAULT_ADMIN_PORT = 2561  # beside the OCSP port (2560); unprivileged


@dataclass(frozen=True, slots=True)
class AdminAddress:
    host: str | None = None
    port: int = 0
    path: Path | None = None  # a unix socket instead of host and port

    @property
    def url(self) -> str:
        """As printed, and as ``--admin`` takes it back."""
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.path is not None or self.host == "localhost":
            return True
        return ipaddress.ip_address(self.host or "127.0.0.1").is_loopback

    def overlaps(self, host: str, port: int) -> bool:
        """True when this would listen on the OCSP port (host:port): the same port on the same or a
        wildcard address. Port 0 (any free port) never overlaps."""
        if self.path is not None or self.port == 0 or self.port != port:
            return False
        wildcard = ("0.0.0.0", "::", "")
        return self.host == host or self.host in wildcard or host in wildcard


DEFAULT_ADMIN = AdminAddress("127.0.0.1", DEFAULT_ADMIN_PORT)


def admin_beside(ocsp_port: int) -> AdminAddress:
    """The default: loopback, the port after the OCSP port's (2561 beside 2560); never the same."""
    return AdminAddress("127.0.0.1", ocsp_port + 1 if 0 < ocsp_port < 65535 else DEFAULT_ADMIN_PORT)


def parse_admin(value: str) -> AdminAddress | None:
    """None for an empty value (off). Raises ValueError naming what is wrong. A client may also give
    an ``http://HOST:PORT`` URL."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {value!r}")
        return AdminAddress(path=Path(path))
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"expected http://HOST:PORT, got {value!r}")
        value = (
            f"[{parts.hostname}]:{parts.port}" if ":" in parts.hostname else f"{parts.hostname}:{parts.port}"
        )
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, unix:/path or an empty value, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host must be an IP address or localhost, got {host!r}") from None
    return AdminAddress(host, int(port))
