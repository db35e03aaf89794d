"""The contract every staple store keeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from ocspproxy.ocsp import CertKey

__all__ = ["Store", "StoreError"]


class StoreError(OSError):
    """A store operation failed; the in-memory staple stays served. ``errno`` is kept when known
    (``ENOSPC``, ``EROFS``, ``EACCES`` ...)."""


class Store(Protocol):
    """Where accepted staples persist across restarts.

    Rules every backend keeps:

    - ``save`` is atomic and durable once it returns: a reader (this process after a crash, or another
      process) sees either the previous bytes or the new bytes for a key, never a mix or a truncation.
      A ``save`` that fails (disk full, read-only, a crash half way) leaves the previous bytes as they
      were and nothing half-written that a later reader could take for an entry.
    - Values are the DER bytes exactly as the CA sent them; a store never re-encodes or interprets them.
    - Creating a store never fails because its storage is unusable (missing, read-only, full, a file
      where a directory should be): it reports that in the log, ``load_all`` reports it through
      ``on_error``, and ``save`` raises ``StoreError`` until the storage is usable again. The daemon
      keeps serving from memory meanwhile.
    - ``load_all`` yields every entry it can read. An unreadable entry is reported through ``on_error``
      and skipped; it never raises for one bad entry, and never blocks on one. Only the store's own
      entries are read: a backend never follows a link out of its storage (the file backend follows
      no symbolic link inside its directory at all). Callers validate what they get.
    - Entries are private to the service user (files 0600 in a 0700 directory), whatever the umask.
    - ``delete`` of a missing key is not an error.
    - Methods may block (disk, network): async callers run them in a worker thread. Callers write one
      key from one writer at a time; different keys may be written concurrently.
    - Failures raise ``StoreError`` naming the key or path.
    """

    def save(self, key: CertKey, der: bytes) -> None: ...

    def load(self, key: CertKey) -> bytes | None: ...

    def delete(self, key: CertKey) -> None: ...

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[tuple[CertKey, bytes]]: ...
