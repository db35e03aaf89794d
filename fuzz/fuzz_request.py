"""Fuzz target: ``ocspproxy.core.ocsp.parse_request`` on arbitrary bytes (a POST body).

Invariant (``fuzz.oracle.check_request``): only ``MalformedRequest`` is raised, and a CertID that comes
back agrees with cryptography's reading of the same bytes and survives ``build_request``.

    .venv/bin/python -m fuzz.fuzz_request [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

from fuzz import harness, oracle

NAME = "fuzz_request"


def one_input(data: bytes) -> None:
    oracle.check_request(data)


def main() -> None:
    harness.main(one_input, NAME)


if __name__ == "__main__":
    main()
