"""The contract every staple store keeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from ocspproxy.ocsp import CertKey

__all__ = ["Store", "StoreError"]


class StoreError(OSError):
    """A store operation failed; the in-memory staple stays served."""


class Store(Protocol):
    """Where accepted staples persist across restarts.

    Rules every backend keeps:

    - ``save`` is atomic and durable once it returns: a reader (this process after a crash, or another
      process) sees either the previous bytes or the new bytes for a key, never a mix or a truncation.
    - Values are the DER bytes exactly as the CA sent them; a store never re-encodes or interprets them.
    - ``load_all`` yields every entry it can read. An unreadable entry is reported through ``on_error``
      and skipped; it never raises for one bad entry. Callers validate what they get.
    - ``delete`` of a missing key is not an error.
    - Methods may block (disk, network): async callers run them in a worker thread.
    - Failures raise ``StoreError`` naming the key or path.
    """

    def save(self, key: CertKey, der: bytes) -> None: ...

    def load(self, key: CertKey) -> bytes | None: ...

    def delete(self, key: CertKey) -> None: ...

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[tuple[CertKey, bytes]]: ...
