"""The inventory in force, for everyone who asks about certificates and issuers: the door (whose
issuer checks an answer), the scheduler (what to fetch and where), the responder and the hit table
(whose requests to answer). A reload replaces the inventory whole; nobody calls back up to ask."""

from __future__ import annotations

from ocspproxy.certs.inventory import Inventory, Issuer
from ocspproxy.core.ocsp import CertId, CertKey
from ocspproxy.upstream.base import Job

__all__ = ["Catalog"]


class Catalog:
    def __init__(self, inventory: Inventory | None = None) -> None:
        self.inventory = inventory or Inventory()

    def replace(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def issuer_for(self, cert_id: CertId) -> Issuer | None:
        """The issuer a request names (key hash and name hash both match), or None."""
        return self.inventory.issuer_for(cert_id)

    def issuer_for_key(self, key: CertKey) -> Issuer | None:
        return self.inventory.issuer_for_key(key)

    def issuer_name(self, alg: str, key_hash: bytes, name_hash: bytes) -> str | None:
        """For the hit table: the issuer's name when both hashes name a known issuer."""
        issuer = self.inventory.issuers.get((alg, key_hash))
        if issuer is None or issuer.name_hashes[alg] != name_hash:
            return None
        return issuer.name

    def configured(self, key: CertKey) -> bool:
        """A certificate of the configuration (not one a client merely asked about)."""
        return key in self.inventory.targets

    def upstream_for(self, key: CertKey, issuer: Issuer) -> str | None:
        return self.inventory.upstream_for(key, issuer)

    def job_for(self, key: CertKey) -> Job | None:
        """What fetching key takes, or None when its issuer or its CA's URL is not known (any more)."""
        issuer = self.inventory.issuer_for_key(key)
        if issuer is None:
            return None
        url = self.inventory.upstream_for(key, issuer)
        if url is None:
            return None
        return Job(
            issuer_cert=issuer.cert,
            name_hash=issuer.name_hashes[key.alg],
            url=url,
            configured=key in self.inventory.targets,
        )

    def stapled(self) -> list[CertKey]:
        """The configured certificates that have a CA to ask."""
        return [key for key, target in self.inventory.targets.items() if target.url is not None]
