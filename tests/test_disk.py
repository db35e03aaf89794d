"""The state directory misbehaving: full, read-only, too open, not a directory, odd entries.

ocspproxy keeps serving from memory whatever the disk does, says so once per change of state, writes
again when the disk recovers, and never leaves a half-written file where a staple was. Read-only and
full file systems are real tmpfs mounts when this process may mount (root); otherwise (and always, as
a second variant) a store that fails on demand is injected into the running daemon.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocspproxy.cache.door import Ingested, Result
from ocspproxy.core.ocsp import CertKey
from ocspproxy.store import FileStore, StoreError
from ocspproxy.store.files import MAX_FILE_BYTES
from ocspproxy.upstream.base import Job
from tests.conftest import Proxy, eventually
from tests.diskfaults import FlakyStore, fill, remount, require_mount, tmpfs
from tests.pki import Leaf, TestCA, any_staple
from tests.required import unavailable
from tests.upstream import FakeUpstream, Reply

ROOT = Path(__file__).resolve().parent.parent
KEY = CertKey(alg="sha1", issuer_key_hash=bytes(range(20)), serial=0xABC)
FAILING = "store failing; serving from memory"
RECOVERED = "store recovered"


def log_events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def count(events: list[dict[str, Any]], name: str) -> int:
    return sum(1 for e in events if e["event"] == name)


def temporary_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".tmp-")]


def newer_each_time(ca: TestCA, upstream: FakeUpstream) -> None:
    """Every answer is a fresh, valid response one second newer than the last (so each one is stored)."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ticks = itertools.count(1)
    upstream.behaviour = lambda serial: Reply(
        ca.respond(
            serial, this_update=start + dt.timedelta(seconds=next(ticks)), validity=dt.timedelta(hours=1)
        )
    )


async def refresh(proxy: Proxy, ca: TestCA, upstream: FakeUpstream, leaf: Leaf) -> Ingested:
    assert proxy.app is not None
    cid = ca.cert_id(leaf.serial)
    job = Job(issuer_cert=ca.cert, name_hash=cid.issuer_name_hash, url=upstream.url)
    return await proxy.app.refresher.refresh(cid.key, job)


def loaded(store: FileStore) -> bytes | None:
    found = store.load(KEY)
    return None if found is None else found.der


def entries(store: FileStore, on_error: Callable[[str, Exception], None]) -> dict[CertKey, bytes]:
    return {s.key: s.der for s in store.load_all(on_error)}


def stored(state: Path, ca: TestCA, leaf: Leaf) -> bool:
    return (state / f"{ca.cert_id(leaf.serial).key}.der").exists()


def on_disk(state: Path, ca: TestCA, leaf: Leaf) -> bytes:
    return (state / f"{ca.cert_id(leaf.serial).key}.der").read_bytes()


# --- disk full and read-only, while serving --------------------------------------------------------


@contextlib.contextmanager
def state_directory(how: str, kind: str, tmp_path: Path) -> Iterator[Path]:
    if how == "inject":
        yield tmp_path / "state"
        return
    require_mount()
    # 16k is four pages: two staples, and a filler takes the rest when the test fills it.
    with tmpfs(tmp_path / "mnt", size="16k" if kind == "full" else "64k") as mnt:
        yield mnt / "state"


@pytest.mark.parametrize("how", ["mount", "inject"])
@pytest.mark.parametrize("kind", ["read-only", "full"])
async def test_failing_state_directory_serves_from_memory_logs_once_and_recovers(
    kind: str,
    how: str,
    ca: TestCA,
    upstream: FakeUpstream,
    make_proxy: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    newer_each_time(ca, upstream)
    a, b = ca.leaf("a"), ca.leaf("b")
    with state_directory(how, kind, tmp_path) as state:
        proxy: Proxy = make_proxy(ca=ca, leaves=[a, b], state_dir=state)
        flaky = proxy.store = FlakyStore(FileStore(state))
        await proxy.start()
        assert proxy.app is not None
        cache, refresher = proxy.app.cache, proxy.app.refresher
        keys = [ca.cert_id(leaf.serial).key for leaf in (a, b)]
        # The start-up fetches are over (a refresh() now would join one of them, not fetch again).
        await eventually(lambda: all(cache.servable(k) and not refresher.fetching(k) for k in keys))
        assert all(stored(state, ca, leaf) for leaf in (a, b))
        before = {leaf.serial: on_disk(state, ca, leaf) for leaf in (a, b)}
        capsys.readouterr()

        filler: Path | None = None
        if how == "inject":
            flaky.failing = errno.EROFS if kind == "read-only" else errno.ENOSPC
        elif kind == "read-only":
            remount(state.parent, read_only=True)
        else:
            filler = fill(state.parent)

        served: dict[int, bytes] = {}
        for _ in range(5):
            for leaf in (a, b):
                outcome = await refresh(proxy, ca, upstream, leaf)
                assert outcome.result is Result.STORED and outcome.staple is not None
                answer = await proxy.post(ca.request(leaf.serial))
                assert answer.cert_status == "GOOD" and answer.body == outcome.staple.der, (
                    "served from memory"
                )
                served[leaf.serial] = answer.body
                assert on_disk(state, ca, leaf) == before[leaf.serial], "the good file is left as it was"
                assert temporary_files(state) == []
        events = log_events(capsys.readouterr().err)
        assert count(events, FAILING) == 1, "one line for the failing state, not one per write"
        assert count(events, RECOVERED) == 0
        failing = next(e for e in events if e["event"] == FAILING)
        assert ("Read-only" if kind == "read-only" else "No space") in failing["error"]
        if how == "inject":
            assert flaky.failures == 10

        if how == "inject":
            flaky.failing = None
        elif kind == "read-only":
            remount(state.parent, read_only=False)
        else:
            assert filler is not None
            filler.unlink()
        outcome = await refresh(proxy, ca, upstream, a)
        assert outcome.staple is not None
        assert on_disk(state, ca, a) == outcome.staple.der, "the next accepted staple is written"
        served[a.serial] = outcome.staple.der
        # b was accepted while the disk failed and not fetched since: written once the store recovered.
        await eventually(lambda: on_disk(state, ca, b) == served[b.serial])
        events = log_events(capsys.readouterr().err)
        assert count(events, RECOVERED) == 1 and count(events, FAILING) == 0
        assert temporary_files(state) == []

        upstream.behaviour = lambda serial: Reply(status=503)
        await proxy.restart()
        for leaf in (a, b):
            assert (await proxy.post(ca.request(leaf.serial))).body == served[leaf.serial]
        await proxy.stop()


@pytest.mark.parametrize("how", ["mount", "inject"])
def test_disk_full_mid_write_keeps_the_good_file_and_leaves_no_temporary_file(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.ExitStack() as stack:
        if how == "mount":
            require_mount()
            # Four pages: the good file takes one; the new one needs five and gets three (a short write).
            state = stack.enter_context(tmpfs(tmp_path / "mnt", size="16k")) / "state"
        else:
            state = tmp_path / "state"
            real_write = os.write
            calls = itertools.count()

            def short_then_enospc(fd: int, data: Any) -> int:
                if next(calls) == 0:
                    return real_write(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        store = FileStore(state)
        good = b"\x30\x82" + b"good" * 100
        store.save(any_staple(KEY, good))
        free = os.statvfs(state).f_bavail
        with monkeypatch.context() as patch:
            if how == "inject":
                patch.setattr(os, "write", short_then_enospc)
            with pytest.raises(StoreError) as failure:
                store.save(any_staple(KEY, b"\x30\x82" + b"x" * 20_000))
        assert failure.value.errno == errno.ENOSPC
        assert loaded(store) == good, "never replaced by a partial file"
        assert sorted(p.name for p in state.iterdir()) == [store.path_for(KEY).name]
        if how == "mount":  # a private file system: nobody else changes its free space
            assert os.statvfs(state).f_bavail == free, "the temporary file's space is given back"
        store.save(any_staple(KEY, good[::-1]))  # and the store works again once there is room
        assert loaded(store) == good[::-1]


# --- private permissions ---------------------------------------------------------------------------

_OPEN_WITH_UMASK_0 = """
import os, sys
from pathlib import Path
os.umask(0)
from ocspproxy.log import configure_logging
from ocspproxy.core.ocsp import CertKey
from ocspproxy.store import FileStore
configure_logging(level="debug", fmt="json")
from tests.pki import any_staple
key = CertKey(alg="sha1", issuer_key_hash=bytes(20), serial=1)
FileStore(Path(sys.argv[1])).save(any_staple(key, b"x"))
"""


def open_with_umask_0(state: Path) -> list[dict[str, Any]]:
    return log_events(run_snippet(_OPEN_WITH_UMASK_0, state).stderr)


def run_snippet(code: str, state: Path) -> subprocess.CompletedProcess[str]:
    """python -c code STATE in a child process, with this project importable; raises if it fails."""
    return subprocess.run(
        [sys.executable, "-c", code, str(state)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
        check=True,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_state_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b" / "state"
    assert open_with_umask_0(state) == []
    assert mode(state) == 0o700
    assert [mode(p) for p in state.iterdir()] == [0o600]
    for parent in (tmp_path / "a", tmp_path / "a" / "b"):
        assert mode(parent) & 0o022 == 0, "missing parents are not group- or world-writable"


def test_existing_open_state_directory_of_ours_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    FileStore(state).save(any_staple(KEY, b"x"))
    state.chmod(0o777)
    (state / ".tmp-leftover").write_bytes(b"partial")
    events = open_with_umask_0(state)
    assert mode(state) == 0o700
    assert [e["event"] for e in events] == ["state directory was not private; changed to 0700"]
    assert events[0]["mode"] == "0777"


def test_existing_open_state_directory_holding_other_files_is_left_with_a_warning(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "someone-elses-file").write_text("keep me")
    events = open_with_umask_0(state)
    assert mode(state) == 0o755, "a directory with other files in it is not ours to change"
    assert [e["level"] for e in events] == ["warning"] and "holds other files" in events[0]["event"]
    assert sorted(mode(p) for p in state.iterdir()) == [0o600, 0o644]  # the staple is private anyway


def test_existing_open_state_directory_of_another_user_is_left_with_a_warning(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("chown to another user needs root")
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    os.chown(state, 65534, 65534)
    events = open_with_umask_0(state)
    assert mode(state) == 0o777
    assert [e["event"] for e in events] == ["state directory is not private; not ours to change"]


# --- start-up robustness ---------------------------------------------------------------------------


async def test_state_dir_that_is_a_file_is_reported_served_from_memory_and_recovers(
    ca: TestCA,
    upstream: FakeUpstream,
    make_proxy: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    newer_each_time(ca, upstream)
    leaf = ca.leaf()
    state = tmp_path / "state"
    state.write_text("not a directory")
    proxy: Proxy = await make_proxy(ca=ca, leaves=[leaf], state_dir=state).start()  # not fatal
    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.cert_status == "GOOD"
    await refresh(proxy, ca, upstream, leaf)
    events = log_events(capsys.readouterr().err)
    unusable = [e for e in events if e["event"] == "state directory unusable; serving from memory"]
    assert len(unusable) == 1 and unusable[0]["level"] == "error"
    loaded = next(e for e in events if e["event"] == "store loaded")
    assert (loaded["loaded"], loaded["skipped"]) == (0, 0)  # the directory is no skipped staple
    assert count(events, FAILING) == 1

    state.unlink()  # the operator fixes it: the next write creates the directory
    outcome = await refresh(proxy, ca, upstream, leaf)
    assert outcome.staple is not None and on_disk(state, ca, leaf) == outcome.staple.der
    assert mode(state) == 0o700
    assert count(log_events(capsys.readouterr().err), RECOVERED) == 1


@pytest.mark.parametrize("where", ["state", "file/state"])
async def test_an_unusable_state_directory_is_one_line_at_start_up(
    where: str, ca: TestCA, make_proxy: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / where.split("/")[0]).write_text("a file where a directory should be")
    state = tmp_path / where
    await make_proxy(ca=ca, leaves=[ca.leaf()], state_dir=state).start()
    events = log_events(capsys.readouterr().err)
    start_up = events[: next(i for i, e in enumerate(events) if e["event"] == "store loaded") + 1]
    said = [(e["event"], e.get("state_dir")) for e in start_up if e["level"] in ("warning", "error")]
    assert said == [("state directory unusable; serving from memory", str(state))]
    assert (start_up[-1]["loaded"], start_up[-1]["skipped"]) == (0, 0)


async def test_odd_entries_are_reported_and_skipped_at_start_up(
    ca: TestCA,
    upstream: FakeUpstream,
    make_proxy: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = ca.leaf("a"), ca.leaf("b")
    proxy: Proxy = await make_proxy(ca=ca, leaves=[a, b]).start()
    state = tmp_path / "state"
    await eventually(lambda: all(stored(state, ca, leaf) for leaf in (a, b)))
    await proxy.stop()

    def entry(serial: int) -> Path:
        return state / f"{ca.cert_id(serial).key}.der"

    # b's valid staple now lives elsewhere, reached by a symbolic link: not followed, so not served.
    elsewhere = tmp_path / "elsewhere.der"
    entry(b.serial).rename(elsewhere)
    entry(b.serial).symlink_to(elsewhere)
    entry(0xE0).write_bytes(b"")  # zero-byte staple
    (state / "notes.txt").write_bytes(b"")  # empty file that is not a staple: ignored
    os.mkfifo(entry(0xE1))  # would block a plain open() for ever
    entry(0xE2).mkdir()
    entry(0xE3).symlink_to("/nonexistent/staple.der")  # dangling
    entry(0xE4).symlink_to(entry(a.serial).name)  # inside the directory: not followed either
    entry(0xE5).write_bytes(b"\x30" * (MAX_FILE_BYTES + 1))
    bad = {entry(s) for s in (b.serial, 0xE0, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5)}
    capsys.readouterr()

    upstream.behaviour = lambda serial: Reply(status=503)
    await proxy.start()
    events = log_events(capsys.readouterr().err)
    loaded = next(e for e in events if e["event"] == "store loaded")
    assert (loaded["loaded"], loaded["skipped"]) == (1, len(bad))
    reported = {e["path"]: e["error"] for e in events if e["event"] == "stored staple unreadable; skipped"}
    assert set(reported) == {str(p) for p in bad}
    assert reported[str(entry(b.serial))] == "a symbolic link; not followed"
    assert reported[str(entry(0xE0))] == "empty file"
    assert reported[str(entry(0xE1))] == "not a regular file"
    assert (await proxy.post(ca.request(a.serial))).cert_status == "GOOD"
    assert (await proxy.post(ca.request(b.serial))).status == "TRY_LATER", "nothing loaded through a link"
    assert elsewhere.exists() and entry(b.serial).is_symlink(), "other people's files are not touched"


_LOAD_AS_NOBODY = """
import json, os, sys
from pathlib import Path
from ocspproxy.store import FileStore
os.setgroups([]); os.setgid(65534); os.setuid(65534)
errors = []
store = FileStore(Path(sys.argv[1]))
entries = [s.key for s in store.load_all(lambda path, exc: errors.append([path, repr(exc)]))]
print(json.dumps({"entries": sorted(str(k) for k in entries), "errors": errors}))
"""


def test_unreadable_entry_is_reported_and_skipped(tmp_path: Path) -> None:
    other = CertKey(alg="sha1", issuer_key_hash=bytes(range(20)), serial=0xDEF)
    if os.geteuid() != 0:
        state = tmp_path / "state"
        store = FileStore(state)
        store.save(any_staple(KEY, b"good"))
        store.save(any_staple(other, b"secret"))
        store.path_for(other).chmod(0)
        errors: list[tuple[str, Exception]] = []
        assert entries(store, lambda path, exc: errors.append((path, exc))) == {KEY: b"good"}
        assert [(p, type(e)) for p, e in errors] == [(str(store.path_for(other)), PermissionError)]
        return
    # Root reads everything: load as nobody from a directory nobody owns, holding a root-only file.
    base = Path(tempfile.mkdtemp(prefix="ocspproxy-test-", dir="/tmp"))
    try:
        base.chmod(0o755)
        state = base / "state"
        store = FileStore(state)
        store.save(any_staple(KEY, b"good"))
        store.save(any_staple(other, b"secret"))  # stays root's, mode 0600
        for path in (state, store.path_for(KEY)):
            os.chown(path, 65534, 65534)
        done = run_snippet(_LOAD_AS_NOBODY, state)
        result = json.loads(done.stdout)
        assert result["entries"] == [str(KEY)]
        assert len(result["errors"]) == 1
        path, error = result["errors"][0]
        assert path == str(store.path_for(other)) and error.startswith("PermissionError")
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_read_only_state_directory_at_start_up_is_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_mount()
    with tmpfs(tmp_path / "mnt") as mnt:
        state = mnt / "state"
        FileStore(state).save(any_staple(KEY, b"good"))
        (state / ".tmp-left-by-a-crash").write_bytes(b"part")
        state.chmod(0o750)
        remount(mnt, read_only=True)
        capsys.readouterr()
        store = FileStore(state)  # cannot remove the leftover, cannot tighten: warns, carries on
        events = log_events(capsys.readouterr().err)
        assert sorted(e["event"] for e in events) == [
            "cannot remove leftover temporary file",
            "state directory is not private; cannot change it",
        ]
        errors: list[str] = []
        assert entries(store, lambda path, exc: errors.append(path)) == {KEY: b"good"}
        assert errors == [], "a leftover temporary file is never taken for a staple"
        with pytest.raises(StoreError) as failure:
            store.save(any_staple(KEY, b"newer"))
        assert failure.value.errno == errno.EROFS
        assert loaded(store) == b"good"
