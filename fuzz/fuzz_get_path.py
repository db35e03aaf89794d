"""Fuzz target: ``ocspproxy.core.ocsp.decode_get_path`` (an RFC 6960 GET path from the client).

Each input is used twice:

* as a raw path: only ``MalformedRequest`` is raised, and whatever comes back is a request
  ``parse_request`` reads (``fuzz.oracle.check_get_path``);
* as choices (serial, hash, nonce, std/URL-safe base64, padding, which characters are percent-encoded,
  a path prefix of safe segments, a query) for a valid request, which must decode to exactly its DER
  (``fuzz.oracle.check_get_round_trip``).

    .venv/bin/python -m fuzz.fuzz_get_path [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

from fuzz import harness, oracle

NAME = "fuzz_get_path"
ISSUER = oracle.load_context().issuer
MAX_LENGTH = 16 * 1024  # the server's default max_request_bytes
ALGS = ("sha1", "sha256", "sha384", "sha512")


def encoding(reader: harness.Reader) -> oracle.GetEncoding:
    mode = reader.int(1) % 4
    percent: tuple[bool, ...] = ()
    if mode == 1:
        percent = (True,)
    elif mode >= 2:
        bits = reader.int(1 if mode == 2 else 8)
        percent = tuple(bool(bits >> i & 1) for i in range(8 if mode == 2 else 64))
    prefix: list[str] = []
    budget = oracle.MAX_PREFIX
    for _ in range(reader.int(1) % 5):
        size = min(reader.int(1) % 12, budget)
        segment = "".join(oracle.PREFIX_ALPHABET[b % len(oracle.PREFIX_ALPHABET)] for b in reader.bytes(size))
        budget -= size + 1
        if budget < 0:
            break
        prefix.append(segment)
    return oracle.GetEncoding(
        urlsafe=reader.bool(),
        padding=reader.bool(),
        percent=percent,
        lower_hex=reader.bool(),
        plus_as_space=reader.bool(),
        prefix=tuple(prefix),
        query="a=b&c" if reader.bool() else "",
    )


def one_input(data: bytes) -> None:
    oracle.check_get_path(data.decode("utf-8", "surrogateescape"), max_length=MAX_LENGTH)
    reader = harness.Reader(data)
    serial = reader.int(20) % (2**159 + 1)
    alg = reader.choice(ALGS)
    nonce = reader.bool()
    oracle.check_get_round_trip(oracle.make_request(ISSUER, serial, alg, nonce=nonce), encoding(reader))


def main() -> None:
    harness.main(one_input, NAME)


if __name__ == "__main__":
    main()
