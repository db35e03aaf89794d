"""A directory of DER files, one per staple, readable with ``openssl ocsp -respin FILE -resp_text``."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import structlog

from ocspproxy.ocsp import CertKey
from ocspproxy.store.base import Stamp, StoreError

__all__ = ["INDEX_NAME", "SNAPSHOT_NAME", "FileStore", "read_state_file", "write_atomically"]

log = structlog.get_logger("ocspproxy")

_NAME = re.compile(r"^(sha1|sha256|sha384|sha512)-([0-9a-f]{40,128})-([0-9a-f]{1,80})\.der$")
_TMP_PREFIX = ".tmp-"
# The state directory's other files: the certificate index (ocspproxy/certindex.py) and the staples
# snapshot (ocspproxy/snapshot.py). Named here so the directory checks know them as ours.
INDEX_NAME = "inventory.index"
SNAPSHOT_NAME = "staples.snapshot"
_STATE_FILES = frozenset({INDEX_NAME, SNAPSHOT_NAME})
# OCSP responses are small; anything bigger in the state directory is not ours.
MAX_FILE_BYTES = 1 << 20
# Entries are opened without following a symbolic link and without blocking (on a FIFO swapped in).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_HEX_DIGITS = {alg: 2 * hashlib.new(alg).digest_size for alg in ("sha1", "sha256", "sha384", "sha512")}


class FileStore:
    """Files named ``<hash alg>-<issuer key hash>-<serial>.der`` in one private directory.

    Writes go to a temporary file in the same directory, are written in full and fsynced, renamed over
    the old file, and the directory is fsynced, so a crash at any moment leaves the old or the new file.
    A failed write (disk full, read-only file system) removes its temporary file and leaves the old file
    as it was. Leftover temporary files are removed when the store opens.

    The directory is created mode 0700 and missing parents at most 0755, whatever the umask; files are
    0600. An existing directory that group or others may access is tightened to 0700 when this user owns
    it and it holds nothing but staple files; otherwise a warning is logged and it is left alone.

    Opening never fails: a directory that cannot be created or used (a file in its place, a read-only
    file system) is logged once (``usable`` turns False), ``load_all`` then yields nothing and reports
    no entry, there is no snapshot to read, and every ``save`` raises ``StoreError`` (and tries the
    directory again) until it is usable, while the daemon serves from memory.

    Only regular files are loaded. Symbolic links inside the directory are never followed, whether they
    point inside or outside it: a link could make ocspproxy load, and then serve, a response kept
    anywhere. They are reported and skipped like FIFOs, directories, empty and oversized files. The
    state directory itself may be a symbolic link.

    Two more files live there, written the same way and known to the checks above as ours: the
    staples snapshot (``SNAPSHOT_NAME``, see ``SnapshotStore``) and the certificate index
    (``INDEX_NAME``, ocspproxy/certindex.py).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.usable = True  # False from a failure to open or list the directory until it opens again
        try:
            self._open()
        except OSError as exc:
            self._unusable(exc)

    def _unusable(self, exc: OSError) -> None:
        """Say once that the directory cannot be used: what follows from it (nothing to load, no
        snapshot) is not reported again as a problem of its own."""
        if self.usable:
            log.error(
                "state directory unusable; serving from memory",
                state_dir=str(self.directory),
                error=exc.strerror or str(exc),
            )
        self.usable = False

    def _open(self, *, remove_leftovers: bool = True) -> None:
        """Create or check the directory, remove leftover temporary files. Raises OSError if unusable."""
        created = self._make_directory()
        st = os.stat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(self.directory))
        if not created and stat.S_IMODE(st.st_mode) & 0o077:
            self._tighten(st)
        for name in os.listdir(self.directory) if remove_leftovers else ():
            if name.startswith(_TMP_PREFIX):
                try:
                    (self.directory / name).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot remove leftover temporary file", path=name, error=exc.strerror)

    def _make_directory(self) -> bool:
        """``mkdir -p``: the directory 0700, parents at most 0755. True if this call created it."""
        missing: list[Path] = []
        path = self.directory
        while not os.path.lexists(path) and path != path.parent:
            missing.append(path)
            path = path.parent
        if not missing:
            return False
        for parent in reversed(missing[1:]):
            with contextlib.suppress(FileExistsError):
                os.mkdir(parent, 0o755)  # the umask can only take bits away: never group-writable
        try:
            os.mkdir(self.directory, 0o700)
        except FileExistsError:
            return False  # made meanwhile by someone else: checked like any existing directory
        os.chmod(self.directory, 0o700)  # a umask such as 0277 would leave it unwritable
        return True

    def _tighten(self, st: os.stat_result) -> None:
        where = {"state_dir": str(self.directory), "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
        if st.st_uid != os.geteuid():
            log.warning("state directory is not private; not ours to change", **where)
            return
        foreign = [
            n
            for n in os.listdir(self.directory)
            if not _NAME.match(n) and not n.startswith(_TMP_PREFIX) and n not in _STATE_FILES
        ]
        if foreign:
            log.warning("state directory is not private; it holds other files, left as it is", **where)
            return
        try:
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            log.warning("state directory is not private; cannot change it", error=exc.strerror, **where)
            return
        log.warning("state directory was not private; changed to 0700", **where)

    def path_for(self, key: CertKey) -> Path:
        return self.directory / f"{key}.der"

    def save(self, key: CertKey, der: bytes) -> Stamp:
        """Write der for key; returns the written file's stamp."""
        final = self.path_for(key)
        try:
            if not os.path.isdir(self.directory):
                # Unusable so far: perhaps mounted or repaired since. Temporary files found now may
                # belong to concurrent saves of other keys: left alone.
                self._open(remove_leftovers=False)
            stamp = write_atomically(self.directory, final.name, der)
            self.usable = True
            return stamp
        except OSError as exc:
            raise _error(f"cannot write {final}", exc) from exc

    def load(self, key: CertKey) -> bytes | None:
        found = self.load_stamped(key)
        return None if found is None else found[0]

    def load_stamped(self, key: CertKey) -> tuple[bytes, Stamp] | None:
        try:
            return self._read(self.path_for(key))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise _error(f"cannot read {self.path_for(key)}", exc) from exc

    def delete(self, key: CertKey) -> None:
        try:
            self.path_for(key).unlink(missing_ok=True)
            self._sync_directory()
        except OSError as exc:
            raise _error(f"cannot delete {self.path_for(key)}", exc) from exc

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[tuple[CertKey, bytes]]:
        for key, _, der in self.load_all_stamped(on_error, {}):
            assert der is not None  # nothing is known: every entry is read
            yield key, der

    def load_all_stamped(
        self, on_error: Callable[[str, Exception], None], known: Mapping[CertKey, Stamp]
    ) -> Iterator[tuple[CertKey, Stamp, bytes | None]]:
        """Every entry with its stamp. One whose stamp equals ``known[key]`` is only ``lstat``-ed and
        comes with None for its bytes; the others are read, their stamp taken from the open file."""
        try:
            names = sorted(os.listdir(self.directory))
            # lstat by name relative to the directory: no path to build per file.
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if known else None
        except OSError as exc:
            self._unusable(exc)  # the directory, not a stored staple: no entry to report
            return
        # By file name: a known entry is recognised without parsing its name, and keeps its key.
        by_name = {f"{key}.der": (key, stamp) for key, stamp in known.items()}
        try:
            for name in names:
                hit = by_name.get(name)
                if hit is not None:
                    key, was = hit
                    try:
                        st = os.lstat(name, dir_fd=dir_fd)
                    except OSError as exc:
                        on_error(str(self.directory / name), exc)
                        continue
                    now = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                    if stat.S_ISREG(st.st_mode) and was == now:
                        yield key, was, None
                        continue
                match = _NAME.match(name)
                if match is None:
                    continue
                alg, key_hash, serial = match.groups()
                if len(key_hash) != _HEX_DIGITS[alg]:
                    on_error(
                        str(self.directory / name), ValueError("file name does not match its hash algorithm")
                    )
                    continue
                key = CertKey(alg=alg, issuer_key_hash=bytes.fromhex(key_hash), serial=int(serial, 16))
                try:
                    der, stamp = self._read(self.directory / name)
                except (OSError, ValueError) as exc:
                    on_error(str(self.directory / name), exc)
                    continue
                yield key, stamp, der
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def stamp(self, key: CertKey) -> Stamp | None:
        """The stamp of key's file as it is now; None when it is missing, not a regular file (a
        link is not followed) or cannot be looked at."""
        try:
            st = os.lstat(self.path_for(key))
        except OSError:
            return None
        return Stamp.of(st) if stat.S_ISREG(st.st_mode) else None

    def read_snapshot(self) -> bytes | None:
        """The snapshot blob last written, or None when there is none (or no usable directory,
        reported already)."""
        if not self.usable:
            return None
        try:
            return read_state_file(self.directory / SNAPSHOT_NAME)
        except (OSError, ValueError) as exc:
            raise _error(f"cannot read {self.directory / SNAPSHOT_NAME}", exc) from exc

    def write_snapshot(self, data: bytes) -> None:
        try:
            write_atomically(self.directory, SNAPSHOT_NAME, data)
        except OSError as exc:
            raise _error(f"cannot write {self.directory / SNAPSHOT_NAME}", exc) from exc

    @staticmethod
    def _read(path: Path) -> tuple[bytes, Stamp]:
        """A regular file's bytes and stamp; never through a symbolic link. Raises OSError or ValueError."""
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise ValueError("a symbolic link; not followed")
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        fd = os.open(path, _READ_FLAGS)  # O_NOFOLLOW: swapped for a link since lstat fails with ELOOP
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            data = f.read(MAX_FILE_BYTES + 1)
        if not data:
            raise ValueError("empty file")
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return data, Stamp.of(st)

    def _sync_directory(self) -> None:
        _sync_directory(self.directory)


def write_atomically(directory: Path, name: str, data: bytes) -> Stamp:
    """Write directory/name, mode 0600: temporary file, fsync, rename, fsync of the directory, so a
    crash leaves the old or the new file. Returns the new file's stamp, taken from the open file
    after the rename (which moves its ctime): the stamp of exactly these bytes. Raises OSError; a
    failed write removes its temporary file and leaves the old file as it was."""
    final = directory / name
    tmp = directory / f"{_TMP_PREFIX}{name}.{secrets.token_hex(4)}"
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
    _sync_directory(directory)
    return stamp


def read_state_file(path: Path) -> bytes | None:
    """A regular file's bytes (not through a symbolic link), or None when it does not exist.
    Raises OSError or ValueError."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        return f.read()


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _error(what: str, exc: OSError | ValueError) -> StoreError:
    """A StoreError naming the path, keeping the errno (ENOSPC, EROFS ...) when there is one."""
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    error = StoreError(f"{what}: {reason}")
    error.errno = exc.errno if isinstance(exc, OSError) else None
    return error
