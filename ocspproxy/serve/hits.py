"""The hit table: the one piece of code that decides "answer this request from memory, now", in the
main process (over the catalog and the cache) and in every worker process (over its copy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ocspproxy.core.ocsp import CertId, CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.serve.answer import Answer, Outcome

__all__ = ["HitTable", "IssuerLookup", "IssuerRow", "StapleLookup"]


@dataclass(frozen=True, slots=True)
class IssuerRow:
    """An issuer requests may name: the CertID hashes of one algorithm, and its name for logs."""

    alg: str
    key_hash: bytes
    name_hash: bytes
    name: str


class IssuerLookup(Protocol):
    def issuer_name(self, alg: str, key_hash: bytes, name_hash: bytes) -> str | None:
        """The issuer's name when both hashes name a known issuer, else None."""
        ...


class StapleLookup(Protocol):
    def servable(self, key: CertKey) -> Staple | None:
        """The signature-checked staple to serve for key now, if any."""
        ...


class HitTable:
    """A known issuer (key hash and name hash both match) and a servable staple: a hit."""

    def __init__(self, issuers: IssuerLookup, staples: StapleLookup) -> None:
        self.issuers = issuers
        self.staples = staples

    def hit(self, cert_id: CertId) -> Answer | None:
        key = cert_id.key
        name = self.issuers.issuer_name(key.alg, key.issuer_key_hash, cert_id.issuer_name_hash)
        if name is None:
            return None
        staple = self.staples.servable(key)
        return None if staple is None else Answer(Outcome.HIT, staple, name)
