"""Process management for the end-to-end tests: ManagedProcess, ``openssl ocsp``, ocspproxy."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, ClassVar

from cryptography.x509 import ocsp

from .clients import query_ocsp
from .pki import Pki
from .tools import REPO_ROOT, find_openssl, port_accepts, port_free, tail, utcnow

# --------------------------------------------------------------------------------------------------
# process management
# --------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test runner dies without running finalizers."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


class ManagedProcess:
    """A long-running child in its own session; output goes to ``log_path`` (appended across restarts)."""

    #: every wrapper that has not been cleaned up yet; conftest attaches their logs to failing tests
    ACTIVE: ClassVar[dict[int, ManagedProcess]] = {}

    name: str
    port: int
    log_path: Path
    stop_timeout: float = 10.0
    start_timeout: float = 20.0

    def __init__(self, name: str, port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0
        self.last_stop_needed_kill = False
        self.starts = 0
        ManagedProcess.ACTIVE[id(self)] = self

    # subclasses provide the command line
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LC_ALL"] = "C"
        return env

    def cwd(self) -> Path | None:
        return None

    def ports(self) -> list[int]:
        return [self.port]

    def ready(self) -> bool:
        return port_accepts(self.port)

    def log_since_start(self) -> str:
        """Output of the current (or last) run only."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        for port in self.ports():
            if not port_free(port):
                raise RuntimeError(f"{self.name}: port {port} is already in use by someone else")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self.starts += 1
        stamp = utcnow().isoformat(timespec="milliseconds")
        cmd = self.command()
        self._log_file.write(f"\n===== [e2e] start #{self.starts} at {stamp}: {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self._log_offset = self._log_file.tell()
        self.popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.cwd(),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout
        while not self.ready():
            rc = self.popen.poll()
            if rc is not None:
                self._close_log()
                raise RuntimeError(
                    f"{self.name} exited with status {rc} during start-up; log {self.log_path}:\n"
                    + tail(self.log_path, 60)
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not accept connections on port {self.port} within "
                    f"{self.start_timeout:.0f}s; log {self.log_path}:\n" + tail(self.log_path, 60)
                )
            time.sleep(0.05)

    def _terminate(self, popen: subprocess.Popen[bytes]) -> None:
        popen.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM, wait ``stop_timeout``, then SIGKILL the whole process group.  Returns the exit status."""
        popen, self.popen = self.popen, None
        if popen is None:
            return None
        self.last_stop_needed_kill = False
        crashed = popen.poll() is not None
        if not crashed:
            with contextlib.suppress(ProcessLookupError):
                self._terminate(popen)
            try:
                popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.last_stop_needed_kill = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)  # our own session: the child and its children
                popen.wait(timeout=10)
        if crashed:
            # whatever the dead leader left behind in its session (e.g. httpd workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
        self._close_log()
        with self.log_path.open("ab") as fh:
            note = " (needed SIGKILL)" if self.last_stop_needed_kill else ""
            fh.write(f"===== [e2e] stopped, exit status {popen.returncode}{note}\n".encode())
        return popen.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            ManagedProcess.ACTIVE.pop(id(self), None)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class OcspResponder(ManagedProcess):
    """``openssl ocsp`` acting as the CA's OCSP responder (signs with the CA key itself).

    ``nmin``/``ndays`` set nextUpdate = thisUpdate + N; OpenSSL's responder stamps thisUpdate = now.
    ``openssl ocsp -port`` (3.0) takes a port number only and listens on ``[::]:PORT``.
    """

    def __init__(
        self, pki: Pki, log_path: Path, *, nmin: int | None = None, ndays: int | None = None
    ) -> None:
        if (nmin is None) == (ndays is None):
            raise ValueError("give exactly one of nmin / ndays")
        super().__init__(f"openssl ocsp (CA responder :{pki.ca_port})", pki.ca_port, log_path)
        self.pki = pki
        self.nmin = nmin
        self.ndays = ndays

    @property
    def url(self) -> str:
        """Where it listens (the leaves' AIA URL may name it by a name only a proxy resolves)."""
        return f"http://127.0.0.1:{self.port}/"

    def ready(self) -> bool:
        # Never probe with a bare TCP connect: openssl ocsp 3.0 spins at 100% CPU forever (and answers
        # nobody again) once a client closes a connection without sending a request.
        return "waiting for OCSP client connections" in self.log_since_start()

    def start(self) -> None:
        super().start()
        # prove it answers (and with the expected validity) before handing it to a test
        answer = query_ocsp(self.url, self.pki.good, self.pki.ca_cert)
        resp = answer.parsed()
        if answer.http_status != 200 or resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise RuntimeError(f"{self.name} answered {answer.http_status}/{resp.response_status}")
        window = (
            dt.timedelta(minutes=self.nmin) if self.nmin is not None else dt.timedelta(days=self.ndays or 0)
        )
        if resp.next_update_utc is None or resp.next_update_utc - resp.this_update_utc != window:
            raise RuntimeError(
                f"{self.name}: thisUpdate {resp.this_update_utc}, nextUpdate {resp.next_update_utc}"
            )

    def command(self) -> list[str]:
        openssl = find_openssl() or "openssl"
        validity = ["-nmin", str(self.nmin)] if self.nmin is not None else ["-ndays", str(self.ndays)]
        return [
            openssl,
            "ocsp",
            "-index",
            str(self.pki.index_txt),
            "-port",
            str(self.port),
            "-rsigner",
            str(self.pki.ca_pem),
            "-rkey",
            str(self.pki.ca_key_pem),
            "-CA",
            str(self.pki.ca_pem),
            *validity,
            "-ignore_err",
        ]


class OcspProxy(ManagedProcess):
    """The service under test: ``python -m ocspproxy serve ...`` (stderr = JSON log lines → log file)."""

    def __init__(
        self,
        port: int,
        state_dir: Path,
        certs: Sequence[Path],
        issuers: Path,
        log_path: Path,
        *,
        config: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(f"ocspproxy (:{port})", port, log_path)
        self.state_dir = state_dir
        self.certs = list(certs)
        self.issuers = issuers
        self.config = config
        self.extra_args = list(extra_args)
        state_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ocspproxy", "serve", "--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--state-dir", str(self.state_dir)]
        for cert in self.certs:
            cmd += ["--cert", str(cert)]
        cmd += ["--issuers", str(self.issuers)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def cwd(self) -> Path:
        return REPO_ROOT

    def der_files(self) -> list[Path]:
        return sorted(self.state_dir.rglob("*.der"))


def run_ocspproxy(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``python -m ocspproxy ARGS`` from the repository, output captured as text."""
    env = {**os.environ, "LC_ALL": "C", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "ocspproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
