"""The frame of the state directory's own files (the certificate index, the staples snapshot): one
header line ``<magic> <version> <sha256 of the body, hex>``, then the body. The checksum catches torn
or damaged files, not forgers (see each file's module)."""

from __future__ import annotations

import hashlib

__all__ = ["seal", "unseal"]


def seal(magic: bytes, version: int, body: bytes) -> bytes:
    return b"%s %d %s\n" % (magic, version, hashlib.sha256(body).hexdigest().encode()) + body


def unseal(data: bytes, magic: bytes, version: int, error: type[ValueError], what: str) -> int:
    """Where the body starts, once the header and the checksum are checked. Raises error: not
    ``what`` at all, another version, or a checksum mismatch."""
    end = data.find(b"\n", 0, 200)
    fields = data[:end].split(b" ") if end > 0 else []
    if len(fields) != 3 or fields[0] != magic:
        raise error(f"not a {what}")
    if fields[1] != b"%d" % version:
        raise error(f"version {fields[1].decode(errors='replace')}, not {version}")
    start = end + 1
    if hashlib.sha256(memoryview(data)[start:]).hexdigest().encode() != fields[2]:
        raise error("checksum mismatch: damaged or truncated")
    return start
