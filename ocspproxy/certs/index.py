"""The certificate index: what each certificate file said when it was last parsed, by path and stamp.

At start-up and on reload, a certificate file whose stamp (size, mtime, inode, ctime) still matches
its entry is only ``stat``-ed: its serial, its issuer's key hash, its AIA OCSP URL and its subject come
from here. Issuers never do: the issuer an entry names must already be known from a parsed file (see
``build_inventory``), else the file is parsed as if there were no entry.

The serial and URL taken from here are only as trusted as the private state directory (0700, the
service user) holding this file: whoever can write there can also replace the staples. The checksum
catches torn or damaged files, not forgers. A missing, damaged or other-version index costs only
speed: every file is parsed.

Format: one header line ``ocspproxy-certindex <version> <sha256 of the body, hex>``, then a JSON
object: ``issuers``, a list of ``[SHA-1 key hash, SHA-1 name hash]`` in hex, and ``files``, a list of
``[path, size, mtime_ns, ino, ctime_ns, serial, issuer (position in issuers), url, subject]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ocspproxy.store.atomic import Stamp, read_state_file, write_atomically
from ocspproxy.store.directory import INDEX_NAME
from ocspproxy.store.sealed import seal, unseal

__all__ = ["CertIndex", "LeafFacts", "read_index", "write_index"]

log = structlog.get_logger("ocspproxy")

_MAGIC = b"ocspproxy-certindex"
VERSION = 1


@dataclass(frozen=True, slots=True)
class LeafFacts:
    """What a build needs from a certificate file once its issuer is known."""

    serial: int
    issuer_key_hash: bytes  # SHA-1 key hash of the issuer proven by its signature when parsed
    issuer_name_hash: bytes  # SHA-1 hash of that issuer's name
    url: str | None  # the certificate's own AIA OCSP URL
    subject: str


class BadIndex(ValueError):
    """Not a usable index (damaged, truncated, another version): every file is parsed."""


class CertIndex:
    """The entries read at the start of a build, and those the build used or added (the next index).

    Entries read are kept as decoded JSON rows and checked when looked up: a build looks each up once.
    """

    def __init__(
        self, issuers: list[tuple[bytes, bytes]] | None = None, rows: dict[str, list[Any]] | None = None
    ) -> None:
        self._issuers = issuers or []
        self._old = rows or {}
        self._new: dict[str, tuple[Stamp, LeafFacts]] = {}
        self._reused = 0  # entries put back as they were read
        self._hit: tuple[str, Stamp, LeafFacts] | None = None  # the last entry get() found

    def __len__(self) -> int:
        return len(self._old)

    def get(self, path: str, stamp: Stamp) -> LeafFacts | None:
        row = self._old.get(path)
        if row is None or row[1:5] != list(stamp):
            return None
        _, _, _, _, _, serial, issuer, url, subject = row
        if not (
            type(serial) is int
            and type(issuer) is int
            and 0 <= issuer < len(self._issuers)
            and (url is None or type(url) is str)
            and type(subject) is str
        ):
            return None
        key_hash, name_hash = self._issuers[issuer]
        facts = LeafFacts(serial, key_hash, name_hash, url, subject)
        self._hit = (path, stamp, facts)
        return facts

    def issuers(self) -> list[tuple[bytes, bytes]]:
        """(issuer key hash, issuer name hash) of every issuer the entries read name."""
        return list(self._issuers)

    def issuer_paths(self) -> Iterator[tuple[tuple[bytes, bytes], str]]:
        """(issuer key hash, issuer name hash) and path of each entry read, in the index's order."""
        issuers = self._issuers
        for path, row in self._old.items():
            issuer = row[6]
            if type(issuer) is int and 0 <= issuer < len(issuers):
                yield issuers[issuer], path

    def put(self, path: str, stamp: Stamp, facts: LeafFacts) -> None:
        """Keep an entry for the next index (what a build found, parsed or from get())."""
        if path not in self._new and self._hit == (path, stamp, facts):
            self._reused += 1
        self._new[path] = (stamp, facts)

    @property
    def changed(self) -> bool:
        return self._reused != len(self._new) or len(self._new) != len(self._old)

    def encode(self) -> bytes:
        issuers: dict[tuple[bytes, bytes], int] = {}
        rows = []
        for path, (stamp, f) in self._new.items():
            issuer = issuers.setdefault((f.issuer_key_hash, f.issuer_name_hash), len(issuers))
            rows.append([path, *stamp, f.serial, issuer, f.url, f.subject])
        table = [[k.hex(), n.hex()] for k, n in issuers]
        body = json.dumps({"issuers": table, "files": rows}, separators=(",", ":")).encode()
        return seal(_MAGIC, VERSION, body)

    @classmethod
    def decode(cls, data: bytes) -> CertIndex:
        """Raises ValueError when data is not a usable index."""
        start = unseal(data, _MAGIC, VERSION, BadIndex, "certificate index")
        try:
            content = json.loads(data[start:])
            issuers = [(bytes.fromhex(k), bytes.fromhex(n)) for k, n in content["issuers"]]
            rows = {row[0]: row for row in content["files"] if type(row) is list and len(row) == 9}
        except (TypeError, ValueError, KeyError, IndexError) as exc:  # json's errors are ValueErrors
            raise BadIndex(f"bad content: {exc}") from exc
        return cls(issuers, rows)


def read_index(state_dir: Path) -> CertIndex:
    """The index kept in state_dir; an empty one when there is none or it is unusable. Never raises."""
    path = state_dir / INDEX_NAME
    try:
        data = read_state_file(path)
        return CertIndex() if data is None else CertIndex.decode(data)
    except (OSError, ValueError) as exc:
        log.warning(
            "certificate index unusable; parsing every certificate file", path=str(path), error=str(exc)
        )
        return CertIndex()


def write_index(state_dir: Path, index: CertIndex) -> None:
    """Replace the index in state_dir atomically when the build changed it. Never raises."""
    if not index.changed:
        return
    try:
        write_atomically(state_dir, INDEX_NAME, index.encode())
    except OSError as exc:
        log.warning(
            "cannot write the certificate index",
            path=str(state_dir / INDEX_NAME),
            error=exc.strerror or str(exc),
        )
