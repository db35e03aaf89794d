"""The staples snapshot: each stored staple file's stamp with its DER and parsed fields, in one file.

At start-up a staple file whose stamp still matches its snapshot entry is only ``lstat``-ed: the
staple is built from the entry, unverified, and validated in full (signature, CertID, times) before it
is first served, like one read from its file. Each entry pairs a stamp with the staple whose bytes the
file had when that stamp was taken (see ``FileStore``); a file written since has another stamp, so it is
read. The snapshot is only as trusted as the private state directory (0700, the service user) that
holds the staple files themselves; its checksum catches torn or damaged files, not forgers.

Format: one header line ``ocspproxy-staples <version> <sha256 of the body, hex>``, then packed
records (``_RECORD`` followed by the issuer key hash, the serial and the DER). Never pickle.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from ocspproxy.core.ocsp import HASH_ALGORITHMS, CertKey
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.store.atomic import Stamp
from ocspproxy.store.sealed import seal, unseal

__all__ = ["Snapshot", "SnapshotError", "decode", "encode"]

_MAGIC = b"ocspproxy-staples"
VERSION = 1
# alg, status, key hash length, serial length, stamp (size, mtime_ns, ino, ctime_ns),
# thisUpdate, nextUpdate, producedAt, revocationTime (microseconds since the epoch), DER length
_RECORD = struct.Struct("<BBBBQqQqqqqqI")
_NO_TIME = -(1 << 63)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_ALGS = tuple(HASH_ALGORITHMS)
_STATUSES = tuple(CertStatus)


class SnapshotError(ValueError):
    """Not a usable snapshot (damaged, truncated, another version): start-up reads the files."""


def encode(entries: Iterable[tuple[Stamp, Staple]]) -> bytes:
    parts: list[bytes] = []
    for stamp, staple in entries:
        key = staple.key
        serial = key.serial.to_bytes(key.serial.bit_length() // 8 + 1, "big", signed=True)
        revoked = staple.revocation_time
        parts.append(
            _RECORD.pack(
                _ALGS.index(key.alg),
                _STATUSES.index(staple.status),
                len(key.issuer_key_hash),
                len(serial),
                *stamp,
                _us(staple.this_update),
                _us(staple.next_update),
                _us(staple.produced_at),
                _NO_TIME if revoked is None else _us(revoked),
                len(staple.der),
            )
        )
        parts += (key.issuer_key_hash, serial, staple.der)
    body = b"".join(parts)
    return seal(_MAGIC, VERSION, body)


class Snapshot:
    """A decoded snapshot's keys; each entry is built when asked for (``stamp``, ``staple``), so that start-up
    makes the long-lived staple objects only once the certificate pass has freed its own (made
    earlier, they leave tens of megabytes of holes behind that pass's garbage)."""

    def __init__(self, data: bytes | None = None) -> None:
        """Raises SnapshotError (None: an empty snapshot)."""
        self._data = data or b""
        self._at: dict[CertKey, int] = _records(data) if data is not None else {}

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def __iter__(self) -> Iterator[CertKey]:
        return iter(list(self._at))  # (entries may be discarded meanwhile)

    def stamp(self, key: CertKey) -> Stamp | None:
        at = self._at.get(key)
        return None if at is None else Stamp._make(_RECORD.unpack_from(self._data, at)[4:8])

    def staple(self, key: CertKey) -> Staple | None:
        """key's staple (unverified), or None when the snapshot has none (or no longer)."""
        at = self._at.get(key)
        if at is None:
            return None
        rec = _RECORD.unpack_from(self._data, at)
        status, hash_len, serial_len = rec[1:4]
        this, next_, produced, revoked, der_len = rec[8:]
        start = at + _RECORD.size + hash_len + serial_len
        return Staple(
            key=key,
            der=self._data[start : start + der_len],
            status=_STATUSES[status],
            this_update=_time(this),
            next_update=_time(next_),
            produced_at=_time(produced),
            revocation_time=None if revoked == _NO_TIME else _time(revoked),
            verified=False,
        )

    def discard(self, key: CertKey) -> None:
        """Forget key's entry (it failed its check): ``entry`` returns None for it from now on."""
        self._at.pop(key, None)

    def close(self) -> None:
        """Release the data: the start-up load is done with it."""
        self._data, self._at = b"", {}


def decode(data: bytes) -> dict[CertKey, tuple[Stamp, Staple]]:
    """Every entry, each staple unverified. Raises SnapshotError."""
    snapshot = Snapshot(data)
    out = {}
    for key in snapshot:
        stamp, staple = snapshot.stamp(key), snapshot.staple(key)
        assert stamp is not None and staple is not None
        out[key] = (stamp, staple)
    return out


def _records(data: bytes) -> dict[CertKey, int]:
    """Where each key's record starts, after the header and checksum are checked; the records are
    walked to the end, so a truncated one is found now. Raises SnapshotError."""
    start = unseal(data, _MAGIC, VERSION, SnapshotError, "staples snapshot")
    out: dict[CertKey, int] = {}
    key_hashes: dict[bytes, bytes] = {}  # one object per issuer, not one per staple
    pos, size, unpack, record = start, len(data), _RECORD.unpack_from, _RECORD.size
    try:
        while pos < size:
            at = pos
            rec = unpack(data, pos)
            alg, status, hash_len, serial_len = rec[:4]
            der_len = rec[12]
            if alg >= len(_ALGS) or status >= len(_STATUSES):
                raise SnapshotError("damaged record: unknown algorithm or status")
            pos += record
            key_hash = data[pos : pos + hash_len]
            key_hash = key_hashes.setdefault(key_hash, key_hash)
            pos += hash_len
            serial = int.from_bytes(data[pos : pos + serial_len], "big", signed=True)
            pos += serial_len + der_len
            if pos > size:
                raise SnapshotError("truncated record")
            out[CertKey(alg=_ALGS[alg], issuer_key_hash=key_hash, serial=serial)] = at
    except (struct.error, IndexError, OverflowError) as exc:
        raise SnapshotError(f"damaged record: {exc}") from exc
    return out


def _time(us: int) -> datetime:
    """Microseconds since the epoch as a UTC datetime, exactly: a float of seconds carries them
    to the microsecond up to 2^32 s (year 2106), and fromtimestamp rounds to the nearest."""
    if 0 <= us < _FAST_LIMIT:
        return _fromtimestamp(us / 1_000_000, UTC)
    return _EPOCH + us * _US  # out of that range: slower, still exact


_fromtimestamp = datetime.fromtimestamp
_FAST_LIMIT = (1 << 32) * 1_000_000


def _us(when: datetime) -> int:
    return (when - _EPOCH) // _US
