"""What a request is answered with, and its one log line (the same fields on every path)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ocspproxy.core.ocsp import CertId
from ocspproxy.core.staple import Staple

__all__ = ["Answer", "Outcome", "request_fields"]


class Outcome(StrEnum):
    HIT = "hit"  # servable staple in memory
    MISS = "miss"  # fetched, validated and stored while the client waited
    EXPIRED = "expired"  # the stored staple passed nextUpdate and no new one could be had
    FAILING = "failing"  # upstream failed moments ago; not asked again yet
    FAILED = "failed"  # upstream failed or answered something invalid just now
    SLOW = "slow"  # upstream did not answer within the budget; the fetch goes on
    LIMITED = "limited"  # too many on-demand fetches for this issuer's unconfigured certificates
    STARTING = "starting"  # still loading certificates and stored staples past the budget
    UNAUTHORIZED = "unauthorized"  # issuer not known to us
    NO_UPSTREAM = "no_upstream"  # issuer known, but no OCSP URL for it
    MALFORMED = "malformed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    staple: Staple | None = None
    issuer: str | None = None
    detail: str | None = None


def request_fields(
    *, method: str, answer: Answer, latency_ms: float, peer: str | None, cert_id: CertId | None
) -> dict[str, object]:
    """The fields of the one line logged per request (event "request"), whichever path answered."""
    fields: dict[str, object] = {
        "method": method,
        "outcome": str(answer.outcome),
        "latency_ms": round(latency_ms, 2),
        "peer": peer,
    }
    if cert_id is not None:
        fields["serial"] = f"{cert_id.key.serial:x}"
        fields["issuer"] = answer.issuer or cert_id.key.issuer_key_hash.hex()
    if answer.staple is not None:
        fields["cert_status"] = str(answer.staple.status)
        fields["next_update"] = answer.staple.next_update.isoformat()
    if answer.detail:
        fields["detail"] = answer.detail
    return fields
