"""End-to-end, air-gapped and proxied networks, with real peers: ``openssl ocsp`` as the CA, Apache
httpd stapling through ocspproxy, ``openssl s_client -status`` as the client, Squid as the DMZ's
forward proxy.

The leaves' AIA URL names the CA ``ca.test``, a name nothing on this machine resolves but Squid's
``hosts_file``: ocspproxy alone cannot reach the CA (the inside of an air gap); through Squid it can.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.required import unavailable

from .conftest import apache_account, new_proxy
from .peers import (
    Apache,
    Leaf,
    ManagedProcess,
    OcspProxy,
    OcspResponder,
    OcspText,
    Pki,
    VHost,
    build_pki,
    free_port,
    poll_staple,
    run_ocspproxy,
    s_client,
    sign_good,
    utcnow,
    wait_until,
)
from .squid import Squid, find_squid

pytestmark = pytest.mark.e2e

CA_NAME = "ca.test"


@dataclass
class Inside:
    pki: Pki
    ca: OcspResponder  # on the connected side: the inside cannot reach it
    proxy: OcspProxy
    apache: Apache
    base: Path

    def flags(self) -> list[str]:
        """The inside's configuration, as a cron job gives it to ``bundle want`` and ``import``."""
        return [
            "--cert",
            str(self.pki.good.cert_pem),
            "--cert",
            str(self.pki.revoked.cert_pem),
            "--issuers",
            str(self.pki.ca_pem),
            "--state-dir",
            str(self.proxy.state_dir),
        ]

    def staple(self, leaf: Leaf, check: Callable[[OcspText | None], bool], what: str) -> OcspText:
        port = self.apache.port_of(leaf)
        found = poll_staple(port, self.pki.ca_pem, check, timeout=30, what=what)
        assert found is not None
        return found


@pytest.fixture
def make_inside(e2e_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Inside]]:
    started: list[ManagedProcess] = []

    def build(config: str | None = None, *, before: Callable[[Path, Pki], None] | None = None) -> Inside:
        base = tmp_path_factory.mktemp("airgap")
        pki = build_pki(base / "pki", free_port(), ocsp_host=CA_NAME)
        ca = OcspResponder(pki, base / "logs" / "ca.log", ndays=1)
        proxy = new_proxy(pki, base, config)
        user, group = apache_account()
        apache = Apache(
            base / "httpd",
            [VHost(free_port(), pki.good), VHost(free_port(), pki.revoked)],
            proxy.url,
            user=user,
            group=group,
        )
        started.extend((ca, proxy, apache))
        if before is not None:
            before(base, pki)
        for process in (ca, proxy, apache):
            process.start()
        return Inside(pki, ca, proxy, apache, base)

    try:
        yield build
    finally:
        for process in reversed(started):
            process.cleanup()


def _cannot_resolve(name: str) -> None:
    try:
        socket.getaddrinfo(name, 80)
    except OSError:
        return
    pytest.fail(f"{name} resolves on this machine: the CA would not be out of reach")


def _run(*args: str) -> tuple[int, str, str]:
    done = run_ocspproxy(*args)
    return done.returncode, done.stdout, done.stderr


# --- bundles -----------------------------------------------------------------------------------------


def _members(path: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    return json.loads(files.pop("manifest.json")), files


def _write(path: Path, manifest: dict[str, object], files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _import(inside: Inside, bundle: Path) -> tuple[int, dict[str, object]]:
    code, out, err = _run("bundle", "import", str(bundle), "--json", *inside.flags())
    assert out.strip(), err
    return code, json.loads(out)


def test_want_fetch_import_into_the_running_service_then_newer_and_every_tampered_kind_refused(
    make_inside: Callable[..., Inside],
) -> None:
    _cannot_resolve(CA_NAME)
    inside = make_inside()
    pki, base = inside.pki, inside.base
    assert s_client(inside.apache.port_of(pki.good), pki.ca_pem) is None, "the inside cannot reach its CA"

    code, out, err = _run("bundle", "want", *inside.flags(), "--out", str(base / "want.tar"))
    assert code == 0 and "want: 2 certificates" in out, out + err
    code, out, err = _run(
        "bundle", "fetch", str(base / "want.tar"), "--out", str(base / "one.tar"), "--via", inside.ca.url
    )
    assert code == 0, out + err
    assert {line.split()[0] for line in out.splitlines()[:-1]} == {"good", "revoked"}, out

    code, report = _import(inside, base / "one.tar")
    assert code == 0 and report["imported"] == 2, report
    first = inside.staple(pki.good, lambda s: s is not None and s.good, "the imported good staple")
    revoked = inside.staple(pki.revoked, lambda s: s is not None, "the imported revoked staple")
    assert revoked.cert_status == "revoked" and revoked.serial == pki.revoked.serial_hex, revoked.raw
    assert inside.proxy.starts == 1, "served without a restart"
    assert '"event": "bundle imported"' in inside.proxy.log_text()

    time.sleep(1.1)  # openssl ocsp stamps thisUpdate to the second: the next answers are newer
    code, out, err = _run(
        "bundle", "fetch", str(base / "want.tar"), "--out", str(base / "two.tar"), "--via", inside.ca.url
    )
    assert code == 0, out + err
    code, report = _import(inside, base / "two.tar")
    assert code == 0 and report["imported"] == 2, report
    assert first.this_update is not None
    first_update = first.this_update
    second = inside.staple(
        pki.good,
        lambda s: s is not None and s.this_update is not None and s.this_update > first_update,
        "the newer staple of the second cycle",
    )

    manifest, files = _members(base / "two.tar")
    entries = manifest["entries"]
    assert isinstance(entries, list)
    good_file = next(e["response"] for e in entries if e["cert_id"]["serial"] == f"{pki.good.serial:x}")
    revoked_file = next(e["response"] for e in entries if e["cert_id"]["serial"] == f"{pki.revoked.serial:x}")
    now = utcnow().replace(microsecond=0)
    flipped = bytearray(files[good_file])
    signature = ocsp.load_der_ocsp_response(files[good_file]).signature
    flipped[bytes(flipped).index(signature) + len(signature) // 2] ^= 0x20  # in the response's signature
    day, hour = dt.timedelta(days=1), dt.timedelta(hours=1)
    variants = {
        "flipped byte": {good_file: bytes(flipped)},
        "swapped": {good_file: files[revoked_file], revoked_file: files[good_file]},
        "rogue key": {
            good_file: sign_good(pki, pki.good.cert, this_update=now, next_update=now + day, rogue=True)
        },
        "expired": {
            good_file: sign_good(pki, pki.good.cert, this_update=now - 2 * day, next_update=now - day)
        },
        "older": {good_file: sign_good(pki, pki.good.cert, this_update=now - hour, next_update=now + day)},
    }
    expected = {
        "flipped byte": "invalid: ",
        "swapped": "invalid: no SingleResponse for the requested certificate",
        "rogue key": "invalid: ",
        "expired": "expired: nextUpdate",
        "older": "older than the one held",
    }
    for kind, change in variants.items():
        code, report = _import(inside, _write(base / f"{kind}.tar", manifest, {**files, **change}))
        entries_seen: list[dict[str, str]] = report["entries"]  # type: ignore[assignment]
        reasons = {e["cert_id"].rsplit("-", 1)[1]: e["reason"] for e in entries_seen}
        assert code != 0 and reasons[f"{pki.good.serial:x}"].startswith(expected[kind]), (kind, report)
    data = (base / "two.tar").read_bytes()
    with tarfile.open(base / "two.tar") as tar:
        cut = tar.getmembers()[-1].offset_data + 100  # inside the last response
    (base / "truncated.tar").write_bytes(data[:cut])
    code, report = _import(inside, base / "truncated.tar")
    assert code != 0 and report["damage"], report

    staple = s_client(inside.apache.port_of(pki.good), pki.ca_pem)
    assert staple is not None and staple.good and staple.this_update == second.this_update, (
        "nothing good lost"
    )
    assert inside.proxy.running and inside.proxy.starts == 1


# --- the forward proxy ------------------------------------------------------------------------------


def test_the_ca_reached_only_through_squid_and_stopping_it_keeps_the_staples(
    make_inside: Callable[..., Inside],
) -> None:
    if find_squid() is None:
        unavailable("squid is not installed (scripts/test installs it)")
    _cannot_resolve(CA_NAME)
    squid_port = free_port()
    squids: list[Squid] = []

    def start_squid(base: Path, pki: Pki) -> None:
        squids.append(Squid(squid_port, [CA_NAME]))
        squids[0].start()

    config = f'[upstream]\nproxy = "http://127.0.0.1:{squid_port}"\n[refresh]\nmax_interval = 3\n'
    try:
        inside = make_inside(config, before=start_squid)
        squid = squids[0]
        pki = inside.pki
        inside.staple(pki.good, lambda s: s is not None and s.good, "a good staple fetched through squid")
        seen = [line for line in squid.requests() if f"POST http://{CA_NAME}:{pki.ca_port}/" in line]
        assert seen, "squid's access log shows the requests to the CA:\n" + "\n".join(squid.requests())

        squid.stop()
        refused = f'"reason": "proxy http://127.0.0.1:{squid_port}: connection refused"'
        wait_until(
            lambda: refused in inside.proxy.log_text(),
            timeout=30,
            what="a refresh failing at the proxy, logged as the proxy's failure",
        )
        inside.apache.restart()  # its own cache gone: the staple must come from ocspproxy's store
        staple = s_client(inside.apache.port_of(pki.good), pki.ca_pem)
        assert staple is not None and staple.good, "the stored staple keeps being served"
    finally:
        for squid in squids:
            squid.cleanup()
