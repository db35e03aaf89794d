"""The contract every staple store keeps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple, Protocol, runtime_checkable

from ocspproxy.ocsp import CertKey

__all__ = ["SnapshotStore", "Stamp", "Store", "StoreError"]


class StoreError(OSError):
    """A store operation failed; the in-memory staple stays served. ``errno`` is kept when known
    (``ENOSPC``, ``EROFS``, ``EACCES`` ...)."""


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


class Store(Protocol):
    """Where accepted staples persist across restarts.

    Rules every backend keeps:

    - ``save`` is atomic and durable once it returns: a reader (this process after a crash, or another
      process) sees either the previous bytes or the new bytes for a key, never a mix or a truncation.
      A ``save`` that fails (disk full, read-only, a crash half way) leaves the previous bytes as they
      were and nothing half-written that a later reader could take for an entry.
    - Values are the DER bytes exactly as the CA sent them; a store never re-encodes or interprets them.
    - Creating a store never fails because its storage is unusable (missing, read-only, full, a file
      where a directory should be): it reports that in the log once (on creation, or when ``load_all``
      finds it so), ``load_all`` then yields nothing (``on_error`` is for entries), and ``save``
      raises ``StoreError`` until the storage is usable again. The daemon keeps serving from memory
      meanwhile.
    - ``load_all`` yields every entry it can read. An unreadable entry is reported through ``on_error``
      and skipped; it never raises for one bad entry, and never blocks on one. Only the store's own
      entries are read: a backend never follows a link out of its storage (the file backend follows
      no symbolic link inside its directory at all). Callers validate what they get.
    - Entries are private to the service user (files 0600 in a 0700 directory), whatever the umask.
    - ``delete`` of a missing key is not an error.
    - Methods may block (disk, network): async callers run them in a worker thread. Callers write one
      key from one writer at a time; different keys may be written concurrently.
    - Failures raise ``StoreError`` naming the key or path.
    - ``save`` may return a ``Stamp`` of the entry it wrote (see ``SnapshotStore``), else None.
    """

    def save(self, key: CertKey, der: bytes) -> Stamp | None: ...

    def load(self, key: CertKey) -> bytes | None: ...

    def delete(self, key: CertKey) -> None: ...

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[tuple[CertKey, bytes]]: ...


@runtime_checkable
class SnapshotStore(Store, Protocol):
    """Optional: a store that can tell, without reading an entry, that it is unchanged since a stamp
    was taken, and that keeps one snapshot blob (the staples already parsed) beside its entries.

    - ``save`` returns the stamp of the entry it wrote, taken from the written file itself after it
      took its name: a stamp always belongs to exactly those bytes.
    - ``load_all_stamped`` is ``load_all`` with each entry's stamp; an entry whose current stamp
      equals ``known[key]`` is not read and comes with ``None`` for its bytes.
    - ``load_stamped`` is ``load`` with the stamp of the entry read.
    - ``stamp`` returns the current stamp of one entry (None when there is no such entry or it
      cannot be looked at), without reading it.
    - ``read_snapshot`` returns the blob last written (None when there is none) and raises
      ``StoreError``; ``write_snapshot`` replaces it atomically and raises ``StoreError``.
    """

    def save(self, key: CertKey, der: bytes) -> Stamp: ...

    def load_all_stamped(
        self, on_error: Callable[[str, Exception], None], known: Mapping[CertKey, Stamp]
    ) -> Iterator[tuple[CertKey, Stamp, bytes | None]]: ...

    def load_stamped(self, key: CertKey) -> tuple[bytes, Stamp] | None: ...

    def stamp(self, key: CertKey) -> Stamp | None: ...

    def read_snapshot(self) -> bytes | None: ...

    def write_snapshot(self, data: bytes) -> None: ...
