"""The seams between the write path and the outside: where an answer comes from (``Source``) and who
may ask now (``Lease``).

A fleet plugs in here: a Source that asks another ocspproxy or reads a shared store, a Lease that is
a lock in a shared database, so that one instance asks the CA and the others wait for its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from ocspproxy.core.ocsp import CertKey

__all__ = ["Job", "Lease", "LocalLease", "Source", "SourceError"]


@dataclass(frozen=True, slots=True)
class Job:
    """Everything needed to fetch one key, resolved from the inventory when it is due."""

    issuer_cert: x509.Certificate
    name_hash: bytes  # the issuer name hash of the key's CertID
    url: str  # the CA responder, from the certificate or the configuration, never from a request
    configured: bool = True  # a certificate of the configuration (not only asked for by a client)


class SourceError(Exception):
    """No usable answer from the source; str() says why in a few words (the CA, or the way to it)."""


class Source(Protocol):
    """Where an answer for a key comes from.

    ``fetch`` returns the bytes the source gave, untouched and unchecked: the caller validates them
    before anything else sees them. It raises ``SourceError`` (and nothing else) when it has no
    answer: a timeout, a refused connection, an HTTP error, a body too large. It never chooses
    where to connect from anything but the Job.
    """

    async def fetch(self, key: CertKey, job: Job) -> bytes: ...


class Lease(Protocol):
    """Who may fetch a key now.

    ``acquire`` returns True when this process may fetch the key, for at most ``ttl`` seconds (after
    which another holder may take it, so a holder that dies does not stop refreshes); False when
    someone else holds it. ``release`` gives it back early; only the holder's release counts. Neither
    raises: a lease that cannot be checked (its database is down) is granted, since asking the CA
    twice is better than not at all.
    """

    async def acquire(self, key: CertKey, ttl: float) -> bool: ...

    async def release(self, key: CertKey) -> None: ...


class LocalLease:
    """One process: always granted (single-flight per key is the refresher's own)."""

    async def acquire(self, key: CertKey, ttl: float) -> bool:
        return True

    async def release(self, key: CertKey) -> None:
        return None
