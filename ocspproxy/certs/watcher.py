"""When to read the certificates again: the certificate files, new matches of the certificate globs,
and Apache's configuration files, compared by (mtime, size). Told by inotify where available (a full
comparison then runs only every few minutes, as a safety net), else by comparing every file's state
every ``interval`` seconds, at most ``_STATS_PER_SECOND`` files a second on average."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ocspproxy.certs.watch import DirectoryWatch

__all__ = ["FileWatcher", "file_states"]

FileStates = tuple[tuple[str, int, int], ...]  # (path, mtime_ns, size); -1, -1: no stat

_STATS_PER_SECOND = 5000
_NOTIFIED_POLL = 300.0


def file_states(paths: Iterable[str]) -> FileStates:
    """(path, mtime_ns, size) of each file, in path order; -1, -1 for one that cannot be stat-ed."""
    out = []
    for path in sorted(paths):
        try:
            st = os.stat(path)
            out.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((path, -1, -1))
    return tuple(out)


class FileWatcher:
    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._files: tuple[str, ...] = ()
        self._patterns: tuple[str, ...] = ()
        self.seen: FileStates = ()  # the files' states as last seen
        self._notifier = DirectoryWatch.open()
        self._event = asyncio.Event()
        self._watched_for: FileStates | None = None
        self._notified = False  # every watched directory has an inotify watch
        if self._notifier is not None:
            asyncio.get_running_loop().add_reader(self._notifier.fd, self._on_events)

    def follow(
        self,
        *,
        files: Iterable[str],
        patterns: Iterable[str],
        seen: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """Watch these files (and where new matches of these globs would appear). ``seen``: the
        states they had when they were read (the inventory's), so that a change made since is
        noticed; files without one are stat-ed now."""
        self._files = tuple(files)
        self._patterns = tuple(p for p in patterns if glob.has_magic(p))
        known = dict(seen or {})
        rest = file_states(p for p in self._files if p not in known)
        states = {path: (mtime, size) for path, mtime, size in rest} | known
        self.seen = tuple((path, *states[path]) for path in sorted(states))

    async def refollow(self, *, files: Iterable[str], patterns: Iterable[str]) -> None:
        """``follow``, every file stat-ed now, in a worker thread (after a reload)."""
        self._files, self._patterns = tuple(files), tuple(p for p in patterns if glob.has_magic(p))
        self.seen = await asyncio.to_thread(self.look)

    async def changed(self) -> None:
        """Return once the files differ from what was seen (and take their new states as seen)."""
        while True:
            poll = max(self.interval, len(self.seen) / _STATS_PER_SECOND)
            if self._notifier is not None and self._watched_for is not self.seen:
                # Resolving every path costs a syscall each: only when the file set changed.
                self._watched_for = self.seen
                self._notified = self._notifier.watch(await asyncio.to_thread(self.directories))
                self._event.set()  # a change made before the watches were in place raised no event
            if self._notified:
                poll = max(poll, _NOTIFIED_POLL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._event.wait()
            if self._event.is_set():
                await asyncio.sleep(0.2)  # let a writer finish: several files, a rename
                self._event.clear()
            states = await asyncio.to_thread(self.look)
            if states != self.seen:
                self.seen = states
                return

    def directories(self) -> set[Path]:
        """The directories holding the watched files, the real ones behind them, and where a new
        glob match would appear. Looks at every file (a symbolic link's target may live elsewhere):
        run in a worker thread."""
        parents: set[str] = set()
        dirs: set[str] = set()
        for path, _, _ in self.seen:
            parents.add(os.path.dirname(path) or ".")
            if os.path.islink(path):  # certbot's live/ links point into archive/
                dirs.add(os.path.dirname(os.path.realpath(path)))
        for parent in parents:
            dirs.add(parent)
            dirs.add(os.path.realpath(parent))
        for pattern in self._patterns:
            dirs.add(os.path.dirname(pattern) or ".")  # where a new file matching a glob would appear
        return {Path(d) for d in dirs if not glob.has_magic(d)}

    def close(self) -> None:
        if self._notifier is not None:
            asyncio.get_running_loop().remove_reader(self._notifier.fd)
            self._notifier.close()
            self._notifier = None

    def _on_events(self) -> None:
        if self._notifier is not None and self._notifier.drain():
            self._event.set()

    def look(self) -> FileStates:
        """What the watched files look like now; a new file matching a glob is a change too."""
        paths = set(self._files)
        for pattern in self._patterns:
            paths.update(glob.glob(pattern))
        return file_states(paths)
