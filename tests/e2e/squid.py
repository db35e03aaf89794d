"""Squid (Debian's package) as the forward proxy of a DMZ, for the end-to-end tests.

Its ``hosts_file`` maps made-up names (``ca.test``) to 127.0.0.1: ocspproxy cannot resolve them, so a
CA named so is reachable only through this proxy, and its ``access.log`` shows every request.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .processes import ManagedProcess


def find_squid() -> str | None:
    return shutil.which("squid") or shutil.which("squid", path="/usr/sbin:/usr/local/sbin")


class Squid(ManagedProcess):
    """Squid drops to the ``proxy`` user, who must reach its files: they live in a directory of
    their own under /tmp (pytest's are private to root), removed by ``cleanup``."""

    def __init__(self, port: int, names: Sequence[str]) -> None:
        directory = Path(tempfile.mkdtemp(prefix="ocspproxy-e2e-squid-"))
        directory.chmod(0o755)
        super().__init__(f"squid (:{port})", port, directory / "stdout.log")
        self.directory = directory
        self.names = list(names)
        self.access_log = directory / "access.log"
        self.conf = directory / "squid.conf"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts").write_text("".join(f"127.0.0.1 {name}\n" for name in self.names))
        user = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("proxy")
                os.chown(directory, entry.pw_uid, entry.pw_gid)
                user = "proxy"
            except KeyError:
                user = None
        self.conf.write_text(
            f"""# written by tests/e2e/squid.py
http_port 127.0.0.1:{port}
hosts_file {directory}/hosts
dns_nameservers 127.0.0.1
pid_filename {directory}/squid.pid
access_log stdio:{self.access_log}
cache_log {directory}/cache.log
cache_store_log none
coredump_dir {directory}
cache deny all
http_access allow localhost
http_access deny all
shutdown_lifetime 0 seconds
forwarded_for delete
{f"cache_effective_user {user}" if user else ""}
"""
        )

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def command(self) -> list[str]:
        return [find_squid() or "squid", "-N", "-f", str(self.conf)]

    def requests(self) -> list[str]:
        """The access log's lines (method and URL among them), one per request."""
        try:
            return [line for line in self.access_log.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []
