"""Change notification for the directories holding certificate files (Linux inotify, via ctypes).

It only says "something changed in one of these directories"; what changed is worked out by the
caller's own comparison of file states. Where inotify is not available (not Linux, limits reached),
``DirectoryWatch.open`` returns None and the caller keeps polling.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DirectoryWatch"]

# IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_MASK = 0x002 | 0x004 | 0x008 | 0x040 | 0x080 | 0x100 | 0x200
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class DirectoryWatch:
    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self.fd = fd
        self._libc = libc
        self._watched: set[Path] = set()

    @classmethod
    def open(cls) -> DirectoryWatch | None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return cls(fd, libc) if fd >= 0 else None

    def watch(self, directories: Iterable[Path]) -> bool:
        """Add directories (watches are never removed: a few stale ones cost nothing). False when
        one could not be added: the caller must then not rely on notifications alone."""
        complete = True
        for directory in directories:
            if directory in self._watched:
                continue
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), _MASK)
            if wd < 0:
                complete = False
                continue
            self._watched.add(directory)
        return complete

    def drain(self) -> bool:
        """Read pending events; True if there were any."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            if not data:
                return seen
            seen = True

    def close(self) -> None:
        os.close(self.fd)
