"""The contract every staple store keeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple

__all__ = ["Store", "StoreError", "Stored"]


class StoreError(OSError):
    """A store operation failed; the in-memory staple stays served. ``errno`` is kept when known
    (``ENOSPC``, ``EROFS`` ...)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """An entry as a store gives it back: the DER exactly as saved, and, when the store kept them,
    the fields of the staple it was saved as (``hint``: unverified, times still to be checked; it
    spares parsing the DER). Whoever loads an entry validates it like an answer from a CA."""

    key: CertKey
    der: bytes
    hint: Staple | None = None


class Store(Protocol):
    """Where accepted staples persist across restarts.

    Rules every backend keeps:

    - ``save`` is atomic and durable once it returns: a reader (this process after a crash, or another
      process) sees either the previous bytes or the new bytes for a key, never a mix or a truncation.
      A ``save`` that fails (disk full, read-only, a crash half way) leaves the previous bytes as they
      were and nothing half-written that a later reader could take for an entry.
    - Values are the DER bytes exactly as the CA sent them; a store never re-encodes or interprets them.
      ``save`` gets the whole validated ``Staple`` so that a backend may keep its fields beside the
      bytes (as ``Stored.hint``, or to expire the entry at its nextUpdate); nothing it keeps is
      trusted: a loaded entry is validated again.
    - Creating a store never fails because its storage is unusable (missing, read-only, full, a file
      where a directory should be): it reports that in the log once, ``load_all`` yields nothing,
      and ``save`` raises ``StoreError`` until the storage is usable again. The service keeps
      serving from memory meanwhile.
    - ``load_all`` yields every entry it can read. An unreadable entry is reported through ``on_error``
      (its place and why) and skipped; it never raises for one bad entry, and never blocks on one.
      Only the store's own entries are read: a backend never follows a link out of its storage.
    - ``load`` returns one entry, or None when there is none; it raises ``StoreError`` when the entry
      cannot be read.
    - ``delete`` of a missing key is not an error.
    - ``prepare`` is called once before the first ``load``/``load_all`` (a backend may read an index
      there); it returns how many entries it expects, or 0 when it cannot tell.
    - ``remember`` is told the staple built from an entry ``load``/``load_all`` just gave back (it is
      cheap: called in the event loop); ``distrust`` that the entry last given for a key failed
      validation, so that a backend which gave it from a copy of its own (the file backend's
      snapshot) gives the original next time; ``checkpoint`` may write what makes the next start
      faster (that snapshot). All three may do nothing. ``checkpoint`` writes nothing before
      ``load_all`` has been run to its end, and raises ``StoreError``.
    - Entries are private to the service user (files 0600 in a 0700 directory), whatever the umask.
    - Methods may block (disk, network): async callers run them in a worker thread. Callers write one
      key from one writer at a time; different keys may be written concurrently.
    - Failures raise ``StoreError`` naming the key or path.
    """

    def prepare(self) -> int: ...

    def save(self, staple: Staple) -> None: ...

    def load(self, key: CertKey) -> Stored | None: ...

    def delete(self, key: CertKey) -> None: ...

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[Stored]: ...

    def remember(self, staple: Staple) -> None: ...

    def distrust(self, key: CertKey) -> None: ...

    def checkpoint(self, now: datetime) -> None: ...
