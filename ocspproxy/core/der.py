"""Just enough DER walking for what cryptography does not check or expose (pure)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DERError",
    "PssParams",
    "children",
    "decode_oid",
    "header",
    "pss_params",
    "signature_algorithm",
    "signature_bits_are_whole",
]


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
    _, start, length = _signed(der, ocsp_response=ocsp_response)
    return _signature_bits_whole(der, start, length)


def _signed(der: bytes, *, ocsp_response: bool) -> tuple[int, int, int]:
    """(tag, content start, length) of the signed SEQUENCE: a certificate, or the BasicOCSPResponse
    inside an OCSPResponse."""
    found = header(der, 0)
    if not ocsp_response:
        return found
    # OCSPResponse ::= SEQUENCE { status ENUMERATED, [0] EXPLICIT ResponseBytes }
    parts = children(der, found[1], found[2])
    if len(parts) < 2 or parts[1][0] != 0xA0:
        raise DERError("no responseBytes")
    (_, rb_start, rb_len), *_ = children(der, parts[1][1], parts[1][2])
    # ResponseBytes ::= SEQUENCE { responseType OID, response OCTET STRING }
    rb = children(der, rb_start, rb_len)
    if len(rb) < 2 or rb[1][0] != 0x04:
        raise DERError("no response OCTET STRING")
    return header(der, rb[1][1], rb[1][1] + rb[1][2])


def decode_oid(content: bytes) -> str:
    """Dotted text of an OBJECT IDENTIFIER's content octets. Raises DERError."""
    if not content or content[-1] & 0x80:
        raise DERError("bad OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in content:
        if value == 0 and byte == 0x80:
            raise DERError("OBJECT IDENTIFIER arc not minimally encoded")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def signature_algorithm(der: bytes, *, ocsp_response: bool) -> tuple[str, bytes | None]:
    """The outer signatureAlgorithm of a certificate or of an OCSPResponse's BasicOCSPResponse: its
    OID and the full encoding of its parameters (None when absent). cryptography gives the
    parameters of a certificate's signature, not of an OCSP response's (RSASSA-PSS needs them)."""
    _, start, length = _signed(der, ocsp_response=ocsp_response)
    parts = children(der, start, length)
    if len(parts) < 2 or parts[1][0] != 0x30:
        raise DERError("no signatureAlgorithm")
    oid, params = _algorithm_oid(der, parts[1][1], parts[1][2])
    if params is None:
        return oid, None
    _, pstart, plen = params
    return oid, _element(der, pstart, plen)


@dataclass(frozen=True, slots=True)
class PssParams:
    """RSASSA-PSS-params (RFC 4055), with the defaults for absent fields."""

    hash_oid: str = "1.3.14.3.2.26"  # SHA-1
    mgf_oid: str = "1.2.840.113549.1.1.8"  # MGF1
    mgf_hash_oid: str = "1.3.14.3.2.26"
    salt_length: int = 20
    trailer_field: int = 1


def _algorithm_oid(data: bytes, start: int, length: int) -> tuple[str, tuple[int, int, int] | None]:
    """An AlgorithmIdentifier's OID and its parameters element, if any."""
    parts = children(data, start, length)
    if not parts or parts[0][0] != 0x06 or len(parts) > 2:
        raise DERError("bad AlgorithmIdentifier")
    oid = decode_oid(data[parts[0][1] : parts[0][1] + parts[0][2]])
    return oid, parts[1] if len(parts) == 2 else None


def _element(data: bytes, content_start: int, length: int) -> bytes:
    """The whole encoding (header included) of the element whose content starts at content_start."""
    head = 2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8
    return data[content_start - head : content_start + length]


def _small_int(data: bytes, start: int, length: int) -> int:
    if not 1 <= length <= 4 or data[start] & 0x80:
        raise DERError("bad INTEGER")
    return int.from_bytes(data[start : start + length], "big")


def pss_params(params: bytes | None) -> PssParams:
    """Decode RSASSA-PSS-params. Raises DERError (absent parameters are an error: RFC 4055 wants
    them for a signature, and OpenSSL refuses a PSS signature without them)."""
    if params is None:
        raise DERError("RSASSA-PSS without parameters")
    tag, start, length = header(params, 0)
    if tag != 0x30 or start + length != len(params):
        raise DERError("RSASSA-PSS parameters are not a SEQUENCE")
    fields: dict[str, object] = {}
    last = -1
    for ftag, fstart, flen in children(params, start, length):
        number = ftag - 0xA0
        if not 0 <= number <= 3 or number <= last:
            raise DERError("unexpected field in RSASSA-PSS parameters")
        last = number
        (inner_tag, istart, ilen), *rest = children(params, fstart, flen)
        if rest:
            raise DERError("trailing data in RSASSA-PSS parameters")
        if number == 0:
            if inner_tag != 0x30:
                raise DERError("bad hashAlgorithm")
            fields["hash_oid"] = _algorithm_oid(params, istart, ilen)[0]
        elif number == 1:
            if inner_tag != 0x30:
                raise DERError("bad maskGenAlgorithm")
            mgf, inner = _algorithm_oid(params, istart, ilen)
            if inner is None or inner[0] != 0x30:
                raise DERError("maskGenAlgorithm without its hash")
            fields["mgf_oid"] = mgf
            fields["mgf_hash_oid"] = _algorithm_oid(params, inner[1], inner[2])[0]
        elif inner_tag != 0x02:
            raise DERError("bad INTEGER in RSASSA-PSS parameters")
        else:
            fields["salt_length" if number == 2 else "trailer_field"] = _small_int(params, istart, ilen)
    return PssParams(**fields)  # type: ignore[arg-type]
