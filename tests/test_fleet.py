"""A fleet in one process: several ocspproxy apps, one real redis-server (started here), a test CA
behind a fake upstream that counts what it is asked. The same scenarios with separate processes,
openssl as the CA and Apache are in tests/e2e/test_fleet.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.policy import accept
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import Rules
from ocspproxy.shared.keys import Names, entry_fields, millis
from ocspproxy.shared.scripts import PUT
from ocspproxy.shared.settings import SharedSettings
from tests.conftest import Proxy, eventually
from tests.pki import TestCA, now
from tests.redis_peer import RedisSentinel, RedisServer, fill_to_maxmemory
from tests.upstream import FakeUpstream, Reply

PREFIX = "ocspproxy"
NAMES = Names(PREFIX)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def client(redis: RedisServer) -> Iterator[redis_py.Redis]:
    with redis_py.Redis(port=redis.port) as c:
        yield c


@pytest.fixture
async def fleet(make_proxy: Any, redis: RedisServer, tmp_path: Path) -> AsyncIterator[Any]:
    """fleet(name, ca=, leaves=, **config overrides): an instance on the shared Redis, not started."""

    def member(name: str, *, ca: TestCA, leaves: list[Any], **overrides: Any) -> Proxy:
        shared = overrides.pop(
            "shared", SharedSettings(url=redis.url, lease_ttl=5.0, probe_interval=0.3, timeout=0.5)
        )
        proxy: Proxy = make_proxy(ca=ca, leaves=leaves, state_dir=tmp_path / name, shared=shared, **overrides)
        return proxy

    yield member


def served(proxy: Proxy, key: CertKey) -> bytes | None:
    assert proxy.app is not None
    staple = proxy.app.cache.servable(key)
    return None if staple is None else staple.der


def entry(client: redis_py.Redis, key: CertKey) -> bytes | None:
    der = client.hget(NAMES.entry(key), "der")
    assert der is None or isinstance(der, bytes)
    return der


def logged(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]


def events(capsys: pytest.CaptureFixture[str], name: str) -> list[dict[str, Any]]:
    return [e for e in logged(capsys) if e.get("event") == name]


async def refresh(proxy: Proxy, key: CertKey) -> None:
    """What the scheduler does once the staple is due (by then no instance has just asked)."""
    assert proxy.app is not None and proxy.config.shared is not None
    if proxy.config.shared.url is not None:  # (with Sentinel, the test deletes it on the master)
        with (
            redis_py.Redis.from_url(proxy.config.shared.url) as client,
            contextlib.suppress(redis_py.exceptions.RedisError),  # down, full: it goes on alone
        ):
            client.delete(NAMES.done(key))
    job = proxy.app.catalog.job_for(key)
    assert job is not None
    await proxy.app.refresher.refresh(key, job)


# --- one fetch, served everywhere ---------------------------------------------------------------


async def test_one_fetch_for_two_instances_and_the_other_serves_it(
    ca: TestCA, upstream: FakeUpstream, fleet: Any
) -> None:
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    a = await fleet("a", ca=ca, leaves=[leaf]).start()
    await eventually(lambda: served(a, key) is not None)
    b = await fleet("b", ca=ca, leaves=[leaf]).start()
    await eventually(lambda: served(b, key) == served(a, key), timeout=2)
    answer = await b.post(ca.request(leaf.serial))
    assert answer.status == "SUCCESSFUL" and answer.body == served(a, key)
    await asyncio.sleep(0.5)
    assert upstream.requests == [leaf.serial]


async def test_a_staple_accepted_anywhere_is_served_everywhere_within_a_second(
    ca: TestCA, upstream: FakeUpstream, fleet: Any
) -> None:
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    members = [await fleet(name, ca=ca, leaves=[leaf]).start() for name in "abc"]
    await eventually(lambda: all(served(m, key) is not None for m in members))
    newer = ca.respond(leaf.serial, this_update=now())
    upstream.behaviour = lambda serial: Reply(newer)
    await refresh(members[0], key)
    assert served(members[0], key) == newer
    await eventually(lambda: all(served(m, key) == newer for m in members), timeout=1.5)
    assert len(upstream.requests) == 2, "one fetch at start, one refresh: the fleet asked once each time"
    # Each instance keeps its own copy on disk too.
    await eventually(lambda: all((m.config.state_dir / f"{key}.der").read_bytes() == newer for m in members))


async def test_first_requests_for_a_certificate_nobody_has_ask_the_ca_once(
    ca: TestCA, upstream: FakeUpstream, fleet: Any
) -> None:
    """Three instances asked at once about a certificate none of them holds (not configured): one
    asks the CA (slowly), the others wait for its answer."""
    issuer_only = ca.leaf()
    members = [await fleet(name, ca=ca, leaves=[issuer_only], answer_budget=3.0).start() for name in "abc"]
    await eventually(lambda: len(upstream.requests) >= 1)
    await asyncio.sleep(0.3)
    upstream.requests.clear()
    serial = 0xC0FFEE
    upstream.behaviour = lambda s: Reply(ca.respond(s), delay=0.5)
    answers = await asyncio.gather(*(m.post(ca.request(serial)) for m in members))
    assert [a.status for a in answers] == ["SUCCESSFUL"] * 3
    assert {a.body for a in answers} == {answers[0].body}
    assert upstream.requests == [serial]


async def test_a_lease_whose_holder_died_expires_and_another_fetches(
    ca: TestCA, upstream: FakeUpstream, fleet: Any, client: redis_py.Redis
) -> None:
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    client.set(NAMES.lease(key), "a-holder-that-died", px=1500)
    a = await fleet("a", ca=ca, leaves=[leaf]).start()
    await asyncio.sleep(1.0)
    assert upstream.requests == [] and served(a, key) is None, "it waits while the lease is held"
    await eventually(lambda: served(a, key) is not None, timeout=5)
    assert upstream.requests == [leaf.serial]


# --- the write script keeps the accept policy ------------------------------------------------------


def put(client: redis_py.Redis, staple: Staple, *, at: dt.datetime, replace: str = "") -> int:
    args = [staple.der, *entry_fields(staple), millis(at), NAMES.channel, f"test {staple.key}", replace]
    return int(client.eval(PUT, 1, NAMES.entry(staple.key), *args))  # type: ignore[arg-type]


def test_the_write_script_keeps_the_accept_policy_in_any_order(ca: TestCA, client: redis_py.Redis) -> None:
    serial = 0x51
    key = ca.cert_id(serial).key
    t0 = now() - dt.timedelta(minutes=30)
    rules = Rules()
    candidates = [
        rules.validate(
            ca.respond(serial, status=status, this_update=t0 + dt.timedelta(minutes=m)),
            key=key,
            issuer=ca.cert,
            now=now(),
        )
        for status, m in [
            ("good", 0),
            ("good", 5),
            ("unknown", 10),
            ("revoked", 10),
            ("good", 10),
            ("good", 15),
        ]
    ]
    rng = random.Random(7)
    for _ in range(40):
        order = candidates[:]
        rng.shuffle(order)
        client.delete(NAMES.entry(key))
        held: Staple | None = None
        for staple in order:
            written = put(client, staple, at=now())
            stores = accept(held, staple, now()).stores
            assert bool(written) == stores, (staple.status, staple.this_update, held and held.status)
            if stores:
                held = staple
        assert entry(client, key) == held.der  # type: ignore[union-attr]
    # Nothing past its nextUpdate is written, and what is written expires at its nextUpdate.
    expired = rules.validate(
        ca.respond(serial, this_update=t0 + dt.timedelta(minutes=20)), key=key, issuer=ca.cert, now=now()
    )
    assert put(client, expired, at=expired.next_update + dt.timedelta(seconds=1)) == 0
    client.delete(NAMES.entry(key))
    assert put(client, expired, at=now()) == 1
    assert abs(client.pexpiretime(NAMES.entry(key)) - millis(expired.next_update)) <= 1


async def test_two_instances_writing_at_once_end_with_the_newer_staple(
    ca: TestCA, client: redis_py.Redis, redis: RedisServer
) -> None:
    """Many writers racing (threads with their own connections): whatever the order they reach
    Redis in, the newest staple is what stays."""
    serial = 0x52
    key = ca.cert_id(serial).key
    rules = Rules()
    staples = [
        rules.validate(
            ca.respond(serial, this_update=now() - dt.timedelta(minutes=m)),
            key=key,
            issuer=ca.cert,
            now=now(),
        )
        for m in range(12, 0, -1)
    ]
    for _ in range(5):
        client.delete(NAMES.entry(key))
        order = staples[:]
        random.shuffle(order)

        def write(staple: Staple) -> int:
            with redis_py.Redis(port=redis.port) as own:
                return put(own, staple, at=now())

        await asyncio.gather(*(asyncio.to_thread(write, s) for s in order))
        assert entry(client, key) == staples[-1].der


# --- Redis is not trusted --------------------------------------------------------------------------


def lie(client: redis_py.Redis, key: CertKey, der: bytes, *, announce: bool = True) -> None:
    """Write der under key with fields claiming it is the newest there is."""
    far = millis(now() + dt.timedelta(hours=2))
    client.delete(NAMES.entry(key))
    client.hset(NAMES.entry(key), mapping={"der": der, "tu": far, "pa": far, "st": "good", "nu": far})
    if announce:
        client.publish(NAMES.channel, f"intruder {key}")


@pytest.mark.parametrize("case", ["garbage", "forged", "expired", "older", "another certificate's"])
async def test_what_is_written_into_redis_is_never_served_stored_or_kept(
    case: str, ca: TestCA, upstream: FakeUpstream, fleet: Any, client: redis_py.Redis, tmp_path: Path
) -> None:
    leaf, other = ca.leaf(), ca.leaf()
    key = ca.cert_id(leaf.serial).key
    a = await fleet("a", ca=ca, leaves=[leaf, other]).start()
    await eventually(lambda: served(a, key) is not None)
    good = served(a, key)
    assert good is not None
    bad = {
        "garbage": b"\x30\x03\x0a\x01\x00 not a response",
        "forged": ca.respond(leaf.serial, signer="rogue", by_name=True, this_update=now()),
        "expired": ca.respond(
            leaf.serial, this_update=now() - dt.timedelta(hours=3), validity=dt.timedelta(hours=1)
        ),
        "older": ca.respond(leaf.serial, this_update=now() - dt.timedelta(minutes=50)),
        "another certificate's": ca.respond(other.serial, this_update=now()),
    }[case]
    lie(client, key, bad)
    # A running instance: keeps serving its own, and puts it back in Redis.
    await eventually(lambda: entry(client, key) == good, timeout=3)
    assert served(a, key) == good
    # A fresh instance reading Redis in bulk while the entry is bad again (not announced), the CA
    # down: it serves nothing bad, stores nothing bad, and the fleet repairs the entry.
    lie(client, key, bad, announce=False)
    upstream.behaviour = lambda serial: Reply(status=500)
    b = await fleet("b", ca=ca, leaves=[leaf, other]).start()
    answer = await b.post(ca.request(leaf.serial))
    # An older response is valid to an instance that holds nothing newer; the rest never is.
    acceptable = {good, bad} if case == "older" else {good}
    assert answer.status != "SUCCESSFUL" or answer.body in acceptable
    await eventually(lambda: entry(client, key) == good and served(b, key) == good, timeout=5)
    assert served(a, key) == good
    if case != "older":
        assert not any(p.read_bytes() == bad for p in (tmp_path / "b").glob("*.der")), "never stored"


# --- Redis troubles: every instance goes on alone, then the fleet converges -----------------------


async def test_redis_stopped_then_back_empty_the_fleet_goes_on_and_converges(
    ca: TestCA, upstream: FakeUpstream, fleet: Any, redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    a = await fleet("a", ca=ca, leaves=[leaf]).start()
    b = await fleet("b", ca=ca, leaves=[leaf]).start()
    await eventually(lambda: served(a, key) is not None and served(b, key) is not None)
    redis.stop()
    await asyncio.sleep(0.5)
    assert (await a.post(ca.request(leaf.serial))).status == "SUCCESSFUL"
    newer = ca.respond(leaf.serial, this_update=now())
    upstream.behaviour = lambda serial: Reply(newer)
    await refresh(a, key)
    assert served(a, key) == newer, "refreshes go on alone"
    redis.start()  # empty: nothing was saved
    with redis_py.Redis(port=redis.port) as client:
        await eventually(lambda: entry(client, key) == newer, timeout=8)
    await eventually(lambda: served(b, key) == newer, timeout=3)
    unreachable = events(capsys, "shared store unreachable; going on alone")
    assert 1 <= len(unreachable) <= 4, "logged once per change, per instance"


async def test_flushall_is_noticed_and_the_fleet_writes_its_staples_again(
    ca: TestCA, fleet: Any, client: redis_py.Redis, redis: RedisServer
) -> None:
    leaves = [ca.leaf() for _ in range(3)]
    keys = [ca.cert_id(leaf.serial).key for leaf in leaves]
    # Over the Unix socket, as on a host where Redis runs beside the instance.
    over_unix = SharedSettings(url=f"unix://{redis.socket}", lease_ttl=5.0, probe_interval=0.3, timeout=0.5)
    a = await fleet("a", ca=ca, leaves=leaves, shared=over_unix).start()
    await eventually(lambda: all(entry(client, k) is not None for k in keys))
    client.flushall()
    await eventually(lambda: all(entry(client, k) == served(a, k) for k in keys), timeout=5)


async def test_a_full_redis_is_logged_once_and_the_instance_goes_on_alone(
    ca: TestCA, upstream: FakeUpstream, fleet: Any, client: redis_py.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    a = await fleet("a", ca=ca, leaves=[leaf]).start()
    b = await fleet("b", ca=ca, leaves=[leaf]).start()
    await eventually(lambda: served(b, key) is not None)
    assert fill_to_maxmemory(client, 64 * 1024), "Redis refuses writes: it is full"
    for n in range(3):
        newer = ca.respond(leaf.serial, this_update=now() + dt.timedelta(seconds=n))
        upstream.behaviour = functools.partial(lambda der, serial: Reply(der), newer)
        await refresh(a, key)
        assert served(a, key) == newer
        assert (await a.post(ca.request(leaf.serial))).body == newer
        await asyncio.sleep(0.4)
    states = [e for e in logged(capsys) if str(e.get("event")).startswith("shared store")]
    full = [e for e in states if e["event"] == "shared store full (maxmemory); going on alone"]
    told = "\n".join(f"{e['timestamp']} {e['event']}" for e in states)
    assert 1 <= len(full) <= 2, f"once per change, per instance:\n{told}"
    client.config_set("maxmemory", 0)
    await eventually(lambda: served(b, key) == newer, timeout=5)
    assert entry(client, key) == newer


async def test_a_hanging_redis_never_holds_an_answer(
    ca: TestCA, upstream: FakeUpstream, fleet: Any, redis: RedisServer
) -> None:
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    a = await fleet("a", ca=ca, leaves=[leaf], answer_budget=1.0).start()
    await eventually(lambda: served(a, key) is not None)
    assert redis.popen is not None
    redis.popen.send_signal(19)  # SIGSTOP: connections stay open, nothing answers
    try:
        hit = await asyncio.wait_for(a.post(ca.request(leaf.serial)), 0.5)
        assert hit.body == served(a, key), "a hit never waits on Redis"
        miss = await asyncio.wait_for(a.post(ca.request(0xABCDEF)), 1.0 + 1.0)
        assert miss.http_status == 200, "a miss is answered within the answer budget"
    finally:
        redis.popen.send_signal(18)  # SIGCONT


# --- Redis Sentinel ---------------------------------------------------------------------------------


async def test_a_sentinel_failover_keeps_staples_served_and_the_fleet_converges_on_the_new_master(
    ca: TestCA, upstream: FakeUpstream, make_proxy: Any, tmp_path: Path
) -> None:
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica", replica_of=master.port)
    replica.start()
    sentinel = RedisSentinel(tmp_path / "sentinel", master=master.port)
    sentinel.start()
    try:
        await eventually(
            lambda: str(replica.port) in sentinel.cli("SENTINEL", "REPLICAS", sentinel.service), 15
        )
        shared = SharedSettings(
            sentinels=(("127.0.0.1", sentinel.port),),
            service=sentinel.service,
            lease_ttl=5.0,
            probe_interval=0.3,
            timeout=0.5,
        )
        leaf = ca.leaf()
        key = ca.cert_id(leaf.serial).key
        a = await make_proxy(ca=ca, leaves=[leaf], state_dir=tmp_path / "a", shared=shared).start()
        b = await make_proxy(ca=ca, leaves=[leaf], state_dir=tmp_path / "b", shared=shared).start()
        await eventually(lambda: served(a, key) is not None and served(b, key) == served(a, key))
        with redis_py.Redis(port=replica.port) as on_replica:
            await eventually(lambda: entry(on_replica, key) == served(a, key))

            # The master dies; the sentinel promotes the replica; the old master comes back
            # (empty) and is made a replica of the new one.
            master.stop()

            def promoted() -> bool:
                addr = sentinel.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel.service)
                return addr.split()[-1] == str(replica.port)

            assert (await a.post(ca.request(leaf.serial))).status == "SUCCESSFUL", "served meanwhile"
            await eventually(promoted, 20)
            master.start()
            assert (await b.post(ca.request(leaf.serial))).status == "SUCCESSFUL", "served throughout"
            newer = ca.respond(leaf.serial, this_update=now())
            upstream.behaviour = lambda serial: Reply(newer)
            assert a.app is not None and a.app.fleet is not None
            fleet_a = a.app.fleet
            await eventually(lambda: fleet_a.link.writable, 10)
            on_replica.delete(NAMES.done(key))
            await refresh(a, key)
            await eventually(lambda: entry(on_replica, key) == newer, 10)
            await eventually(lambda: served(b, key) == newer, 10)
        with redis_py.Redis(port=master.port) as old:
            await eventually(lambda: old.role()[0] == b"slave", 20)
            await eventually(lambda: entry(old, key) == newer, 10)
    finally:
        sentinel.cleanup()
        replica.cleanup()
        master.cleanup()


async def test_a_fresh_instance_whose_issuer_is_known_only_from_its_certificate_file_gets_it_too(
    ca: TestCA, upstream: FakeUpstream, fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fleet's staples are read before the certificate files (an instance with nothing stored
    serves them meanwhile); entries of an issuer known only from a certificate's chain are taken
    once the files are read."""
    leaf = ca.leaf()
    key = ca.cert_id(leaf.serial).key
    a = await fleet("a", ca=ca, leaves=[leaf]).start()
    await eventually(lambda: served(a, key) is not None)
    asked = len(upstream.requests)
    upstream.behaviour = lambda serial: Reply(status=500)
    (tmp_path / "b-certs").mkdir()
    chained, _ = ca.write(tmp_path / "b-certs", leaf, with_chain=True)
    b = Proxy(dataclasses.replace(a.config, certs=(str(chained),), issuers=(), state_dir=tmp_path / "b"))
    try:
        await b.start()
        await eventually(lambda: served(b, key) == served(a, key), timeout=3)
        assert len(upstream.requests) == asked, "from Redis, not the CA"
        lines = events(capsys, "fleet")
        assert lines[-1].get("after") == "certificates loaded" and lines[-1]["loaded"] == 1, lines
    finally:
        await b.stop()
