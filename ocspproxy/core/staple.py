"""The Staple value: a validated OCSP response's bytes with the fields policy needs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ocspproxy.core.ocsp import CertKey

__all__ = ["CertStatus", "Staple"]


class CertStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Staple:
    """A validated response. ``der`` is exactly what the CA sent; it is never re-encoded.

    ``next_update`` is the effective end of validity: the response's nextUpdate, capped at a delegated
    responder certificate's notAfter.
    """

    key: CertKey
    der: bytes
    status: CertStatus
    this_update: datetime
    next_update: datetime
    produced_at: datetime
    revocation_time: datetime | None = None
    verified: bool = True  # False: loaded from the store, signature not yet checked; never served so

    @property
    def etag(self) -> str:
        # Computed when a response is rendered (the fast path keeps it a second), not for each of
        # the 100,000 staples loaded at start-up.
        return '"' + hashlib.sha256(self.der).hexdigest()[:32] + '"'

    def servable(self, now: datetime) -> bool:
        """Serve only strictly before nextUpdate, with no skew allowance."""
        return now < self.next_update

    @property
    def validity_seconds(self) -> float:
        return (self.next_update - self.this_update).total_seconds()

    def newer_than(self, other: Staple) -> bool:
        return (self.this_update, self.produced_at) > (other.this_update, other.produced_at)
