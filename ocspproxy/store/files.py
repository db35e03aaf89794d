"""A directory of DER files, one per staple, readable with ``openssl ocsp -respin FILE -resp_text``."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import structlog

from ocspproxy.core.ocsp import CertKey, parse_key
from ocspproxy.core.staple import Staple
from ocspproxy.store.atomic import Stamp, read_regular, read_state_file, sync_directory, write_atomically
from ocspproxy.store.base import Stored, StoreError
from ocspproxy.store.directory import SNAPSHOT_NAME, STAPLE_NAME, StateDirectory
from ocspproxy.store.snapshot import Snapshot, SnapshotError, encode

__all__ = ["MAX_FILE_BYTES", "FileStore", "file_name"]

log = structlog.get_logger("ocspproxy")

# OCSP responses are small; anything bigger in the state directory is not ours.
MAX_FILE_BYTES = 1 << 20


def file_name(key: CertKey) -> str:
    """The one rule for a staple's file name: ``<hash alg>-<issuer key hash>-<serial>.der``."""
    return f"{key}.der"


class FileStore:
    """Files named ``<hash alg>-<issuer key hash>-<serial>.der`` in one private directory
    (``StateDirectory``: 0700, files 0600, whatever the umask).

    Writes go to a temporary file in the same directory, are written in full and fsynced, renamed over
    the old file, and the directory is fsynced (``write_atomically``), so a crash at any moment leaves
    the old or the new file. A failed write leaves the old file as it was.

    Only regular files are loaded. Symbolic links inside the directory are never followed, whether they
    point inside or outside it: a link could make ocspproxy load, and then serve, a response kept
    anywhere. They are reported and skipped like FIFOs, directories, empty and oversized files.

    Private to this backend: the staples snapshot (``SNAPSHOT_NAME``, ocspproxy/store/snapshot.py).
    The store pairs each file's stamp (size, mtime, inode, ctime: taken from the written or read
    file itself) with the staple whose bytes that file held; ``checkpoint`` writes those pairs. At
    the next start a file whose stamp still matches is only ``lstat``-ed: its entry comes from the
    snapshot, bytes and parsed fields (``Stored.hint``), validated by the caller like any other.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = StateDirectory(directory)
        # Saves run in worker threads: the pairs and the flag change under this lock.
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one snapshot write at a time
        self._pairs: dict[CertKey, tuple[Stamp, Staple]] = {}
        self._read: dict[CertKey, tuple[Stamp, bytes]] = {}  # read at load, staple not built yet
        self._changed = False
        self._loaded = True  # False from prepare until load_all has run to its end
        self._snapshot = Snapshot()
        self._from_snapshot = 0

    @property
    def usable(self) -> bool:
        return self.state.usable

    def path_for(self, key: CertKey) -> Path:
        return self.directory / file_name(key)

    def prepare(self) -> int:
        """Read the snapshot; entries are built from it as they are asked for. Returns its size."""
        self._loaded = False
        if not self.state.usable:
            return 0
        try:
            self._snapshot = Snapshot(read_state_file(self.directory / SNAPSHOT_NAME))
        except (OSError, ValueError, SnapshotError) as exc:
            log.warning("staples snapshot unusable; reading every stored staple", error=str(exc))
            self._snapshot = Snapshot()
        return len(self._snapshot)

    def save(self, staple: Staple) -> None:
        final = self.path_for(staple.key)
        try:
            self.state.reopen()
            stamp = write_atomically(self.directory, final.name, staple.der)
        except OSError as exc:
            raise _error(f"cannot write {final}", exc) from exc
        self.state.usable = True
        with self._lock:
            self._read.pop(staple.key, None)
            self._pairs[staple.key] = (stamp, staple)
            self._changed = True

    def load(self, key: CertKey) -> Stored | None:
        """key's entry: from the snapshot when its file is unchanged since (one ``lstat``), else
        read from its file."""
        was = self._snapshot.stamp(key)
        if was is not None and self._stamp(key) == was and (hint := self._snapshot.staple(key)) is not None:
            with self._lock:
                self._pairs[key] = (was, hint)
            self._from_snapshot += 1
            return Stored(key, hint.der, hint)
        try:
            der, st = self._read_entry(self.path_for(key))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise _error(f"cannot read {self.path_for(key)}", exc) from exc
        with self._lock:
            self._read[key] = (Stamp.of(st), der)
        return Stored(key, der)

    def delete(self, key: CertKey) -> None:
        try:
            self.path_for(key).unlink(missing_ok=True)
            sync_directory(self.directory)
        except OSError as exc:
            raise _error(f"cannot delete {self.path_for(key)}", exc) from exc
        with self._lock:
            if self._pairs.pop(key, None) is not None:
                self._changed = True
            self._read.pop(key, None)

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[Stored]:
        """Every entry. One whose file's stamp equals its snapshot entry's is only ``lstat``-ed and
        comes from the snapshot; the others are read, their stamp taken from the open file."""
        try:
            yield from self._entries(on_error)
        finally:
            size, used = len(self._snapshot), self._from_snapshot
            if size:
                log.info("staples snapshot used", staples=used, of=size)
            with self._lock:
                # Written again when it does not describe exactly what was found.
                self._changed |= used != size or len(self._pairs) != size
            self._snapshot = Snapshot()  # not needed again: let it go
            self._loaded = True

    def _entries(self, on_error: Callable[[str, Exception], None]) -> Iterator[Stored]:
        if not self.state.usable:
            return  # said once already; not an entry's problem
        snapshot = self._snapshot
        try:
            names = sorted(os.listdir(self.directory))
            # lstat by name relative to the directory: no path to build per file.
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self.state.unusable(exc)
            return
        # By file name: a known entry is recognised without parsing its name, and keeps its key.
        by_name = {file_name(key): key for key in snapshot}
        try:
            for name in names:
                key = by_name.get(name)
                if key is not None:
                    try:
                        st = os.lstat(name, dir_fd=dir_fd)
                    except OSError as exc:
                        on_error(str(self.directory / name), exc)
                        continue
                    was = snapshot.stamp(key)
                    if stat.S_ISREG(st.st_mode) and was == Stamp.of(st):
                        hint = snapshot.staple(key)
                        if hint is not None:
                            with self._lock:
                                self._pairs[key] = (was, hint)
                            self._from_snapshot += 1
                            yield Stored(key, hint.der, hint)
                            continue
                key = _key_of(name, self.directory, on_error)
                if key is None:
                    continue
                try:
                    der, st = self._read_entry(self.directory / name)
                except (OSError, ValueError) as exc:
                    on_error(str(self.directory / name), exc)
                    continue
                with self._lock:
                    self._read[key] = (Stamp.of(st), der)
                yield Stored(key, der)
        finally:
            os.close(dir_fd)

    def remember(self, staple: Staple) -> None:
        """Pair the staple built from an entry just loaded (or checked since) with its file's stamp,
        when it holds exactly those bytes; one staple object per key is kept, not two."""
        with self._lock:
            read = self._read.get(staple.key)
            if read is not None and read[1] == staple.der:
                del self._read[staple.key]
                self._pairs[staple.key] = (read[0], staple)
                self._changed = True
                return
            pair = self._pairs.get(staple.key)
            if pair is not None and pair[1] is not staple and pair[1].der == staple.der:
                self._pairs[staple.key] = (pair[0], staple)

    def distrust(self, key: CertKey) -> None:
        """key's entry failed validation: never from the snapshot again, and not written to the
        next one until its file has been read (and remembered) again."""
        self._snapshot.discard(key)
        with self._lock:
            if self._pairs.pop(key, None) is not None:
                self._changed = True

    def checkpoint(self, now: datetime) -> None:
        """Write the snapshot when the staples changed since the last one (never before the start-up
        load is done). Raises StoreError; the next checkpoint tries again."""
        with self._writing:
            with self._lock:
                if not self._changed or not self._loaded or not self.state.usable:
                    return
                self._changed = False
                # Taken at one moment: consistent pairs only, whatever writes go on meanwhile (a
                # file written later has another stamp, and is read at the next start).
                pairs = [pair for pair in self._pairs.values() if pair[1].servable(now)]
            try:
                write_atomically(self.directory, SNAPSHOT_NAME, encode(pairs))
            except OSError as exc:
                with self._lock:
                    self._changed = True
                raise _error(f"cannot write {self.directory / SNAPSHOT_NAME}", exc) from exc
        log.info("staples snapshot written", staples=len(pairs))

    def _stamp(self, key: CertKey) -> Stamp | None:
        """The stamp of key's file as it is now; None when missing, not a regular file (a link is not
        followed) or not to be looked at."""
        try:
            st = os.lstat(self.path_for(key))
        except OSError:
            return None
        return Stamp.of(st) if stat.S_ISREG(st.st_mode) else None

    @staticmethod
    def _read_entry(path: Path) -> tuple[bytes, os.stat_result]:
        """A regular file's bytes and stat, never through a symbolic link (O_NOFOLLOW: ELOOP)."""
        try:
            return read_regular(path, limit=MAX_FILE_BYTES, allow_empty=False)
        except OSError as exc:
            if os.path.islink(path):
                raise ValueError("a symbolic link; not followed") from exc
            raise


def _key_of(name: str, directory: Path, on_error: Callable[[str, Exception], None]) -> CertKey | None:
    """The key a staple file's name spells; None for a file that is not a staple (reported when its
    name looks like one but does not add up)."""
    if STAPLE_NAME.match(name) is None:
        return None
    try:
        return parse_key(name.removesuffix(".der"))
    except ValueError:
        on_error(str(directory / name), ValueError("file name does not match its hash algorithm"))
        return None


def _error(what: str, exc: OSError | ValueError) -> StoreError:
    """A StoreError naming the path, keeping the errno (ENOSPC, EROFS ...) when there is one."""
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    error = StoreError(f"{what}: {reason}")
    error.errno = exc.errno if isinstance(exc, OSError) else None
    return error
