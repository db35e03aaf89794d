"""Disk faults for tests: tiny and read-only tmpfs mounts (root only), and an injectable failing store."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.store import FileStore, Stored, StoreError
from tests.required import unavailable


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


@functools.cache
def mount_works() -> bool:
    """Whether this process may mount a tmpfs and remount it read-only (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as directory:
        try:
            _mount("-t", "tmpfs", "-o", "size=16k", "tmpfs", directory)
        except (OSError, subprocess.SubprocessError):
            return False
        try:
            _mount("-o", "remount,ro", directory)
            return True
        except (OSError, subprocess.SubprocessError):
            return False
        finally:
            subprocess.run(["umount", "-l", directory], check=False, capture_output=True)


def require_mount() -> None:
    """Skip without mount permission; under CI=true fail instead (CI runs as root and can mount)."""
    if not mount_works():
        unavailable("mounting a tmpfs is not permitted here (needs root with CAP_SYS_ADMIN)")


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of the given size mounted on directory (created), unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def remount(directory: Path, *, read_only: bool) -> None:
    _mount("-o", "remount," + ("ro" if read_only else "rw"), str(directory))


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    assert os.statvfs(directory).f_bavail == 0
    return filler


class FlakyStore:
    """Wraps a store; while ``failing`` holds an errno, every save raises ``StoreError`` with it."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.failing: int | None = None
        self.saves = 0
        self.failures = 0

    @property
    def usable(self) -> bool:
        return self.inner.usable

    def prepare(self) -> int:
        return self.inner.prepare()

    def save(self, staple: Staple) -> None:
        self.saves += 1
        if self.failing is not None:
            self.failures += 1
            error = StoreError(f"cannot write {staple.key}: {os.strerror(self.failing)}")
            error.errno = self.failing
            raise error
        self.inner.save(staple)

    def load(self, key: CertKey) -> Stored | None:
        return self.inner.load(key)

    def delete(self, key: CertKey) -> None:
        self.inner.delete(key)

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[Stored]:
        return self.inner.load_all(on_error)

    def remember(self, staple: Staple) -> None:
        self.inner.remember(staple)

    def distrust(self, key: CertKey) -> None:
        self.inner.distrust(key)

    def checkpoint(self, now: datetime) -> None:
        self.inner.checkpoint(now)
