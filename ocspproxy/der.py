"""Just enough DER walking for what cryptography does not check or expose (pure)."""

from __future__ import annotations

__all__ = ["DERError", "children", "header", "signature_bits_are_whole"]


class DERError(ValueError):
    pass


def header(data: bytes, pos: int, end: int | None = None) -> tuple[int, int, int]:
    """(tag, content start, content length) of the element at pos; checks it fits before end."""
    end = len(data) if end is None else end
    if pos + 2 > end:
        raise DERError("truncated header")
    tag, first = data[pos], data[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + 2 + count > end:
            raise DERError("bad length")
        start, length = pos + 2 + count, int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
    if start + length > end:
        raise DERError("element overruns its parent")
    return tag, start, length


def children(data: bytes, start: int, length: int) -> list[tuple[int, int, int]]:
    """The elements inside a constructed element's content."""
    out = []
    pos, end = start, start + length
    while pos < end:
        tag, cstart, clen = header(data, pos, end)
        out.append((tag, cstart, clen))
        pos = cstart + clen
    return out


def _signature_bits_whole(data: bytes, start: int, length: int) -> bool:
    """For SEQUENCE { toBeSigned, algorithm, signature BIT STRING, ... }: no unused bits."""
    parts = children(data, start, length)
    if len(parts) < 3 or parts[2][0] != 0x03 or parts[2][2] < 1:
        raise DERError("no signature BIT STRING")
    return data[parts[2][1]] == 0


def signature_bits_are_whole(der: bytes, *, ocsp_response: bool) -> bool:
    """Whether the signature BIT STRING of a certificate or of an OCSPResponse's BasicOCSPResponse
    has no unused bits. cryptography hands the bytes over without saying; OpenSSL rejects them."""
    _, start, length = header(der, 0)
    if not ocsp_response:
        return _signature_bits_whole(der, start, length)
    # OCSPResponse ::= SEQUENCE { status ENUMERATED, [0] EXPLICIT ResponseBytes }
    parts = children(der, start, length)
    if len(parts) < 2 or parts[1][0] != 0xA0:
        raise DERError("no responseBytes")
    (_, rb_start, rb_len), *_ = children(der, parts[1][1], parts[1][2])
    # ResponseBytes ::= SEQUENCE { responseType OID, response OCTET STRING }
    rb = children(der, rb_start, rb_len)
    if len(rb) < 2 or rb[1][0] != 0x04:
        raise DERError("no response OCTET STRING")
    _, basic_start, basic_len = header(der, rb[1][1], rb[1][1] + rb[1][2])
    return _signature_bits_whole(der, basic_start, basic_len)
