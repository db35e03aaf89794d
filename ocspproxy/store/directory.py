"""The private state directory: made 0700 (parents at most 0755) whatever the umask, tightened when
it is found open to others and holds only our files, leftover temporary files removed."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

import structlog

from ocspproxy.store.atomic import TMP_PREFIX

__all__ = ["INDEX_NAME", "SNAPSHOT_NAME", "SPOOL_NAME", "STAPLE_NAME", "WANT_NAME", "StateDirectory"]

log = structlog.get_logger("ocspproxy")

# <hash alg>-<issuer key hash>-<serial>.der: a staple (ocspproxy/store/files.py)
STAPLE_NAME = re.compile(r"^(sha1|sha256|sha384|sha512)-([0-9a-f]{40,128})-([0-9a-f]{1,80})\.der$")
# The directory's other files: the certificate index (ocspproxy/certs/index.py) and the staples
# snapshot (ocspproxy/store/snapshot.py). Named here so the checks below know them as ours.
INDEX_NAME = "inventory.index"
SNAPSHOT_NAME = "staples.snapshot"
# Imported bundles waiting for the service (ocspproxy/bundle/inbox.py): a directory, 0700; and the
# want file where the README suggests [bundle] want_file keeps it.
SPOOL_NAME = "incoming"
WANT_NAME = "want.tar"
_STATE_FILES = frozenset({INDEX_NAME, SNAPSHOT_NAME, SPOOL_NAME, WANT_NAME})


class StateDirectory:
    """A directory that must be private. Opening never fails: one that cannot be created or used (a
    file in its place, a read-only file system) is logged once and ``usable`` turns False until it
    opens again (a write succeeds), so what follows from it is not reported as a problem of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.usable = True
        try:
            self._open()
        except OSError as exc:
            self.unusable(exc)

    def unusable(self, exc: OSError) -> None:
        if self.usable:
            log.error(
                "state directory unusable; serving from memory",
                state_dir=str(self.path),
                error=exc.strerror or str(exc),
            )
        self.usable = False

    def reopen(self) -> None:
        """Before a write: a directory unusable so far may have been mounted or repaired since.
        Raises OSError. Temporary files found now may be concurrent writes': left alone."""
        if not os.path.isdir(self.path):
            self._open(remove_leftovers=False)

    def _open(self, *, remove_leftovers: bool = True) -> None:
        """Create or check the directory, remove leftover temporary files. Raises OSError if unusable."""
        created = self._make()
        st = os.stat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(self.path))
        if not created and stat.S_IMODE(st.st_mode) & 0o077:
            self._tighten(st)
        for name in os.listdir(self.path) if remove_leftovers else ():
            if name.startswith(TMP_PREFIX):
                try:
                    (self.path / name).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot remove leftover temporary file", path=name, error=exc.strerror)

    def _make(self) -> bool:
        """``mkdir -p``: the directory 0700, parents at most 0755. True if this call created it."""
        missing: list[Path] = []
        path = self.path
        while not os.path.lexists(path) and path != path.parent:
            missing.append(path)
            path = path.parent
        if not missing:
            return False
        for parent in reversed(missing[1:]):
            with contextlib.suppress(FileExistsError):
                os.mkdir(parent, 0o755)  # the umask can only take bits away: never group-writable
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            return False  # made meanwhile by someone else: checked like any existing directory
        os.chmod(self.path, 0o700)  # a umask such as 0277 would leave it unwritable
        return True

    def _tighten(self, st: os.stat_result) -> None:
        where = {"state_dir": str(self.path), "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
        if st.st_uid != os.geteuid():
            log.warning("state directory is not private; not ours to change", **where)
            return
        foreign = [
            n
            for n in os.listdir(self.path)
            if not STAPLE_NAME.match(n) and not n.startswith(TMP_PREFIX) and n not in _STATE_FILES
        ]
        if foreign:
            log.warning("state directory is not private; it holds other files, left as it is", **where)
            return
        try:
            os.chmod(self.path, 0o700)
        except OSError as exc:
            log.warning("state directory is not private; cannot change it", error=exc.strerror, **where)
            return
        log.warning("state directory was not private; changed to 0700", **where)
