"""Running a fuzz target: under atheris (libFuzzer) when it is installed, or over a corpus plus random
inputs without it (``python -m fuzz.fuzz_request --no-atheris``), so the targets also run where atheris
does not install.

Also the mutations the hypothesis properties and the atheris-less runs apply to valid inputs.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import random
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fuzz import der
from fuzz.oracle import CORPUS_DIR, STATS

__all__ = ["MUTATIONS", "Reader", "atheris_available", "main", "mutate", "run_without_atheris", "seeds"]

Target = Callable[[bytes], None]

MUTATIONS = (
    "flip",  # flip one bit
    "replace",  # replace one byte
    "insert",  # insert one byte
    "delete",  # delete 1..8 bytes
    "truncate",  # keep a prefix
    "splice",  # a prefix of this, then a suffix of another input
    "length",  # add a small delta to a DER element's (last) length octet
    "tag",  # change a DER element's tag
    "first-content",  # change the first content octet of a DER element (unused bits, status, version)
    "huge-length",  # give a DER element a four-octet length
)


def mutate(data: bytes, op: str, pos: int, value: int, other: bytes = b"") -> bytes:
    """Apply one mutation; ``pos`` and ``value`` are taken modulo whatever range they index."""
    buf = bytearray(data)
    n = len(buf)
    if op in ("length", "tag", "first-content", "huge-length"):
        nodes = list(der.walk(data))
        if not nodes:
            op = "replace"
        else:
            node = nodes[pos % len(nodes)]
            if op == "length":
                at = node.body - 1  # the last length octet, short or long form
                buf[at] = (buf[at] + (value % 17) - 8) & 0xFF
            elif op == "tag":
                buf[node.start] = value & 0xFF
            elif op == "first-content":
                if node.body < node.end:
                    buf[node.body] = value & 0xFF
            else:
                length = (value & 0xFFFFFFFF) | 0x01000000
                buf[node.start + 1 : node.body] = b"\x84" + length.to_bytes(4, "big")
            return bytes(buf)
    if n == 0:
        return bytes([value & 0xFF]) if op == "insert" else b""
    i = pos % n
    if op == "flip":
        buf[i] ^= 1 << (value % 8)
    elif op == "replace":
        buf[i] = value & 0xFF
    elif op == "insert":
        buf.insert(pos % (n + 1), value & 0xFF)
    elif op == "delete":
        del buf[i : i + 1 + value % 8]
    elif op == "truncate":
        del buf[i:]
    elif op == "splice":
        return bytes(buf[:i]) + (other[value % len(other) :] if other else b"")
    return bytes(buf)


class Reader:
    """Turns fuzz input into choices (like atheris.FuzzedDataProvider, but available without it);
    an exhausted input reads as zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bytes(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk.ljust(n, b"\x00")

    def int(self, n_bytes: int) -> int:
        return int.from_bytes(self.bytes(n_bytes), "big")

    def bool(self) -> bool:
        return bool(self.int(1) & 1)

    def choice(self, options: Sequence[str]) -> str:
        return options[self.int(1) % len(options)]


def seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS_DIR / target).iterdir()) if p.is_file()]


def random_inputs(corpus: Sequence[bytes], count: int, rng: random.Random) -> Iterator[bytes]:
    """Random bytes, and corpus entries with one to three random mutations."""
    for i in range(count):
        if i % 4 == 0 or not corpus:
            yield rng.randbytes(rng.randrange(0, 600))
            continue
        data = rng.choice(corpus)
        for _ in range(rng.randrange(1, 4)):
            data = mutate(
                data,
                rng.choice(MUTATIONS),
                rng.randrange(1 << 16),
                rng.randrange(1 << 32),
                rng.choice(corpus),
            )
        yield data


def run_without_atheris(target: Target, name: str, count: int, seed: int = 0) -> int:
    """Run target over fuzz/corpus/<name> and ``count`` random inputs; return how many inputs ran."""
    corpus = seeds(name)
    ran = 0
    for data in [*corpus, *random_inputs(corpus, count, random.Random(seed))]:
        target(data)
        ran += 1
    return ran


def atheris_available() -> bool:
    try:
        importlib.import_module("atheris")
    except ImportError:
        return False
    return True


def _with_stats(target: Target, path: str | None) -> Target:
    """Write STATS as JSON to ``path`` at most every half second (libFuzzer exits without running
    Python's exit handlers, so a final write cannot be relied on)."""
    if not path:
        return target
    last = 0.0

    def wrapped(data: bytes) -> None:
        nonlocal last
        STATS["inputs"] += 1
        target(data)
        now = time.monotonic()
        if now - last > 0.5:
            last = now
            Path(path).write_text(json.dumps(dict(STATS), sort_keys=True))

    return wrapped


# Coverage feedback comes from these modules' Python code (cryptography's parsers are native code).
# atheris.instrument_all() would take ~20 s to instrument everything loaded; this takes well under one.
INSTRUMENTED = ("ocspproxy.", "fuzz.", "urllib.parse.", "base64.")


def _instrument(atheris: Any) -> None:
    funcs = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, types.FunctionType)
        and isinstance(getattr(obj, "__module__", None), str)
        and (obj.__module__ + ".").startswith(INSTRUMENTED)
        and obj.__module__ != __name__
    ]
    for func in funcs:
        atheris.instrument_func(func)
    print(f"INFO: instrumented {len(funcs)} functions of {', '.join(INSTRUMENTED)}", file=sys.stderr)


def main(target: Target, name: str, argv: list[str] | None = None) -> None:
    """Fuzz ``target`` with atheris (libFuzzer flags and corpus directories in argv), or, with
    ``--no-atheris [COUNT]`` or when atheris is missing, run it over its seeds plus COUNT random inputs."""
    args = list(sys.argv if argv is None else argv)
    stats_path = os.environ.get("FUZZ_STATS")
    if "--no-atheris" in args or not atheris_available():
        rest = args[args.index("--no-atheris") + 1 :] if "--no-atheris" in args else []
        count = int(rest[0]) if rest and rest[0].isdigit() else 10_000
        if not atheris_available():
            print(f"{name}: atheris is not installed; running without it", file=sys.stderr)
        ran = run_without_atheris(_with_stats(target, None), name, count)
        STATS["inputs"] += ran
        print(f"{name}: {ran} inputs, stats {json.dumps(dict(STATS), sort_keys=True)}", file=sys.stderr)
        if stats_path:
            Path(stats_path).write_text(json.dumps(dict(STATS), sort_keys=True))
        return
    atheris = importlib.import_module("atheris")
    _instrument(atheris)
    atheris.Setup(args, _with_stats(target, stats_path))
    atheris.Fuzz()
