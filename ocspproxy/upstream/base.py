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
from ocspproxy.core.staple import Staple

__all__ = ["FETCH", "Job", "Lease", "LocalLease", "Source", "SourceError", "SourceHeld", "Turn"]


@dataclass(frozen=True, slots=True)
class Job:
    """Everything needed to fetch one key, resolved from the inventory when it is due."""

    issuer_cert: x509.Certificate
    name_hash: bytes  # the issuer name hash of the key's CertID
    url: str  # the CA responder, from the certificate or the configuration, never from a request
    configured: bool = True  # a certificate of the configuration (not only asked for by a client)


class SourceError(Exception):
    """No usable answer from the source; str() says why in a few words (the CA, or the way to it)."""


class SourceHeld(SourceError):
    """The source was not asked: its upstream keeps failing, and is given a pause
    (``upstream/breaker.py``). Logged once when the pause begins, not per fetch. ``where`` names
    the upstream; ``wait``: seconds until the pause ends (when its next fetch may be tried)."""

    def __init__(self, message: str, *, where: str, wait: float) -> None:
        super().__init__(message)
        self.where = where
        self.wait = wait


class Source(Protocol):
    """Where an answer for a key comes from.

    ``fetch`` returns the bytes the source gave, untouched and unchecked: the caller validates them
    before anything else sees them. It raises ``SourceError`` (and nothing else) when it has no
    answer: a timeout, a refused connection, an HTTP error, a body too large. It never chooses
    where to connect from anything but the Job.
    """

    async def fetch(self, key: CertKey, job: Job) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Turn:
    """What ``Lease.acquire`` says to do about a key now.

    - ``fetch``: ask the CA (this process holds the lease, or no lease could be checked);
    - ``answer``: another instance asked the CA a moment ago; these are the bytes it stored
      (unchecked: they go through the door like a CA's answer);
    - ``wait``: another instance is asking the CA now; look again after at most this many seconds.
    """

    fetch: bool = False
    answer: bytes | None = None
    wait: float = 0.0


FETCH = Turn(fetch=True)


class Lease(Protocol):
    """Who asks the CA about a key now, so that a fleet asks once.

    ``acquire`` returns a ``Turn``; with ``fetch`` this process may ask for at most ``ttl`` seconds
    (after which another may take the lease, so a holder that dies does not stop refreshes).
    ``release`` follows every turn that was not a wait: it gives the lease back (only the holder's
    release counts) and says which staple this process holds for the key after the CA's answer or
    the answer the lease gave (None when there was no usable one): the others take it instead of
    asking again while it is fresh, and a lease that gave an answer learns whether it was any good.
    Neither raises: a lease that cannot be checked (its database is down, full, read-only) is
    granted, since asking the CA twice is better than not at all.
    """

    async def acquire(self, key: CertKey, ttl: float) -> Turn: ...

    async def release(self, key: CertKey, answered: Staple | None) -> None: ...


class LocalLease:
    """One process: always its turn (single-flight per key is the refresher's own)."""

    async def acquire(self, key: CertKey, ttl: float) -> Turn:
        return FETCH

    async def release(self, key: CertKey, answered: Staple | None) -> None:
        return None
