"""Tools, ports and waiting for the end-to-end tests (split out of ``peers.py``)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
APACHE_MODULES_DIR = Path("/usr/lib/apache2/modules")
APACHE_REQUIRED_MODULES = ("mod_mpm_event.so", "mod_authz_core.so", "mod_socache_shmcb.so", "mod_ssl.so")

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# tools, ports, waiting
# --------------------------------------------------------------------------------------------------


def find_openssl() -> str | None:
    return shutil.which("openssl")


def find_apache() -> str | None:
    """The Apache httpd binary (Debian's ``apache2``); /usr/sbin is often not on a non-root PATH."""
    for name in ("apache2", "httpd"):
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
        if found:
            return found
    return None


def missing_tools() -> list[str]:
    """Human-readable list of what the e2e suite needs but cannot find (empty when all is there)."""
    missing: list[str] = []
    if find_openssl() is None:
        missing.append("openssl CLI")
    if find_apache() is None:
        missing.append("apache2 (Apache httpd 2.4) binary")
    for mod in APACHE_REQUIRED_MODULES:
        if not (APACHE_MODULES_DIR / mod).is_file():
            missing.append(f"{APACHE_MODULES_DIR / mod}")
    return missing


_HANDED_OUT_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on: bind port 0, read it, release it.

    Binds the IPv6 wildcard in dual-stack mode when possible because ``openssl ocsp -port N`` listens
    on ``[::]:N``, so the port must be free on every address.  Ports handed out before in this process
    are never handed out again (processes are restarted on "their" port).
    """
    for _ in range(50):
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            addr: tuple[str, int] = ("::", 0)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = ("127.0.0.1", 0)
        with sock:
            sock.bind(addr)
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT_PORTS:
            _HANDED_OUT_PORTS.add(port)
            return port
    raise RuntimeError("could not find a free TCP port")


def port_free(port: int) -> bool:
    """True when nobody listens on ``port`` (checked by binding, never by connecting: see OcspResponder)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        addr = ("127.0.0.1", port)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError:
            return False
    return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:])
