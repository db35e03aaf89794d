"""Real peers for the end-to-end tests: test PKI, ``openssl ocsp``, Apache httpd, ``s_client``, ocspproxy.

Everything here runs real processes on loopback ports inside a temporary directory.  Each process
wrapper has ``start()``, ``stop()``, ``restart()`` (same port, same files) and ``cleanup()`` (stop and
forget); fixtures in ``conftest.py`` call ``cleanup()`` in their finalizers.  Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
APACHE_MODULES_DIR = Path("/usr/lib/apache2/modules")
APACHE_REQUIRED_MODULES = ("mod_mpm_event.so", "mod_authz_core.so", "mod_socache_shmcb.so", "mod_ssl.so")

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# tools, ports, waiting
# --------------------------------------------------------------------------------------------------


def find_openssl() -> str | None:
    return shutil.which("openssl")


def find_apache() -> str | None:
    """The Apache httpd binary (Debian's ``apache2``); /usr/sbin is often not on a non-root PATH."""
    for name in ("apache2", "httpd"):
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
        if found:
            return found
    return None


def missing_tools() -> list[str]:
    """Human-readable list of what the e2e suite needs but cannot find (empty when all is there)."""
    missing: list[str] = []
    if find_openssl() is None:
        missing.append("openssl CLI")
    if find_apache() is None:
        missing.append("apache2 (Apache httpd 2.4) binary")
    for mod in APACHE_REQUIRED_MODULES:
        if not (APACHE_MODULES_DIR / mod).is_file():
            missing.append(f"{APACHE_MODULES_DIR / mod}")
    return missing


_HANDED_OUT_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on: bind port 0, read it, release it.

    Binds the IPv6 wildcard in dual-stack mode when possible because ``openssl ocsp -port N`` listens
    on ``[::]:N``, so the port must be free on every address.  Ports handed out before in this process
    are never handed out again (processes are restarted on "their" port).
    """
    for _ in range(50):
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            addr: tuple[str, int] = ("::", 0)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = ("127.0.0.1", 0)
        with sock:
            sock.bind(addr)
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT_PORTS:
            _HANDED_OUT_PORTS.add(port)
            return port
    raise RuntimeError("could not find a free TCP port")


def port_free(port: int) -> bool:
    """True when nobody listens on ``port`` (checked by binding, never by connecting: see OcspResponder)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        addr = ("127.0.0.1", port)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError:
            return False
    return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# test PKI
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """A server certificate with its files.  ``cert_pem`` holds the leaf only; ``chain_pem`` leaf + CA."""

    name: str
    cert: x509.Certificate
    cert_pem: Path
    chain_pem: Path
    key_pem: Path

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def serial_hex(self) -> str:
        """Serial as OpenSSL prints it (upper-case hex, even number of digits)."""
        return openssl_serial_hex(self.serial)


@dataclass(frozen=True)
class Pki:
    """CA + two leaves (``good`` and ``revoked``) whose AIA OCSP URL is ``http://127.0.0.1:<ca_port>/``."""

    directory: Path
    ca_port: int
    ca_cert: x509.Certificate
    ca_pem: Path  # the issuer file (--issuers, -CA, -CAfile)
    ca_key_pem: Path
    index_txt: Path
    good: Leaf
    revoked: Leaf
    revoked_at: dt.datetime

    @property
    def ocsp_url(self) -> str:
        return f"http://127.0.0.1:{self.ca_port}/"


def openssl_serial_hex(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _index_time(when: dt.datetime) -> str:
    return when.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


def index_line(leaf: Leaf, *, revoked_at: dt.datetime | None = None, reason: str = "keyCompromise") -> str:
    """One line of OpenSSL's CA database (index.txt): status, expiry, revocation, serial, file, DN."""
    short = {NameOID.ORGANIZATION_NAME: "O", NameOID.COMMON_NAME: "CN"}
    subject = "".join(
        f"/{short.get(attr.oid, attr.oid.dotted_string)}={attr.value!s}" for attr in leaf.cert.subject
    )
    status = "V" if revoked_at is None else "R"
    revocation = "" if revoked_at is None else f"{_index_time(revoked_at)},{reason}"
    expiry = _index_time(leaf.cert.not_valid_after_utc)
    return "\t".join([status, expiry, revocation, leaf.serial_hex, "unknown", subject]) + "\n"


def _write_pem(path: Path, *blobs: bytes, private: bool = False) -> Path:
    path.write_bytes(b"".join(blobs))
    path.chmod(0o600 if private else 0o644)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def build_pki(directory: Path, ca_port: int) -> Pki:
    """Create CA, a good leaf and a revoked leaf (both for localhost/127.0.0.1) and the index.txt."""
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = utcnow().replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocspproxy e2e"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ocspproxy e2e test CA {ca_port}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = _write_pem(directory / "ca.pem", _cert_pem(ca_cert))
    ca_key_pem = _write_pem(directory / "ca.key", _key_pem(ca_key), private=True)
    ocsp_url = f"http://127.0.0.1:{ca_port}/"

    def make_leaf(name: str, common_name: str) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocspproxy e2e"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                        )
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return Leaf(
            name=name,
            cert=cert,
            cert_pem=_write_pem(directory / f"{name}.pem", _cert_pem(cert)),
            chain_pem=_write_pem(directory / f"{name}-chain.pem", _cert_pem(cert), _cert_pem(ca_cert)),
            key_pem=_write_pem(directory / f"{name}.key", _key_pem(key), private=True),
        )

    good = make_leaf("good", "localhost")
    revoked = make_leaf("revoked", "revoked.localhost")
    revoked_at = now - dt.timedelta(minutes=30)
    index_txt = directory / "index.txt"
    index_txt.write_text(index_line(good) + index_line(revoked, revoked_at=revoked_at))
    (directory / "index.txt.attr").write_text("unique_subject = no\n")
    return Pki(
        directory=directory,
        ca_port=ca_port,
        ca_cert=ca_cert,
        ca_pem=ca_pem,
        ca_key_pem=ca_key_pem,
        index_txt=index_txt,
        good=good,
        revoked=revoked,
        revoked_at=revoked_at,
    )


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
        return self.pki.ocsp_url

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


@dataclass(frozen=True)
class VHost:
    """One TLS listener of an Apache instance, serving ``leaf``."""

    port: int
    leaf: Leaf


class Apache(ManagedProcess):
    """Apache httpd 2.4 + mod_ssl in its own ServerRoot, stapling via ``SSLStaplingForceURL``.

    Stapling knobs (all per vhost) are chosen so Apache re-asks the responder often:
    ``SSLStaplingStandardCacheTimeout`` (good responses) and ``SSLStaplingErrorCacheTimeout``
    (errors / tryLater / no answer).  ``SSLStaplingResponseTimeSkew`` defaults to 300 s in mod_ssl,
    i.e. Apache would keep stapling a response up to 5 minutes past its nextUpdate; we set it to
    ``time_skew`` seconds.  The stapling cache lives in shared memory, so stop/start empties it.
    """

    def __init__(
        self,
        server_root: Path,
        vhosts: Sequence[VHost],
        force_url: str,
        *,
        standard_cache_timeout: int = 5,
        error_cache_timeout: int = 2,
        responder_timeout: int = 5,
        time_skew: int = 1,
        user: str = "www-data",
        group: str = "www-data",
    ) -> None:
        if not vhosts:
            raise ValueError("need at least one vhost")
        super().__init__(f"apache2 (:{vhosts[0].port})", vhosts[0].port, server_root / "logs" / "stdout.log")
        self.server_root = server_root
        self.vhosts = list(vhosts)
        self.force_url = force_url
        self.standard_cache_timeout = standard_cache_timeout
        self.error_cache_timeout = error_cache_timeout
        self.responder_timeout = responder_timeout
        self.time_skew = time_skew
        self.user = user
        self.group = group
        self.error_log = server_root / "logs" / "error.log"
        self.conf_path = server_root / "conf" / "httpd.conf"
        self._write_config()

    def port_of(self, leaf: Leaf) -> int:
        for vhost in self.vhosts:
            if vhost.leaf == leaf:
                return vhost.port
        raise KeyError(leaf.name)

    def _write_config(self) -> None:
        root = self.server_root
        for sub in ("conf", "logs", "run", "htdocs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "htdocs" / "index.html").write_text("ocspproxy e2e\n")
        # Everything is opened by the root parent before it drops privileges to User/Group; the
        # handshake (and mod_ssl's OCSP query) in the children needs no file access, so pytest's
        # 0700 tmp dirs are fine.
        mods = "\n".join(
            f"LoadModule {name} {APACHE_MODULES_DIR / so}"
            for name, so in (
                ("mpm_event_module", "mod_mpm_event.so"),
                ("authz_core_module", "mod_authz_core.so"),
                ("socache_shmcb_module", "mod_socache_shmcb.so"),
                ("ssl_module", "mod_ssl.so"),
            )
        )
        listens = "\n".join(f"Listen 127.0.0.1:{v.port}" for v in self.vhosts)
        vhost_blocks = "\n".join(
            f"""
<VirtualHost 127.0.0.1:{v.port}>
    ServerName localhost
    SSLEngine on
    SSLCertificateFile "{v.leaf.chain_pem}"
    SSLCertificateKeyFile "{v.leaf.key_pem}"
    SSLUseStapling on
    SSLStaplingForceURL {self.force_url}
    SSLStaplingReturnResponderErrors off
    SSLStaplingFakeTryLater off
    SSLStaplingStandardCacheTimeout {self.standard_cache_timeout}
    SSLStaplingErrorCacheTimeout {self.error_cache_timeout}
    SSLStaplingResponderTimeout {self.responder_timeout}
    SSLStaplingResponseTimeSkew {self.time_skew}
</VirtualHost>"""
            for v in self.vhosts
        )
        self.conf_path.write_text(
            f"""# generated by tests/e2e/peers.py
ServerRoot "{root}"
ServerName localhost
DefaultRuntimeDir "{root}/run"
PidFile "{root}/run/httpd.pid"
ErrorLog "{self.error_log}"
LogLevel warn ssl:debug
{mods}
User {self.user}
Group {self.group}
StartServers 1
ServerLimit 2
ThreadsPerChild 8
MinSpareThreads 1
MaxSpareThreads 16
MaxRequestWorkers 16
GracefulShutdownTimeout 3
DocumentRoot "{root}/htdocs"
<Directory />
    Require all denied
</Directory>
<Directory "{root}/htdocs">
    Require all granted
</Directory>
{listens}
SSLStaplingCache "shmcb:{root}/run/stapling(128000)"
SSLSessionCache "shmcb:{root}/run/sessions(128000)"
{vhost_blocks}
"""
        )

    def command(self) -> list[str]:
        apache = find_apache() or "apache2"
        return [apache, "-d", str(self.server_root), "-f", str(self.conf_path), "-DFOREGROUND"]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        # Debian's apache2ctl would source /etc/apache2/envvars; our config references none of these,
        # but keep them pointing into the ServerRoot in case a packaged snippet does.
        run = str(self.server_root / "run")
        env.update(
            APACHE_RUN_DIR=run,
            APACHE_PID_FILE=f"{run}/httpd.pid",
            APACHE_LOCK_DIR=run,
            APACHE_LOG_DIR=str(self.server_root / "logs"),
            APACHE_RUN_USER=self.user,
            APACHE_RUN_GROUP=self.group,
        )
        return env

    def ports(self) -> list[int]:
        return [v.port for v in self.vhosts]

    def ready(self) -> bool:
        return all(port_accepts(v.port) for v in self.vhosts)

    def log_text(self) -> str:
        parts = [super().log_text()]
        with contextlib.suppress(FileNotFoundError):
            parts.append(self.error_log.read_text(errors="replace"))
        return "\n".join(parts)

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count_in_error_log(self, needle: str) -> int:
        return self.error_log_text().count(needle)

    def responder_queries(self) -> int:
        """How often mod_ssl asked the OCSP responder (ForceURL) so far (needs LogLevel ssl:debug)."""
        return self.count_in_error_log("stapling_renew_response: querying responder")


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


# --------------------------------------------------------------------------------------------------
# openssl s_client -status
# --------------------------------------------------------------------------------------------------

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}
_ASN1_TIME_RE = re.compile(
    r"(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2})\s+(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})(?:\.\d+)?\s+(?P<y>\d{4})\s+GMT"
)


def parse_openssl_time(text: str) -> dt.datetime:
    """Parse OpenSSL's ASN1_TIME_print format, e.g. ``Nov  8 03:30:00 2026 GMT`` (locale independent)."""
    match = _ASN1_TIME_RE.search(text)
    if match is None:
        raise ValueError(f"not an OpenSSL time: {text!r}")
    return dt.datetime(
        int(match["y"]),
        _MONTHS[match["mon"]],
        int(match["day"]),
        int(match["h"]),
        int(match["m"]),
        int(match["s"]),
        tzinfo=UTC,
    )


@dataclass(frozen=True)
class OcspText:
    """An OCSP response's interesting fields as OpenSSL prints them (s_client -status, ocsp -resp_text)."""

    response_status: str  # "successful", "tryLater", ...
    cert_status: str | None  # "good", "revoked", "unknown"; None when there is no single response
    this_update: dt.datetime | None
    next_update: dt.datetime | None
    serial: str | None  # upper-case hex as printed by OpenSSL
    revocation_time: dt.datetime | None
    raw: str

    @property
    def good(self) -> bool:
        return self.response_status == "successful" and self.cert_status == "good"


def parse_ocsp_text(block: str) -> OcspText:
    def field_(name: str) -> str | None:
        match = re.search(rf"^\s*{re.escape(name)}:\s*(.*?)\s*$", block, re.MULTILINE)
        return match.group(1) if match else None

    def time_(name: str) -> dt.datetime | None:
        value = field_(name)
        return parse_openssl_time(value) if value else None

    status = field_("OCSP Response Status")
    if status is None:
        raise ValueError(f"no 'OCSP Response Status' in:\n{block}")
    return OcspText(
        response_status=status.split()[0],
        cert_status=field_("Cert Status"),
        this_update=time_("This Update"),
        next_update=time_("Next Update"),
        serial=field_("Serial Number"),
        revocation_time=time_("Revocation Time"),
        raw=block,
    )


class HandshakeError(RuntimeError):
    pass


@dataclass
class Observation:
    """One ``s_client`` handshake: when it started and what was stapled (None = no response sent)."""

    started: dt.datetime
    staple: OcspText | None
    output: str = field(repr=False)


def s_client(
    port: int, ca_pem: Path, *, servername: str = "localhost", timeout: float = 20.0
) -> OcspText | None:
    """One TLS handshake through ``openssl s_client -status``; None when no OCSP response was stapled."""
    return observe(port, ca_pem, servername=servername, timeout=timeout).staple


def observe(port: int, ca_pem: Path, *, servername: str = "localhost", timeout: float = 20.0) -> Observation:
    started = utcnow()
    cmd = [
        find_openssl() or "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        servername,
        "-status",
        "-CAfile",
        str(ca_pem),
    ]
    try:
        proc = subprocess.run(
            cmd,
            input=b"",
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HandshakeError(f"s_client to port {port} timed out after {timeout}s") from exc
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or "OCSP response:" not in out or "-----BEGIN CERTIFICATE-----" not in out:
        raise HandshakeError(f"s_client to port {port} failed (rc={proc.returncode}):\n{err}\n{out}")
    if "OCSP response: no response sent" in out:
        return Observation(started, None, out)
    block = out.split("OCSP response:", 1)[1]
    # the block is framed by lines of '=' characters
    frames = re.split(r"^=+\s*$", block, flags=re.MULTILINE)
    text = frames[1] if len(frames) >= 3 else block
    return Observation(started, parse_ocsp_text(text), out)


def poll_staple(
    port: int,
    ca_pem: Path,
    predicate: Callable[[OcspText | None], bool],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str,
    seen: list[Observation] | None = None,
) -> OcspText | None:
    """Handshake until ``predicate(staple)`` holds; returns that staple.  Bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Observation | None = None
    while True:
        last = observe(port, ca_pem)
        if seen is not None:
            seen.append(last)
        if predicate(last.staple):
            return last.staple
        if time.monotonic() + interval >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}; last staple: "
                f"{last.staple.raw if last.staple else 'no response sent'}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# direct OCSP queries and DER inspection
# --------------------------------------------------------------------------------------------------


def ocsp_request_der(leaf: Leaf, issuer: x509.Certificate) -> bytes:
    """A request like mod_ssl sends: one SHA-1 CertID, no nonce."""
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, issuer, hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class HttpOcspAnswer:
    http_status: int
    content_type: str
    body: bytes

    def parsed(self) -> ocsp.OCSPResponse:
        return ocsp.load_der_ocsp_response(self.body)


def query_ocsp(url: str, leaf: Leaf, issuer: x509.Certificate, *, method: str = "POST") -> HttpOcspAnswer:
    """Ask an OCSP responder directly over HTTP (POST like mod_ssl, or RFC 6960 A.1 GET)."""
    der = ocsp_request_der(leaf, issuer)
    if method == "POST":
        request = urllib.request.Request(
            url, data=der, method="POST", headers={"Content-Type": "application/ocsp-request"}
        )
    elif method == "GET":
        encoded = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
        request = urllib.request.Request(url.rstrip("/") + "/" + encoded, method="GET")
    else:
        raise ValueError(method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP proxy
    try:
        with opener.open(request, timeout=10) as resp:
            return HttpOcspAnswer(resp.status, resp.headers.get("Content-Type", ""), resp.read())
    except urllib.error.HTTPError as exc:
        return HttpOcspAnswer(exc.code, exc.headers.get("Content-Type", ""), exc.read())


def read_der_with_openssl(path: Path) -> OcspText:
    """``openssl ocsp -respin FILE -resp_text -noverify``; raises if OpenSSL cannot read the file."""
    proc = subprocess.run(
        [find_openssl() or "openssl", "ocsp", "-respin", str(path), "-resp_text", "-noverify"],
        capture_output=True,
        timeout=20,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise ValueError(
            f"openssl ocsp -respin {path} failed (rc={proc.returncode}):\n{proc.stderr.decode()}{out}"
        )
    return parse_ocsp_text(out)


def describe(observations: Iterable[Observation]) -> str:
    lines = []
    for obs in observations:
        if obs.staple is None:
            lines.append(f"{obs.started:%H:%M:%S} no staple")
        else:
            s = obs.staple
            lines.append(
                f"{obs.started:%H:%M:%S} {s.response_status}/{s.cert_status} "
                f"this={s.this_update:%H:%M:%S} next={s.next_update:%H:%M:%S}"
                if s.this_update and s.next_update
                else f"{obs.started:%H:%M:%S} {s.response_status}/{s.cert_status}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# a Debian-style Apache tree (apache2.conf, envvars, mods-/conf-/sites-enabled), for `apache install`
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DebianTree:
    """``<root>/apache2.conf`` laid out like /etc/apache2, with one TLS vhost and no stapling directive.

    Runtime files go to ``<root>/run`` and ``<root>/logs`` through ``envvars`` (as on Debian, where
    apache2ctl sources it).  ``with_shmcb=False`` leaves mod_socache_shmcb out, so a ``shmcb:``
    stapling cache makes the config test fail.
    """

    root: Path
    port: int
    leaf_cert: Path  # the SSLCertificateFile (may not exist, for a broken tree)
    leaf_key: Path
    user: str
    group: str
    with_shmcb: bool = True

    @property
    def main_file(self) -> Path:
        return self.root / "apache2.conf"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def error_log(self) -> Path:
        return self.root / "logs" / "error.log"

    def environment(self) -> dict[str, str]:
        """What envvars exports (the harness starts apache2 directly, like apache2ctl would)."""
        return {
            "APACHE_RUN_USER": self.user,
            "APACHE_RUN_GROUP": self.group,
            "APACHE_RUN_DIR": str(self.run_dir),
            "APACHE_PID_FILE": str(self.run_dir / "apache2.pid"),
            "APACHE_LOCK_DIR": str(self.run_dir),
            "APACHE_LOG_DIR": str(self.root / "logs"),
        }

    def write(self) -> DebianTree:
        root = self.root
        for sub in (
            "conf-available",
            "conf-enabled",
            "mods-enabled",
            "sites-enabled",
            "run",
            "logs",
            "htdocs",
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "htdocs" / "index.html").write_text("ocspproxy e2e\n")
        (root / "envvars").write_text(
            "# envvars - default environment variables for apache2ctl (ocspproxy e2e tree)\nunset HOME\n"
            + "".join(f"export {name}={value}\n" for name, value in self.environment().items())
            + "export LANG=C\n"
        )
        (root / "apache2.conf").write_text(
            """# A trimmed Debian apache2.conf (ocspproxy e2e)
DefaultRuntimeDir ${APACHE_RUN_DIR}
PidFile ${APACHE_PID_FILE}
Timeout 30
User ${APACHE_RUN_USER}
Group ${APACHE_RUN_GROUP}
ServerName localhost
ErrorLog ${APACHE_LOG_DIR}/error.log
LogLevel warn ssl:debug
GracefulShutdownTimeout 3
IncludeOptional mods-enabled/*.load
IncludeOptional mods-enabled/*.conf
Include ports.conf
<Directory />
\tRequire all denied
</Directory>
IncludeOptional conf-enabled/*.conf
IncludeOptional sites-enabled/*.conf
"""
        )
        modules = ["mpm_event", "authz_core", "ssl", *(["socache_shmcb"] if self.with_shmcb else [])]
        for name in modules:
            (root / "mods-enabled" / f"{name}.load").write_text(
                f"LoadModule {name}_module {APACHE_MODULES_DIR / f'mod_{name}.so'}\n"
            )
        (root / "mods-enabled" / "mpm_event.conf").write_text(
            "<IfModule mpm_event_module>\n\tStartServers 1\n\tServerLimit 2\n\tThreadsPerChild 8\n"
            "\tMinSpareThreads 1\n\tMaxSpareThreads 16\n\tMaxRequestWorkers 16\n</IfModule>\n"
        )
        (root / "ports.conf").write_text(
            f"<IfModule ssl_module>\n\tListen 127.0.0.1:{self.port}\n</IfModule>\n"
        )
        (root / "conf-available" / "security.conf").write_text("ServerTokens Prod\n")
        (root / "conf-enabled" / "security.conf").symlink_to("../conf-available/security.conf")
        (root / "sites-enabled" / "default-ssl.conf").write_text(
            f"""<IfModule mod_ssl.c>
\t<VirtualHost 127.0.0.1:{self.port}>
\t\tServerName localhost
\t\tDocumentRoot {root}/htdocs
\t\tSSLEngine on
\t\tSSLCertificateFile {self.leaf_cert}
\t\tSSLCertificateKeyFile {self.leaf_key}
\t</VirtualHost>
</IfModule>
"""
        )
        return self


class ApacheTree(ManagedProcess):
    """``apache2 -d ROOT -f apache2.conf -DFOREGROUND`` for a DebianTree, in envvars' environment."""

    def __init__(self, tree: DebianTree) -> None:
        super().__init__(f"apache2 tree (:{tree.port})", tree.port, tree.root / "logs" / "stdout.log")
        self.tree = tree
        self.error_log = tree.error_log

    def command(self) -> list[str]:
        apache = find_apache() or "apache2"
        return [apache, "-d", str(self.tree.root), "-f", str(self.tree.main_file), "-DFOREGROUND"]

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.tree.environment()}


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
