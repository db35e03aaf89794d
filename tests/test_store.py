"""The file store: atomic writes, private files, and loading that survives bad files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ocspproxy.core.ocsp import CertKey
from ocspproxy.store import FileStore
from tests.pki import any_staple

KEY = CertKey(alg="sha1", issuer_key_hash=bytes(range(20)), serial=0xABC)


def load_all(store: FileStore) -> tuple[dict[CertKey, bytes], list[str]]:
    errors: list[str] = []
    entries = {s.key: s.der for s in store.load_all(lambda path, exc: errors.append(path))}
    return entries, errors


def test_save_load_delete(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state")
    store.save(any_staple(KEY, b"der-1"))
    store.save(any_staple(KEY, b"der-2"))
    found = store.load(KEY)
    assert found is not None and found.der == b"der-2"
    assert load_all(store) == ({KEY: b"der-2"}, [])
    store.delete(KEY)
    store.delete(KEY)  # missing is fine
    assert store.load(KEY) is None


def test_file_names_are_readable_and_private(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state")
    store.save(any_staple(KEY, b"x"))
    path = store.path_for(KEY)
    assert path.name == "sha1-000102030405060708090a0b0c0d0e0f10111213-abc.der"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_leftover_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    FileStore(state).save(any_staple(KEY, b"good"))
    (state / ".tmp-sha1-00-1.der.deadbeef").write_bytes(b"partial")
    store = FileStore(state)
    assert [p.name for p in state.iterdir()] == [store.path_for(KEY).name]


def test_bad_entries_are_reported_and_skipped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = FileStore(state)
    store.save(any_staple(KEY, b"good"))
    (state / "README").write_text("not ours")  # ignored: not a staple name
    (state / "sha1-0011-1.der").write_bytes(b"not a staple name: ignored")
    (state / f"sha256-{'ab' * 20}-2.der").write_bytes(b"a SHA-1 sized hash under sha256")
    (state / f"sha1-{'ab' * 20}-5.der").mkdir()  # unreadable as a file
    entries, errors = load_all(store)
    assert entries == {KEY: b"good"}
    assert len(errors) == 2


def test_save_syncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability that kill -9 cannot show (the page cache survives it; a power cut does not): the
    file's data reach the disk before it takes its name, and the name before save returns."""
    store = FileStore(tmp_path / "state")
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(("fsync", "directory" if os.path.isdir(target) else os.path.basename(target)))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("rename", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save(any_staple(KEY, b"der"))
    name = store.path_for(KEY).name
    (kind, first), rename, last = calls[0], calls[1], calls[-1]
    assert kind == "fsync" and first.startswith(".tmp-" + name), calls
    assert rename == ("rename", name), calls
    assert last == ("fsync", "directory"), calls
    assert len(calls) == 3, calls
