"""Files written so that a crash leaves the old or the new one, and read without being fooled.

``write_atomically`` is how the state directory's files are written (staples, the snapshot, the
certificate index). ``read_regular`` is the one way files from outside are read: a regular file,
a size cap, and without following a symbolic link unless asked to (certificate files may be links;
the state directory's entries never are).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import NamedTuple

import structlog

__all__ = ["TMP_PREFIX", "Stamp", "read_regular", "read_state_file", "sync_directory", "write_atomically"]

log = structlog.get_logger("ocspproxy")

TMP_PREFIX = ".tmp-"
# Without following a link, and without blocking on a FIFO swapped in.
_NO_FOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FOLLOW = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class Stamp(NamedTuple):
    """What a file's inode looks like: equal stamps mean the same, unchanged file (any write, rename
    or chmod moves ctime, which nothing can set back)."""

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def read_regular(
    path: str | Path, *, limit: int | None = None, follow_links: bool = False, allow_empty: bool = True
) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes and the stat of the very file read (it may be replaced meanwhile).
    Raises FileNotFoundError, another OSError (a symbolic link without follow_links: ELOOP), or
    ValueError: not a regular file, empty (unless allow_empty), larger than limit."""
    fd = os.open(path, _FOLLOW if follow_links else _NO_FOLLOW)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        data = f.read() if limit is None else f.read(limit + 1)
    if not data and not allow_empty:
        raise ValueError("empty file")
    if limit is not None and len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data, st


def read_state_file(path: Path) -> bytes | None:
    """A state file's bytes (regular, not through a link), or None when it does not exist. Raises
    OSError or ValueError."""
    try:
        return read_regular(path)[0]
    except FileNotFoundError:
        return None


def write_atomically(directory: Path, name: str, data: bytes) -> Stamp:
    """Write directory/name, mode 0600: temporary file, fsync, rename, fsync of the directory, so a
    crash leaves the old or the new file. Returns the new file's stamp, taken from the open file
    after the rename (which moves its ctime): the stamp of exactly these bytes. Raises OSError; a
    failed write removes its temporary file and leaves the old file as it was."""
    final = directory / name
    tmp = directory / f"{TMP_PREFIX}{name}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            rest = memoryview(data)
            while rest:  # a short write (disk full) raises on the next one; never rename a torso
                rest = rest[os.write(fd, rest) :]
            os.fsync(fd)
            os.replace(tmp, final)
        except OSError:
            try:
                tmp.unlink()
            except OSError as err:
                log.warning("cannot remove temporary file", path=str(tmp), error=err.strerror)
            raise
        stamp = Stamp.of(os.fstat(fd))
    finally:
        os.close(fd)
    sync_directory(directory)
    return stamp


def sync_directory(directory: Path) -> None:
    """fsync a directory: a rename or unlink in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
