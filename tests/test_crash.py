"""kill -9 during a refresh storm, again and again: the state directory survives every crash.

The real daemon runs as a subprocess (``python -m ocspproxy serve``, umask 0) against this test's
in-process CA responder, which hands out responses valid for a few seconds, so dozens of certificates
are refreshed and written every second. Each cycle starts the daemon, polls it for every certificate
while the storm runs, and kills it with SIGKILL at a random moment, or as soon as a temporary file
shows up in the state directory (a kill in the middle of a write). After each kill, and again after
each restart, it checks that:

- the state directory loads: ``store loaded`` skips nothing except expired staples;
- nothing partial is ever on disk or served: every ``*.der`` parses and validates (signature, CertID),
  every answer served does too, and temporary files left by a kill are gone once the daemon is up;
- no good staple is lost: the newest staple served before a kill that is still within its nextUpdate
  is on disk after the kill and served after the restart, byte for byte or a newer one.

The one-line summary it prints is what the reliability report quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.x509 import ocsp

from ocspproxy.certs.index import CertIndex
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import ExpiredResponse, InvalidResponse, validate_response
from ocspproxy.store import snapshot
from ocspproxy.store.directory import INDEX_NAME, SNAPSHOT_NAME
from tests.pki import Leaf, TestCA
from tests.upstream import FakeUpstream, Reply

ROOT = Path(__file__).resolve().parent.parent
CERTIFICATES = 60
VALIDITY = dt.timedelta(seconds=4)  # refreshed after 2-2.4 s: about 25 writes a second for 60 certs
CYCLES = 30
SKEW = dt.timedelta(seconds=300)
SKIPPED_FOR_EXPIRY = "stored staple expired; removed"
# The state directory's other files, with what must read them whole.
STATE_FILES = {INDEX_NAME: CertIndex.decode, SNAPSHOT_NAME: snapshot.decode}

CONFIG = """
log_format = "json"
log_level = "info"
[server]
answer_budget = 1.0
watch_interval = 3600.0
[cache]
negative_ttl = 0.0
[refresh]
retry_initial = 0.1
retry_max = 1.0
[upstream]
connect_timeout = 1.0
total_timeout = 2.0
"""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def order(staple: Staple) -> tuple[dt.datetime, dt.datetime]:
    return staple.this_update, staple.produced_at


@dataclass
class Tally:
    cycles: int = 0
    kills: int = 0
    kills_during_write: int = 0  # a temporary file was left: the kill landed between create and rename
    targeted_kills: int = 0
    writes: int = 0  # staples the daemons logged as stored
    answers_checked: int = 0
    disk_checks: int = 0  # a staple served before a kill, still valid, looked for on disk after it
    restart_checks: int = 0  # ... and asked for after the restart
    staples_lost: int = 0
    invalid_files: int = 0
    invalid_answers: int = 0
    leftovers_removed: int = 0
    skipped_not_expired: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"crash test: cycles={self.cycles} kills={self.kills} "
            f"kills_during_write={self.kills_during_write} (targeted {self.targeted_kills}) "
            f"writes={self.writes} answers_checked={self.answers_checked} "
            f"disk_checks={self.disk_checks} restart_checks={self.restart_checks} "
            f"staples_lost={self.staples_lost} invalid_files={self.invalid_files} "
            f"invalid_answers={self.invalid_answers} leftovers_removed={self.leftovers_removed} "
            f"skipped_not_expired={self.skipped_not_expired}"
        )


class DaemonProcess:
    """``python -m ocspproxy serve`` with umask 0; its JSON log lines are collected as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[int] | None = None

    async def start(self) -> int:
        """Start it; returns the port once it listens and has loaded its store."""
        self.events = []
        self._listening = asyncio.get_running_loop().create_future()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            umask=0,
        )
        self._reader = asyncio.create_task(self._read(self.proc, self._listening))
        return await asyncio.wait_for(asyncio.shield(self._listening), 20)

    async def _read(self, proc: asyncio.subprocess.Process, listening: asyncio.Future[int]) -> None:
        assert proc.stderr is not None
        port = 0
        while line := await proc.stderr.readline():
            if not line.startswith(b"{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # cut short by the kill
            self.events.append(event)
            if event.get("event") == "listening":
                port = int(str(event["address"]).rsplit(":", 1)[1])
            if event.get("event") == "store loaded" and not listening.done():
                listening.set_result(port)
        if not listening.done():
            listening.set_exception(AssertionError(f"daemon exited: {self.events[-3:]}"))

    async def wait(self) -> int:
        assert self.proc is not None and self._reader is not None
        code = await asyncio.wait_for(self.proc.wait(), 20)
        await asyncio.wait_for(self._reader, 20)
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.wait()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


class Storm:
    """Runs and kills daemons; checks the state directory and the answers around each kill."""

    def __init__(self, ca: TestCA, leaves: list[Leaf], state: Path, daemon: DaemonProcess) -> None:
        self.ca = ca
        self.leaves = leaves
        self.state = state
        self.daemon = daemon
        self.keys = {leaf.serial: ca.cert_id(leaf.serial) for leaf in leaves}
        self.files = {f"{cid.key}.der": cid.key for cid in self.keys.values()}
        self.tally = Tally()
        self.served: dict[int, Staple] = {}  # newest staple served per serial since the last restart
        self.leftovers: set[str] = set()

    def check(self, der: bytes, key: CertKey, now: dt.datetime) -> Staple | None:
        """The staple, None when whole but expired; raises InvalidResponse for anything else."""
        try:
            return validate_response(der, key=key, issuer=self.ca.cert, now=now, skew=SKEW)
        except ExpiredResponse:
            return None

    async def ask(self, session: aiohttp.ClientSession, port: int, serial: int) -> Staple | None:
        """What the daemon serves for serial, validated as of the moment the request was sent."""
        sent = utcnow()
        async with session.post(
            f"http://127.0.0.1:{port}/",
            data=self.ca.request(serial),
            headers={"Content-Type": "application/ocsp-request"},
        ) as resp:
            body = await resp.read()
        self.tally.answers_checked += 1
        try:
            if ocsp.load_der_ocsp_response(body).response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                return None  # tryLater while nothing is servable: an answer, not a staple
            return validate_response(
                body, key=self.keys[serial].key, issuer=self.ca.cert, now=sent, skew=SKEW
            )
        except (ValueError, InvalidResponse) as exc:
            self.tally.invalid_answers += 1
            self.tally.errors.append(f"served an invalid staple for {serial:x}: {exc}")
            return None

    async def poll(self, session: aiohttp.ClientSession, port: int) -> None:
        """Ask for every certificate, over and over; remember the newest staple served for each."""
        while True:
            results = await asyncio.gather(
                *(self.ask(session, port, leaf.serial) for leaf in self.leaves), return_exceptions=True
            )
            for leaf, result in zip(self.leaves, results, strict=True):
                if isinstance(result, Staple):
                    known = self.served.get(leaf.serial)
                    if known is None or order(result) >= order(known):
                        self.served[leaf.serial] = result
            await asyncio.sleep(0.01)

    def after_kill(self) -> None:
        """The state directory as the kill left it: whole files only, holding every staple served."""
        now = utcnow()
        names = os.listdir(self.state)
        leftovers = {n for n in names if n.startswith(".tmp-")}
        if leftovers:
            self.tally.kills_during_write += 1
        self.leftovers = leftovers
        on_disk: dict[CertKey, Staple | None] = {}
        for name in names:
            if name.startswith(".tmp-"):
                continue
            key = self.files.get(name)
            path = self.state / name
            if name in STATE_FILES and stat.S_IMODE(path.stat().st_mode) == 0o600:
                try:  # written atomically too: a kill never leaves one torn
                    STATE_FILES[name](path.read_bytes())
                except ValueError as exc:
                    self.tally.errors.append(f"damaged {name}: {exc}")
                continue
            if key is None or stat.S_IMODE(path.stat().st_mode) != 0o600:
                self.tally.invalid_files += 1
                self.tally.errors.append(f"unexpected file {name} (mode {path.stat().st_mode:o})")
                continue
            try:
                on_disk[key] = self.check(path.read_bytes(), key, now)
            except InvalidResponse as exc:
                self.tally.invalid_files += 1
                self.tally.errors.append(f"invalid file {name}: {exc}")
        for serial, served in self.served.items():
            if not served.servable(now):
                continue
            self.tally.disk_checks += 1
            stored = on_disk.get(self.keys[serial].key)
            if stored is None or not (stored.der == served.der or order(stored) > order(served)):
                self.tally.staples_lost += 1
                self.tally.errors.append(f"lost on disk: {serial:x} served {served.this_update}")

    async def after_restart(self, session: aiohttp.ClientSession, port: int) -> None:
        """The restarted daemon loaded everything, removed the leftovers, serves every staple kept."""
        loaded = self.daemon.named("store loaded")
        assert len(loaded) == 1, self.daemon.events[:10]
        skipped = loaded[0]["skipped"] - len(self.daemon.named(SKIPPED_FOR_EXPIRY))
        if skipped:
            self.tally.skipped_not_expired += skipped
            self.tally.errors.append(
                f"skipped at load: {[e for e in self.daemon.events if 'skipped' in e['event']]}"
            )
        self.tally.leftovers_removed += len(self.leftovers)
        still_there = self.leftovers & set(os.listdir(self.state))
        if still_there:
            self.tally.invalid_files += len(still_there)
            self.tally.errors.append(f"temporary files not removed at open: {still_there}")
        expected = {s: staple for s, staple in self.served.items() if staple.servable(utcnow())}
        answers = await asyncio.gather(*(self.ask(session, port, s) for s in expected))
        for (serial, before), after in zip(expected.items(), answers, strict=True):
            if not before.servable(utcnow()):
                continue  # expired while we asked: nothing to keep
            self.tally.restart_checks += 1
            if after is None or not (after.der == before.der or order(after) > order(before)):
                self.tally.staples_lost += 1
                self.tally.errors.append(f"lost after restart: {serial:x} served {before.this_update}")
        self.served = {}

    def count_run(self) -> None:
        self.tally.writes += sum(1 for e in self.daemon.named("upstream") if e.get("result") == "stored")
        for event in self.daemon.events:
            if event.get("level") in ("error", "critical"):
                self.tally.errors.append(f"daemon logged {event}")


def kill_on_first_write(pid: int, state: Path, deadline: float) -> bool:
    """Watch the state directory; SIGKILL the daemon the moment a temporary file appears (or at the
    deadline). Runs in a thread so the event loop (the CA, the poller) keeps going. True if targeted."""
    targeted = False
    while time.monotonic() < deadline:
        with os.scandir(state) as entries:
            if any(e.name.startswith(".tmp-") for e in entries):
                targeted = True
                break
    os.kill(pid, signal.SIGKILL)
    return targeted


async def test_kill_9_during_a_refresh_storm_loses_nothing(
    ca: TestCA, upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    upstream.behaviour = lambda serial: Reply(
        ca.respond(serial, this_update=utcnow().replace(microsecond=0), validity=VALIDITY)
    )
    certs = tmp_path / "certs"
    certs.mkdir()
    leaves = [ca.leaf(f"host{i}.example") for i in range(CERTIFICATES)]
    for leaf in leaves:
        _, issuer = ca.write(certs, leaf, with_chain=False)
    config = tmp_path / "ocspproxy.toml"
    config.write_text(CONFIG)
    state = tmp_path / "state"
    daemon = DaemonProcess(
        [
            sys.executable,
            "-m",
            "ocspproxy",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
            "--cert",
            str(certs / "leaf-*.pem"),
            "--issuers",
            str(issuer),
            "--config",
            str(config),
        ]
    )
    storm = Storm(ca, leaves, state, daemon)
    rng = random.Random()
    connector = aiohttp.TCPConnector(limit=16, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        try:
            for cycle in range(CYCLES + 1):
                port = await daemon.start()
                if cycle == 0:
                    assert stat.S_IMODE(state.stat().st_mode) == 0o700, "private even with umask 0"
                else:
                    await storm.after_restart(session, port)
                if cycle == CYCLES:
                    break
                poller = asyncio.create_task(storm.poll(session, port))
                await asyncio.sleep(rng.uniform(0.15, 0.6))
                if cycle % 2:
                    assert daemon.proc is not None
                    deadline = time.monotonic() + 0.6
                    targeted = await asyncio.to_thread(kill_on_first_write, daemon.proc.pid, state, deadline)
                    storm.tally.targeted_kills += targeted
                await daemon.kill()
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                storm.tally.kills += 1
                storm.tally.cycles += 1
                storm.count_run()
                storm.after_kill()
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            assert await daemon.wait() == 0
            storm.count_run()
        finally:
            if daemon.proc is not None and daemon.proc.returncode is None:
                await daemon.kill()

    tally = storm.tally
    with capsys.disabled():
        print(f"\n{tally.summary()} seconds={time.monotonic() - started:.1f}")
    assert tally.errors == []
    assert tally.cycles >= 30 and tally.kills == tally.cycles
    assert tally.staples_lost == 0 and tally.invalid_files == 0 and tally.invalid_answers == 0
    assert tally.skipped_not_expired == 0
    assert tally.disk_checks > 0 and tally.restart_checks > 0, "staples were at stake at the kills"
    assert tally.writes > 10 * tally.cycles, "a storm: many writes per cycle"
