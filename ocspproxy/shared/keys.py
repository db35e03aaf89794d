"""What the fleet keeps in Redis, and under which names (``{prefix}`` lets several fleets share one):

- ``{prefix}:s:{<key>}`` — a hash: ``der`` (the response's bytes as the CA sent them) and the fields
  the write script needs to keep the accept policy (``tu`` thisUpdate, ``pa`` producedAt, ``nu``
  nextUpdate, in milliseconds since the epoch; ``st`` good/revoked/unknown). It expires at its
  nextUpdate. Nothing read here is trusted: the bytes go through the door.
- ``{prefix}:l:{<key>}`` — the fetch lease: a token, with the lease's lifetime.
- ``{prefix}:d:{<key>}`` — "the CA was just asked": set by the lease holder on release, for as long as
  the answer needs no refresh, so the others take the stored answer instead of asking again.
- ``{prefix}:fleet`` — present while the store holds the fleet's staples; missing after a FLUSHALL or a
  failover to an empty replica, which makes every instance write what it holds again.
- channel ``{prefix}:staples`` — ``<instance> <key>`` for each staple written.

``<key>`` is ``str(CertKey)``: the braces make a key's three names one Redis Cluster hash slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ocspproxy.core.ocsp import CertKey, parse_key
from ocspproxy.core.staple import Staple

__all__ = ["Names", "entry_fields", "millis"]


def millis(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def entry_fields(staple: Staple) -> tuple[int, int, str, int]:
    """(tu, pa, st, nu) as the write script compares them."""
    return (
        millis(staple.this_update),
        millis(staple.produced_at),
        str(staple.status),
        millis(staple.next_update),
    )


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    def entry(self, key: CertKey) -> str:
        return f"{self.prefix}:s:{{{key}}}"

    def lease(self, key: CertKey) -> str:
        return f"{self.prefix}:l:{{{key}}}"

    def done(self, key: CertKey) -> str:
        return f"{self.prefix}:d:{{{key}}}"

    @property
    def marker(self) -> str:
        return f"{self.prefix}:fleet"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:staples"

    @property
    def entries(self) -> str:
        """The SCAN pattern of every entry."""
        return f"{self.prefix}:s:*"

    def key_of(self, name: bytes | str) -> CertKey:
        """The key an entry's name spells; ValueError for anything else."""
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        head = f"{self.prefix}:s:{{"
        if not text.startswith(head) or not text.endswith("}"):
            raise ValueError(f"not an entry name: {text[:120]!r}")
        return parse_key(text[len(head) : -1])
