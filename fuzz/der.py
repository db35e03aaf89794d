"""A small strict DER reader and writer, independent of ``cryptography`` and of ocspproxy.

Used to build odd inputs (deep nesting, bad lengths, re-wrapped structures) and by the oracle that
re-checks accepted OCSP responses on its own. Only low tag numbers and definite, minimal lengths of at
most four octets are accepted: anything else raises ``DerError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "DerError",
    "Tlv",
    "children",
    "decode_int",
    "decode_oid",
    "encode",
    "header",
    "parse",
    "read",
    "walk",
]

SEQUENCE = 0x30
OCTET_STRING = 0x04
BIT_STRING = 0x03


class DerError(ValueError):
    """Not strict DER."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One element: ``buf[start:end]`` is its encoding, ``buf[body:end]`` its content."""

    buf: bytes
    tag: int
    start: int
    body: int
    end: int

    @property
    def content(self) -> bytes:
        return self.buf[self.body : self.end]

    @property
    def raw(self) -> bytes:
        return self.buf[self.start : self.end]

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def read(buf: bytes, pos: int = 0, limit: int | None = None) -> Tlv:
    """The element at ``pos``, which must end at or before ``limit`` (default: the end of ``buf``)."""
    limit = len(buf) if limit is None else limit
    if pos + 2 > limit:
        raise DerError("truncated header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used here")
    first = buf[pos + 1]
    if first < 0x80:
        length, body = first, pos + 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise DerError("indefinite or oversized length")
        if pos + 2 + count > limit:
            raise DerError("truncated length")
        octets = buf[pos + 2 : pos + 2 + count]
        length, body = int.from_bytes(octets, "big"), pos + 2 + count
        if octets[0] == 0 or length < 0x80:
            raise DerError("length not minimally encoded")
    if body + length > limit:
        raise DerError("content runs past its container")
    return Tlv(buf, tag, pos, body, body + length)


def parse(buf: bytes) -> Tlv:
    """Exactly one element spanning all of ``buf``."""
    tlv = read(buf)
    if tlv.end != len(buf):
        raise DerError("trailing data")
    return tlv


def children(tlv: Tlv) -> list[Tlv]:
    """The elements inside a constructed element, which must fill it exactly."""
    if not tlv.constructed:
        raise DerError(f"tag {tlv.tag:#x} is primitive")
    out: list[Tlv] = []
    pos = tlv.body
    while pos < tlv.end:
        child = read(tlv.buf, pos, tlv.end)
        out.append(child)
        pos = child.end
    return out


def walk(buf: bytes, *, max_depth: int = 64) -> Iterator[Tlv]:
    """Every element of ``buf`` (best effort), descending into constructed elements and into OCTET and
    BIT STRINGs that hold DER; offsets are relative to ``buf``."""

    def inner(pos: int, end: int, depth: int) -> Iterator[Tlv]:
        while pos < end and depth < max_depth:
            try:
                tlv = read(buf, pos, end)
            except DerError:
                return
            yield tlv
            if tlv.constructed or tlv.tag == OCTET_STRING:
                yield from inner(tlv.body, tlv.end, depth + 1)
            elif tlv.tag == BIT_STRING and tlv.end > tlv.body + 1 and buf[tlv.body] == 0:
                yield from inner(tlv.body + 1, tlv.end, depth + 1)
            pos = tlv.end

    yield from inner(0, len(buf), 0)


def header(tag: int, length: int) -> bytes:
    """The DER tag and length octets of an element with ``length`` octets of content."""
    if length < 0x80:
        return bytes([tag, length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets


def encode(tag: int, content: bytes) -> bytes:
    return header(tag, len(content)) + content


def decode_int(tlv: Tlv) -> int:
    data = tlv.content
    if tlv.tag != 0x02 or not data:
        raise DerError("not an INTEGER")
    if len(data) > 1 and ((data[0] == 0 and data[1] < 0x80) or (data[0] == 0xFF and data[1] >= 0x80)):
        raise DerError("INTEGER not minimally encoded")
    return int.from_bytes(data, "big", signed=True)


def decode_oid(tlv: Tlv) -> str:
    data = tlv.content
    if tlv.tag != 0x06 or not data or data[-1] & 0x80:
        raise DerError("not an OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for i, octet in enumerate(data):
        if value == 0 and octet == 0x80 and (i == 0 or not data[i - 1] & 0x80):
            raise DerError("OID arc not minimally encoded")
        value = value << 7 | octet & 0x7F
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])
