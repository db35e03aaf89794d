"""Messages between the main process and its worker processes, over one SOCK_SEQPACKET socket pair.

Main -> worker: the issuers it may answer for (``I``), signature-checked staples to serve (``S``),
staples dropped (``D``). Worker -> main: a connection it does not answer itself (``H``: the client
socket travels as SCM_RIGHTS with the first part of what the client sent; ``C``: the rest, if any);
its request counters (``T``: the whole tally since it started, so a lost message loses nothing).

Records are JSON: a worker holds only what the main process validated, so nothing here is parsed as
OCSP or trusted beyond that. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterable, Iterator
from datetime import datetime

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.serve.hits import IssuerRow
from ocspproxy.serve.tally import LATENCY_BUCKETS, TallySnapshot

__all__ = [
    "CHUNK",
    "decode_drops",
    "decode_handoff",
    "decode_issuers",
    "decode_staples",
    "decode_tally",
    "encode_drops",
    "encode_handoff",
    "encode_issuers",
    "encode_staples",
    "encode_tally",
]

# Largest message either side sends: well below the socket buffer, so one send never blocks half-way.
CHUNK = 48 * 1024
_HANDOFF = struct.Struct(">I")  # total bytes the client sent before the hand-over


def _key(key: CertKey) -> list[str]:
    return [key.alg, key.issuer_key_hash.hex(), f"{key.serial:x}"]


def _unkey(row: list[str]) -> CertKey:
    return CertKey(alg=row[0], issuer_key_hash=bytes.fromhex(row[1]), serial=int(row[2], 16))


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _untime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _batches(kind: bytes, rows: Iterable[object]) -> Iterator[bytes]:
    """Messages of at most about CHUNK bytes, each a JSON array of rows."""
    batch: list[str] = []
    size = 0
    for row in rows:
        text = json.dumps(row, separators=(",", ":"))
        if batch and size + len(text) > CHUNK:
            yield kind + ("[" + ",".join(batch) + "]").encode()
            batch, size = [], 0
        batch.append(text)
        size += len(text) + 1
    if batch:
        yield kind + ("[" + ",".join(batch) + "]").encode()


def encode_issuers(rows: Iterable[IssuerRow]) -> bytes:
    """One message: the whole table (it replaces the worker's)."""
    data = [[r.alg, r.key_hash.hex(), r.name_hash.hex(), r.name] for r in rows]
    return b"I" + json.dumps(data, separators=(",", ":")).encode()


def decode_issuers(body: bytes) -> list[IssuerRow]:
    return [
        IssuerRow(alg=a, key_hash=bytes.fromhex(k), name_hash=bytes.fromhex(n), name=name)
        for a, k, n, name in json.loads(body)
    ]


def encode_staples(staples: Iterable[Staple]) -> Iterator[bytes]:
    rows = (
        [
            *_key(s.key),
            str(s.status),
            _time(s.this_update),
            _time(s.next_update),
            _time(s.produced_at),
            _time(s.revocation_time),
            base64.b64encode(s.der).decode(),
        ]
        for s in staples
    )
    return _batches(b"S", rows)


def decode_staples(body: bytes) -> list[Staple]:
    out = []
    for alg, key_hash, serial, status, this, nxt, produced, revoked, der in json.loads(body):
        out.append(
            Staple(
                key=_unkey([alg, key_hash, serial]),
                der=base64.b64decode(der),
                status=CertStatus(status),
                this_update=datetime.fromisoformat(this),
                next_update=datetime.fromisoformat(nxt),
                produced_at=datetime.fromisoformat(produced),
                revocation_time=_untime(revoked),
            )
        )
    return out


def encode_drops(keys: Iterable[CertKey]) -> Iterator[bytes]:
    return _batches(b"D", (_key(k) for k in keys))


def decode_drops(body: bytes) -> list[CertKey]:
    return [_unkey(row) for row in json.loads(body)]


def encode_handoff(buffer: bytes) -> list[bytes]:
    """The first message (sent with the socket) and the continuations, in order."""
    first = b"H" + _HANDOFF.pack(len(buffer)) + buffer[:CHUNK]
    rest = [b"C" + buffer[i : i + CHUNK] for i in range(CHUNK, len(buffer), CHUNK)]
    return [first, *rest]


def decode_handoff(body: bytes) -> tuple[int, bytes]:
    """(total bytes to expect, the first part) from an ``H`` message's body."""
    if len(body) < _HANDOFF.size:
        raise ValueError("hand-over message too short")
    (total,) = _HANDOFF.unpack_from(body)
    return total, body[_HANDOFF.size :]


def encode_tally(tally: TallySnapshot) -> bytes:
    data = [tally.answers, tally.buckets, tally.seconds, tally.refused]
    return b"T" + json.dumps(data, separators=(",", ":")).encode()


def decode_tally(body: bytes) -> TallySnapshot:
    """A worker's tally; what does not fit the shape is refused (ValueError)."""
    try:
        answers, buckets, seconds, refused = json.loads(body)
        snapshot = TallySnapshot(
            answers={str(k): int(v) for k, v in answers.items()},
            buckets={str(k): [int(c) for c in v] for k, v in buckets.items()},
            seconds={str(k): float(v) for k, v in seconds.items()},
            refused=int(refused),
        )
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable tally: {exc}") from exc
    if any(len(counts) != len(LATENCY_BUCKETS) + 1 for counts in snapshot.buckets.values()):
        raise ValueError("unreadable tally: wrong number of buckets")
    return snapshot
