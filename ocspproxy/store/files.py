"""A directory of DER files, one per staple, readable with ``openssl ocsp -respin FILE -resp_text``."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from ocspproxy.ocsp import CertKey
from ocspproxy.store.base import StoreError

__all__ = ["FileStore"]

_NAME = re.compile(r"^(sha1|sha256|sha384|sha512)-([0-9a-f]{40,128})-([0-9a-f]{1,80})\.der$")
_TMP_PREFIX = ".tmp-"
# OCSP responses are small; anything bigger in the state directory is not ours.
MAX_FILE_BYTES = 1 << 20


class FileStore:
    """Files named ``<hash alg>-<issuer key hash>-<serial>.der`` in one private directory.

    Writes go to a temporary file in the same directory, are fsynced, renamed over the old file, and
    the directory is fsynced, so a crash at any moment leaves the old or the new file. Leftover
    temporary files are removed when the store opens.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state directory {directory}: {exc.strerror}") from exc
        for leftover in directory.glob(_TMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)

    def path_for(self, key: CertKey) -> Path:
        return self.directory / f"{key}.der"

    def save(self, key: CertKey, der: bytes) -> None:
        final = self.path_for(key)
        tmp = self.directory / f"{_TMP_PREFIX}{final.name}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, der)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            self._sync_directory()
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {final}: {exc.strerror or exc}") from exc

    def load(self, key: CertKey) -> bytes | None:
        try:
            return self._read(self.path_for(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path_for(key)}: {exc.strerror or exc}") from exc

    def delete(self, key: CertKey) -> None:
        try:
            self.path_for(key).unlink(missing_ok=True)
            self._sync_directory()
        except OSError as exc:
            raise StoreError(f"cannot delete {self.path_for(key)}: {exc.strerror or exc}") from exc

    def load_all(self, on_error: Callable[[str, Exception], None]) -> Iterator[tuple[CertKey, bytes]]:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            on_error(str(self.directory), exc)
            return
        for name in names:
            match = _NAME.match(name)
            if match is None:
                continue
            alg, key_hash, serial = match.groups()
            path = self.directory / name
            if len(key_hash) != 2 * hashlib.new(alg).digest_size:
                on_error(str(path), ValueError("file name does not match its hash algorithm"))
                continue
            key = CertKey(alg=alg, issuer_key_hash=bytes.fromhex(key_hash), serial=int(serial, 16))
            try:
                yield key, self._read(path)
            except (OSError, ValueError) as exc:
                on_error(str(path), exc)

    @staticmethod
    def _read(path: Path) -> bytes:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return data

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
