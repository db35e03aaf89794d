"""Fuzz target: ``ocspproxy.core.validate.validate_response`` on arbitrary bytes (an upstream answer).

The response is checked for the certificate of ``fuzz/ca/meta.json`` under the committed test PKI of
``fuzz/ca`` with the clock fixed at meta's ``now``, so the seeds in ``fuzz/corpus/fuzz_response`` stay
valid forever. Invariant (``fuzz.oracle.check_response``): only ``InvalidResponse`` is raised, and
anything accepted — for that certificate, for the serials next to it, or under another issuer —
verifies independently (signature by the issuer or its real delegated responder, CertID, times).

    .venv/bin/python -m fuzz.fuzz_response [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

from fuzz import harness, oracle

NAME = "fuzz_response"
CONTEXT = oracle.load_context()


def one_input(data: bytes) -> None:
    oracle.check_response(data, CONTEXT)


def main() -> None:
    harness.main(one_input, NAME)


if __name__ == "__main__":
    main()
