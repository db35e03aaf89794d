"""A fleet of real ocspproxy processes on one real Redis (``redis-server``, ``redis-sentinel``), with
``openssl ocsp`` as the CA (its requests counted), ``openssl ocsp`` as the verifying client, and
real Apache stapling through one of the instances."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from cryptography.x509 import ocsp

from tests.redis_peer import RedisSentinel, RedisServer, fill_to_maxmemory

from .conftest import apache_account
from .peers import (
    Apache,
    Leaf,
    ManagedProcess,
    OcspProxy,
    OcspResponder,
    Pki,
    VHost,
    build_pki,
    find_openssl,
    free_port,
    poll_staple,
    sign_good,
    utcnow,
    wait_until,
)

HERE = Path(__file__).resolve().parent
PREFIX = "ocspproxy"


class CountingResponder(OcspResponder):
    """``openssl ocsp -text``: every request it answers is printed, and counted here."""

    def command(self) -> list[str]:
        return [*super().command(), "-text"]

    @property
    def requests(self) -> int:
        return self.log_text().count("OCSP Request Data:")


class Relay(ManagedProcess):
    """tests/e2e/relay.py: a CA that holds its first requests (slow), counting them."""

    def __init__(self, to: int, log_path: Path, *, hold_first: int, hold: float) -> None:
        super().__init__("relay", free_port(), log_path)
        self.to, self.hold_first, self.hold = to, hold_first, hold

    def command(self) -> list[str]:
        return [
            sys.executable,
            str(HERE / "relay.py"),
            "--listen",
            str(self.port),
            "--to",
            str(self.to),
            "--hold-first",
            str(self.hold_first),
            "--hold",
            str(self.hold),
        ]

    def ready(self) -> bool:
        return "relay ready" in self.log_since_start()

    @property
    def requests(self) -> int:
        return self.log_since_start().count("request ")


@dataclass(frozen=True)
class Asked:
    verified: bool
    status: str | None
    this_update: str | None


def ask(pki: Pki, leaf_pem: Path, url: str) -> Asked:
    """``openssl ocsp`` as the verifying client."""
    argv = [
        find_openssl() or "openssl",
        "ocsp",
        "-issuer",
        str(pki.ca_pem),
        "-cert",
        str(leaf_pem),
        "-url",
        url,
        "-CAfile",
        str(pki.ca_pem),
        "-no_nonce",
        "-resp_text",
        "-timeout",
        "10",
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    output = run.stdout + run.stderr
    found = re.search(rf"{re.escape(str(leaf_pem))}: (\w+)", output)
    this_update = re.search(r"This Update: (.+)", output)
    return Asked(
        "Response verify OK" in output,
        found.group(1) if found else None,
        this_update.group(1).strip() if this_update else None,
    )


def config_text(
    shared: str, *, lease_ttl: float = 8.0, issuer_url: str | None = None, pki: Pki | None = None
) -> str:
    """Short refreshes (due a tenth of the way into a 1-minute response) and a quick fleet."""
    text = (
        "[refresh]\nfraction = 0.1\njitter = 0.1\nmargin = 0.2\nretry_initial = 1.0\nretry_max = 5.0\n"
        "[upstream]\nconnect_timeout = 2.0\ntotal_timeout = 5.0\n"
    )
    if shared:
        text += f"[shared_store]\n{shared}\nlease_ttl = {lease_ttl}\nprobe_interval = 0.5\ntimeout = 0.5\n"
    if issuer_url is not None and pki is not None:
        text += f'[[issuer]]\ncertificate = "{pki.ca_pem}"\nocsp_url = "{issuer_url}"\n'
    return text


class Fleet:
    """Instances of one PKI on one Redis; ``start(name)`` runs one more."""

    def __init__(self, base: Path, pki: Pki, shared: str, **config: Any) -> None:
        self.base, self.pki, self.shared, self.config = base, pki, shared, config
        base.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, OcspProxy] = {}

    def start(self, name: str, *, shared: str | None = None, **config: Any) -> OcspProxy:
        path = self.base / f"{name}.toml"
        options: dict[str, Any] = {**self.config, **config}
        text = config_text(self.shared if shared is None else shared, pki=self.pki, **options)
        path.write_text(text)
        proxy = OcspProxy(
            free_port(),
            self.base / name,
            [self.pki.good.cert_pem, self.pki.revoked.cert_pem],
            self.pki.ca_pem,
            self.base / "logs" / f"{name}.log",
            config=path,
        )
        self.members[name] = proxy
        proxy.start()
        return proxy

    def serve_everything(self, names: list[str] | None = None, timeout: float = 15.0) -> None:
        """Every instance answers for both certificates, verified by openssl, with the right status."""
        for name in names or list(self.members):
            url = self.members[name].url
            for leaf, status in ((self.pki.good, "good"), (self.pki.revoked, "revoked")):

                def answers(url: str = url, leaf: Leaf = leaf, status: str = status) -> bool:
                    asked = ask(self.pki, leaf.cert_pem, url)
                    return asked.verified and asked.status == status

                wait_until(
                    answers,
                    timeout=timeout,
                    what=f"{name} serving {leaf.name}",
                )

    def cleanup(self) -> None:
        for proxy in self.members.values():
            proxy.cleanup()


@pytest.fixture
def world(e2e_tools: None, tmp_path: Path) -> Iterator[Callable[..., tuple[Pki, CountingResponder]]]:
    started: list[ManagedProcess] = []
    fleets: list[Fleet] = []

    def make(**_: object) -> tuple[Pki, CountingResponder]:
        pki = build_pki(tmp_path / "pki", free_port())
        ca = CountingResponder(pki, tmp_path / "logs" / "ca.log", nmin=1)
        ca.start()
        started.append(ca)
        return pki, ca

    make.started = started  # type: ignore[attr-defined]
    make.fleets = fleets  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.cleanup()
        for proc in reversed(started):
            proc.cleanup()


def redis_server(
    tmp_path: Path, started: list[ManagedProcess], name: str = "redis", **kw: object
) -> RedisServer:
    server = RedisServer(tmp_path / name, **kw)  # type: ignore[arg-type]
    server.start()
    started.append(server)
    return server


def entries(redis: RedisServer) -> int:
    return len([k for k in redis.cli("--scan", "--pattern", f"{PREFIX}:s:*", raw=True).splitlines() if k])


# --- one fetch per refresh across the fleet -------------------------------------------------------


def test_three_instances_ask_the_ca_about_as_often_as_one_and_apache_staples_through_one(
    world: Callable[..., tuple[Pki, CountingResponder]], tmp_path: Path
) -> None:
    pki, ca = world()
    started = world.started  # type: ignore[attr-defined]
    redis = redis_server(tmp_path, started)
    # A lone instance (no shared store) asks its own CA: the yardstick, measured in the same run.
    lone_ca = CountingResponder(
        dataclasses.replace(pki, ca_port=free_port()), tmp_path / "logs" / "lone-ca.log", nmin=1
    )
    lone_ca_url = lone_ca.url
    lone_ca.start()
    started.append(lone_ca)
    fleet = Fleet(tmp_path / "fleet", pki, f'url = "{redis.url}"')
    world.fleets.append(fleet)  # type: ignore[attr-defined]
    lone = Fleet(tmp_path / "lone", pki, "", issuer_url=lone_ca_url)
    world.fleets.append(lone)  # type: ignore[attr-defined]
    baseline, lone_baseline = ca.requests, lone_ca.requests
    for name in ("a", "b", "c"):
        fleet.start(name)
    lone.start("lone")
    user, group = apache_account()
    apache = Apache(
        tmp_path / "httpd", [VHost(free_port(), pki.good)], fleet.members["a"].url, user=user, group=group
    )
    started.append(apache)
    apache.start()
    fleet.serve_everything()
    lone.serve_everything()
    time.sleep(40)  # several refresh cycles: 1-minute responses, refreshed 6-12 s into each
    fleet.serve_everything()
    poll_staple(
        apache.port_of(pki.good),
        pki.ca_pem,
        lambda t: t is not None and t.good,
        timeout=20,
        what="Apache stapling a good response through the fleet",
    )
    asked_fleet, asked_lone = ca.requests - baseline, lone_ca.requests - lone_baseline
    assert asked_lone >= 6, f"the lone instance refreshed ({asked_lone} requests)"
    assert asked_fleet <= asked_lone * 1.5 + 2, (
        f"three instances asked {asked_fleet} times, one alone {asked_lone}"
    )
    (tmp_path / "counts.txt").write_text(f"fleet of 3: {asked_fleet}\nalone: {asked_lone}\n")


# --- the lease holder dies mid-fetch ---------------------------------------------------------------


def test_sigkill_of_the_lease_holder_during_a_slow_fetch_lets_another_fetch_before_next_update(
    world: Callable[..., tuple[Pki, CountingResponder]], tmp_path: Path
) -> None:
    pki, ca = world()
    started = world.started  # type: ignore[attr-defined]
    redis = redis_server(tmp_path, started)
    relay = Relay(ca.port, tmp_path / "logs" / "relay.log", hold_first=2, hold=60.0)
    relay.start()
    started.append(relay)
    slow_url = f"http://127.0.0.1:{relay.port}/"
    fleet = Fleet(tmp_path / "fleet", pki, f'url = "{redis.url}"', lease_ttl=6.0, issuer_url=slow_url)
    world.fleets.append(fleet)  # type: ignore[attr-defined]
    holder = fleet.start("holder")
    wait_until(lambda: relay.requests >= 1, timeout=10, what="the holder asking the (slow) CA")
    assert "ocspproxy:l:" in redis.cli("--scan", "--pattern", f"{PREFIX}:l:*", raw=True), "it holds a lease"
    other = fleet.start("other")
    time.sleep(1.0)
    assert relay.requests <= 2, "the other waits for the holder instead of asking"
    assert holder.popen is not None
    holder.popen.send_signal(signal.SIGKILL)
    killed_at = utcnow()
    fleet.serve_everything(["other"], timeout=30)
    served_at = utcnow()
    answer = ask(pki, pki.good.cert_pem, other.url)
    assert answer.verified and answer.status == "good"
    # The holder's leases ended after lease_ttl; the other asked then, long before any nextUpdate.
    assert served_at - killed_at < dt.timedelta(seconds=6.0 + 10)


# --- Redis troubles, with Sentinel -------------------------------------------------------------------


def test_redis_flushed_full_and_failed_over_staples_stay_served_and_the_fleet_converges(
    world: Callable[..., tuple[Pki, CountingResponder]], tmp_path: Path
) -> None:
    pki, _ = world()
    started = world.started  # type: ignore[attr-defined]
    master = redis_server(tmp_path, started, "master")
    replica = redis_server(tmp_path, started, "replica", replica_of=master.port)
    sentinel = RedisSentinel(tmp_path / "sentinel", master=master.port)
    sentinel.start()
    started.append(sentinel)
    wait_until(
        lambda: str(replica.port) in sentinel.cli("SENTINEL", "REPLICAS", sentinel.service),
        timeout=20,
        what="the sentinel knowing the replica",
    )
    shared = f'sentinels = ["127.0.0.1:{sentinel.port}"]\nservice = "{sentinel.service}"'
    fleet = Fleet(tmp_path / "fleet", pki, shared)
    world.fleets.append(fleet)  # type: ignore[attr-defined]
    for name in ("a", "b", "c"):
        fleet.start(name)
    fleet.serve_everything()
    wait_until(lambda: entries(master) == 2, timeout=10, what="both staples in Redis")

    master.cli("FLUSHALL")
    fleet.serve_everything()
    wait_until(lambda: entries(master) == 2, timeout=10, what="the fleet writing its staples again")

    with redis_py.Redis(port=master.port) as direct:
        fill_to_maxmemory(direct, 32 * 1024)
        time.sleep(12)  # a refresh cycle with Redis full: every instance goes on alone
        fleet.serve_everything()
        full = [p.log_text().count("shared store full") for p in fleet.members.values()]
        assert min(full) >= 1 and max(full) <= 2, f"logged once per change: {full}"
        direct.config_set("maxmemory", 0)
        direct.delete(*[f"filler:{i}" for i in range(10_000)])
    wait_until(
        lambda: all(
            "shared store reachable" in p.log_text().rsplit("shared store full", 1)[1]
            for p in fleet.members.values()
        ),
        timeout=10,
        what="every instance writing again",
    )

    master.stop()  # the sentinel promotes the replica
    fleet.serve_everything()
    wait_until(
        lambda: (
            sentinel.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel.service).split()[-1]
            == str(replica.port)
        ),
        timeout=30,
        what="the failover",
    )
    master.start()  # back, empty: made a replica of the new master
    time.sleep(10)  # a refresh cycle on the new master
    fleet.serve_everything()
    assert entries(replica) == 2, "the fleet writes to the new master"
    newest = {ask(pki, pki.good.cert_pem, p.url).this_update for p in fleet.members.values()}
    wait_until(
        lambda: len({ask(pki, pki.good.cert_pem, p.url).this_update for p in fleet.members.values()}) == 1,
        timeout=15,
        what=f"one staple across the fleet after the failover (saw {newest})",
    )


# --- Redis is not trusted -----------------------------------------------------------------------


def test_bad_responses_are_never_served_redis_can_stop_and_a_fresh_instance_serves_at_once(
    world: Callable[..., tuple[Pki, CountingResponder]], tmp_path: Path
) -> None:
    """Garbage, forged (a rogue signer with the CA's name), expired and older responses, each in
    turn written into every key with fields that claim they are the newest and announced."""
    pki, ca = world()
    started = world.started  # type: ignore[attr-defined]
    redis = redis_server(tmp_path, started)
    fleet = Fleet(tmp_path / "fleet", pki, f'url = "{redis.url}"')
    world.fleets.append(fleet)  # type: ignore[attr-defined]
    fleet.start("a")
    fleet.start("b")
    fleet.serve_everything()
    wait_until(lambda: entries(redis) == 2, timeout=10, what="both staples in Redis")
    served = {n: ask(pki, pki.good.cert_pem, p.url).this_update for n, p in fleet.members.items()}
    now = utcnow()
    names = [k for k in redis.cli("--scan", "--pattern", f"{PREFIX}:s:*", raw=True).splitlines() if k]
    far = str(int((now + dt.timedelta(hours=2)).timestamp() * 1000))
    for kind in ("garbage", "forged", "expired", "older"):
        for name in names:
            leaf = pki.good.cert if f"{pki.good.serial:x}" in name else pki.revoked.cert
            der = {
                "garbage": b"\x30\x03\x0a\x01\x00 not an OCSP response",
                "forged": sign_good(
                    pki, leaf, this_update=now, next_update=now + dt.timedelta(minutes=30), rogue=True
                ),
                "expired": sign_good(
                    pki,
                    leaf,
                    this_update=now - dt.timedelta(hours=3),
                    next_update=now - dt.timedelta(hours=2),
                ),
                "older": sign_good(
                    pki,
                    leaf,
                    this_update=now - dt.timedelta(hours=1),
                    next_update=now + dt.timedelta(minutes=1),
                ),
            }[kind]
            path = tmp_path / "bad.der"
            path.write_bytes(der)
            # redis-cli -x reads the last argument from stdin: the bytes as they are.
            subprocess.run(
                [
                    redis.binary.replace("redis-server", "redis-cli"),
                    "-p",
                    str(redis.port),
                    "-x",
                    "HSET",
                    name,
                    "der",
                ],
                input=der,
                capture_output=True,
                timeout=10,
                check=True,
            )
            redis.cli("HSET", name, "tu", far, "pa", far, "st", "good", "nu", far)
            key = name.split("{", 1)[1].rstrip("}")
            redis.cli("PUBLISH", f"{PREFIX}:staples", f"intruder {key}")
        time.sleep(1.5)
        fleet.serve_everything()  # verified by openssl: never the bytes written
        for name, proxy in fleet.members.items():
            this_update = ask(pki, pki.good.cert_pem, proxy.url).this_update
            assert this_update is not None and (kind != "older" or this_update >= (served[name] or "")), kind
    # Redis stops: every instance goes on alone; it comes back empty: the fleet writes again.
    redis.stop()
    time.sleep(1.0)
    fleet.serve_everything()
    redis.start()
    wait_until(lambda: entries(redis) == 2, timeout=15, what="the fleet writing to the emptied Redis")
    # A fresh instance, its state directory empty, the CA down: served at once, from Redis (which
    # the fleet has repaired and refilled), and written to its own directory.
    ca.stop()
    fresh = fleet.start("fresh")
    fleet.serve_everything(["fresh"], timeout=5)
    wait_until(lambda: len(fresh.der_files()) == 2, timeout=10, what="the fresh instance's own copies")
    for file in fresh.der_files():
        parsed = ocsp.load_der_ocsp_response(file.read_bytes())
        assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
