"""Every way the CA's responder can misbehave, end to end: what ocspproxy stores, and what clients get.

Each scenario is checked twice where it applies:

- warm: a good staple is stored and served; the CA then misbehaves on a refetch (through
  ``Staples.refresh``, the single write path the scheduler and requests share). The good staple must stay
  in memory, on disk and on the wire byte for byte.
- cold: a client asks for a serial of a known issuer that was never fetched; the proxy fetches it on
  demand. Nothing may be stored for it and the client gets tryLater (``no-store``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from ocspproxy.app import App
from ocspproxy.cache.door import Ingested, Result
from ocspproxy.cache.memory import Cache
from ocspproxy.cache.refresher import Refresher
from ocspproxy.core.ocsp import CertKey
from ocspproxy.store.directory import INDEX_NAME, SNAPSHOT_NAME
from ocspproxy.store.files import file_name
from ocspproxy.upstream.base import Job
from tests.conftest import Answer, Proxy, ProxyFactory, eventually
from tests.pki import Leaf, TestCA, error_body, now
from tests.upstream import FakeUpstream, Reply

TRY_LATER = error_body(ocsp.OCSPResponseStatus.TRY_LATER)
Behaviour = Callable[[int], Reply]


def tamper_signature(der: bytes) -> bytes:
    """Flip one bit in the last byte of the signature (still well-formed DER, no longer valid)."""
    signature = ocsp.load_der_ocsp_response(der).signature
    at = der.rindex(signature) + len(signature) - 1
    return der[:at] + bytes([der[at] ^ 0x01]) + der[at + 1 :]


def stored(state: Path) -> dict[str, bytes]:
    """Every file in the state directory (temporary files included: none may be left behind) but
    the certificate index and the staples snapshot, which hold no staple of their own."""
    if not state.exists():
        return {}
    return {
        p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.name not in (INDEX_NAME, SNAPSHOT_NAME)
    }


def app_of(proxy: Proxy) -> App:
    assert proxy.app is not None
    return proxy.app


def assert_try_later(answer: Answer) -> None:
    assert answer.http_status == 200
    assert answer.status == "TRY_LATER"
    assert answer.body == TRY_LATER
    assert answer.headers["Cache-Control"] == "no-store"


async def assert_serves(proxy: Proxy, ca: TestCA, serial: int, der: bytes, cert_status: str) -> None:
    """Both GET and POST return exactly these bytes."""
    request = ca.request(serial)
    for answer in (await proxy.post(request), await proxy.get(request)):
        assert answer.http_status == 200
        assert answer.status == "SUCCESSFUL" and answer.cert_status == cert_status
        assert answer.body == der


@dataclass
class Warm:
    """A proxy with one configured leaf whose good staple is stored and served."""

    proxy: Proxy
    ca: TestCA
    upstream: FakeUpstream
    leaf: Leaf
    good: bytes
    state: Path

    @property
    def key(self) -> CertKey:
        return self.ca.cert_id(self.leaf.serial).key

    @property
    def cache(self) -> Cache:
        return app_of(self.proxy).cache

    @property
    def refresher(self) -> Refresher:
        return app_of(self.proxy).refresher

    async def refetch(self) -> Ingested:
        """What the scheduler does when the staple is due."""
        job = Job(
            issuer_cert=self.ca.cert,
            name_hash=self.ca.cert_id(self.leaf.serial).issuer_name_hash,
            url=self.upstream.url,
        )
        return await self.refresher.refresh(self.key, job)

    async def assert_holds(self, der: bytes, cert_status: str = "GOOD") -> None:
        """der is the staple in memory, the only file on disk, and what clients get."""
        current, servable = self.cache.current(self.key), self.cache.servable(self.key)
        assert current is not None and current.der == der
        assert servable is not None and servable.der == der
        assert stored(self.state) == {file_name(self.key): der}
        await assert_serves(self.proxy, self.ca, self.leaf.serial, der, cert_status)

    async def assert_good_kept(self) -> None:
        await self.assert_holds(self.good)

    async def assert_cold_refused(self, *, reaches_upstream: bool = True) -> None:
        """A never-fetched serial of the same issuer: asked on demand, refused, nothing stored."""
        serial = x509.random_serial_number()
        key = self.ca.cert_id(serial).key
        before = stored(self.state)
        assert_try_later(await self.proxy.post(self.ca.request(serial)))
        assert self.upstream.requests.count(serial) == (1 if reaches_upstream else 0)
        assert self.cache.current(key) is None
        assert self.cache.servable(key) is None
        assert stored(self.state) == before


async def warm(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path, **overrides: object
) -> Warm:
    leaf = ca.leaf()
    good = ca.respond(leaf.serial)
    upstream.behaviour = lambda serial: Reply(good if serial == leaf.serial else ca.respond(serial))
    proxy = await make_proxy(ca=ca, leaves=[leaf], **overrides).start()
    w = Warm(proxy, ca, upstream, leaf, good, tmp_path / "state")
    await eventually(lambda: w.cache.servable(w.key) is not None)
    # Settle: this joins the start-up pre-fetch if it is still writing (or asks again and gets the same
    # bytes), so nothing is in flight when a test switches the upstream's behaviour.
    assert (await w.refetch()).staple is not None
    await w.assert_good_kept()
    return w


async def refused_after_good(
    w: Warm, behaviour: Behaviour, result: Result, reason: str | None = None
) -> Ingested:
    """The CA now answers with behaviour: the refetch is refused and the good staple stays, everywhere."""
    w.upstream.behaviour = behaviour
    asked = len(w.upstream.requests)
    outcome = await w.refetch()
    assert outcome.result is result, outcome.reason
    if reason is not None:
        assert reason in outcome.reason
    assert w.upstream.requests[asked:] == [w.leaf.serial]
    assert outcome.staple is not None and outcome.staple.der == w.good
    await w.assert_good_kept()
    await w.assert_cold_refused()
    return outcome


async def rejected(
    ca: TestCA,
    upstream: FakeUpstream,
    make_proxy: ProxyFactory,
    tmp_path: Path,
    respond: Callable[[int], bytes],
    reason: str,
) -> None:
    """A signed-looking answer that validation must reject."""
    w = await warm(ca, upstream, make_proxy, tmp_path)
    await refused_after_good(w, lambda serial: Reply(respond(serial)), Result.REJECTED, reason)


# --- signatures and signers -------------------------------------------------------------------------


async def test_bad_signature(ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path):
    def respond(serial: int) -> bytes:
        return tamper_signature(ca.respond(serial, this_update=now()))

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "bad signature")


async def test_rogue_signer_named_like_the_issuer(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now(), signer="rogue", by_name=True)

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "issuer: bad signature")


@pytest.mark.parametrize("by_name", [False, True], ids=["by-key-hash", "by-name"])
async def test_rogue_signer_with_its_certificate_included(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path, by_name: bool
):
    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now(), signer="rogue-included", by_name=by_name)

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "not issued by the issuer")


async def test_responder_without_ocsp_signing_eku(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now(), signer="undelegated")

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "lacks id-kp-OCSPSigning")


async def test_signed_by_the_root_instead_of_the_issuer(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now(), signer="root")

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "neither the issuer nor")


async def test_delegated_responder_is_accepted(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    delegated = ca.respond(w.leaf.serial, this_update=now(), signer="delegate")
    stranger = x509.random_serial_number()
    stranger_der = ca.respond(stranger, signer="delegate")
    upstream.behaviour = lambda serial: Reply(delegated if serial == w.leaf.serial else stranger_der)

    outcome = await w.refetch()
    assert outcome.result is Result.STORED, outcome.reason
    await w.assert_holds(delegated)

    # Fetched on demand: stored and served as the CA's responder signed it.
    await assert_serves(w.proxy, ca, stranger, stranger_der, "GOOD")
    assert upstream.requests.count(stranger) == 1
    stranger_key = ca.cert_id(stranger).key
    assert stored(w.state) == {file_name(w.key): delegated, file_name(stranger_key): stranger_der}


# --- what the response is about ---------------------------------------------------------------------


async def test_certid_for_another_serial(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now(), serial_in_response=serial + 1)

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "CertID mismatch")


async def test_certid_with_another_issuers_hashes(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    other = TestCA()

    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now(), issuer_for_certid=other.cert)

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "CertID mismatch")


# --- time -------------------------------------------------------------------------------------------


async def test_no_next_update_is_served_for_a_bounded_time(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    """`openssl ocsp` without -ndays: no nextUpdate. Stored and served (mod_ssl staples it too), for
    validity_without_next_update after thisUpdate; Expires and max-age follow that bound."""
    w = await warm(ca, upstream, make_proxy, tmp_path, validity_without_next_update=600.0)
    this_update = now()
    open_ended = ca.respond(w.leaf.serial, this_update=this_update, validity=None)
    upstream.behaviour = lambda serial: Reply(open_ended)
    outcome = await w.refetch()
    assert outcome.result is Result.STORED, outcome.reason
    await w.assert_holds(open_ended)
    held = w.cache.servable(w.key)
    assert held is not None and held.next_update == this_update + dt.timedelta(seconds=600)
    answer = await w.proxy.post(ca.request(w.leaf.serial))
    assert answer.headers["Expires"] == format_datetime(this_update + dt.timedelta(seconds=600), usegmt=True)
    max_age = int(answer.headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert 590 <= max_age <= 600


async def test_this_update_beyond_the_skew_in_the_future(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now() + dt.timedelta(seconds=600))

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "in the future")


async def test_this_update_within_the_skew_is_accepted(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    ahead = now() + dt.timedelta(seconds=40)  # a CA clock 40 s fast; skew is 60 s
    fast = ca.respond(w.leaf.serial, this_update=ahead)
    stranger = x509.random_serial_number()
    stranger_der = ca.respond(stranger, this_update=ahead)
    upstream.behaviour = lambda serial: Reply(fast if serial == w.leaf.serial else stranger_der)

    outcome = await w.refetch()
    assert outcome.result is Result.STORED, outcome.reason
    await w.assert_holds(fast)

    await assert_serves(w.proxy, ca, stranger, stranger_der, "GOOD")
    assert stored(w.state)[file_name(ca.cert_id(stranger).key)] == stranger_der


async def test_already_expired(ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path):
    def respond(serial: int) -> bytes:
        return ca.respond(serial, this_update=now() - dt.timedelta(hours=2), validity=dt.timedelta(hours=1))

    await rejected(ca, upstream, make_proxy, tmp_path, respond, "expired")


async def test_older_response_after_a_newer_one(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path)  # the good staple's thisUpdate is a minute ago
    older = ca.respond(w.leaf.serial, this_update=now() - dt.timedelta(minutes=10))
    await refused_after_good(w, lambda serial: Reply(older), Result.KEPT, "older")


# --- status changes ---------------------------------------------------------------------------------


async def test_unknown_after_good_keeps_good(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    unknown = ca.respond(w.leaf.serial, status="unknown", this_update=now())
    upstream.behaviour = lambda serial: Reply(unknown)
    outcome = await w.refetch()
    assert outcome.result is Result.KEPT, outcome.reason
    assert outcome.staple is not None and outcome.staple.der == w.good
    await w.assert_good_kept()


async def test_revoked_after_good_replaces_at_once(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    revoked = ca.respond(w.leaf.serial, status="revoked", this_update=now())
    upstream.behaviour = lambda serial: Reply(revoked)
    outcome = await w.refetch()
    assert outcome.result is Result.REVOKED, outcome.reason
    assert outcome.staple is not None and outcome.staple.der == revoked
    await w.assert_holds(revoked, "REVOKED")


# --- error answers and broken transport -------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        ocsp.OCSPResponseStatus.TRY_LATER,
        ocsp.OCSPResponseStatus.INTERNAL_ERROR,
        ocsp.OCSPResponseStatus.UNAUTHORIZED,
    ],
    ids=lambda s: s.name,
)
async def test_error_response_from_the_ca(
    ca: TestCA,
    upstream: FakeUpstream,
    make_proxy: ProxyFactory,
    tmp_path: Path,
    status: ocsp.OCSPResponseStatus,
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    body = error_body(status)
    await refused_after_good(w, lambda serial: Reply(body), Result.REJECTED, status.name)


async def test_garbage_bytes(ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    garbage = b"<html><body>Service Unavailable</body></html>"
    await refused_after_good(w, lambda serial: Reply(garbage), Result.REJECTED, "not an OCSP response")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_body(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path, chunked: bool
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    cap = w.proxy.config.upstream.max_response_bytes
    assert cap == 64 * 1024

    def behaviour(serial: int) -> Reply:
        signed = ca.respond(serial, this_update=now())
        return Reply(signed + b"\x00" * (cap + 1 - len(signed)), chunked=chunked)

    await refused_after_good(w, behaviour, Result.FAILED, "exceeds")


async def test_connection_reset(ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    await refused_after_good(w, lambda serial: Reply(reset=True), Result.FAILED)


async def test_http_500(ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path):
    w = await warm(ca, upstream, make_proxy, tmp_path)

    def behaviour(serial: int) -> Reply:
        # A valid response behind an error status is still not an answer.
        return Reply(ca.respond(serial, this_update=now()), status=500)

    await refused_after_good(w, behaviour, Result.FAILED, "HTTP 500")


@pytest.mark.parametrize("status", [302, 307])
async def test_redirect_is_not_followed(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path, status: int
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    elsewhere = FakeUpstream()
    await elsewhere.start()
    try:
        # Would hand out perfectly valid, newer responses: only the redirect itself keeps them out.
        elsewhere.behaviour = lambda serial: Reply(ca.respond(serial, this_update=now()))
        headers = {"Location": elsewhere.url, "Content-Type": "text/plain"}
        await refused_after_good(
            w, lambda serial: Reply(status=status, headers=headers), Result.FAILED, f"HTTP {status}"
        )
        assert elsewhere.requests == [], "the redirect target must never be contacted"
    finally:
        await elsewhere.stop()


async def test_slow_upstream_beyond_the_answer_budget(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    budget, delay = 0.2, 0.6
    w = await warm(ca, upstream, make_proxy, tmp_path, answer_budget=budget)
    stranger = x509.random_serial_number()
    stranger_key = ca.cert_id(stranger).key
    stranger_der = ca.respond(stranger)
    newer = ca.respond(w.leaf.serial, this_update=now())
    upstream.behaviour = lambda serial: Reply(newer if serial == w.leaf.serial else stranger_der, delay=delay)
    loop = asyncio.get_running_loop()

    # A due refetch of the configured leaf is slow: clients keep getting the stored staple at once.
    refetch = asyncio.create_task(w.refetch())
    started = loop.time()
    await assert_serves(w.proxy, ca, w.leaf.serial, w.good, "GOOD")
    assert loop.time() - started < budget

    # A never-fetched serial: tryLater within the budget, not after the upstream's delay.
    started = loop.time()
    answer = await w.proxy.post(ca.request(stranger))
    assert loop.time() - started < delay - 0.1
    assert_try_later(answer)
    assert w.cache.current(stranger_key) is None
    assert file_name(stranger_key) not in stored(w.state)

    # The fetch goes on in the background; then the staple is stored and served.
    await eventually(lambda: stored(w.state).get(file_name(stranger_key)) == stranger_der, timeout=3)
    await assert_serves(w.proxy, ca, stranger, stranger_der, "GOOD")
    assert upstream.requests.count(stranger) == 1

    assert (await refetch).result is Result.STORED
    assert stored(w.state) == {file_name(w.key): newer, file_name(stranger_key): stranger_der}
    await assert_serves(w.proxy, ca, w.leaf.serial, newer, "GOOD")


async def test_ca_outage_keeps_serving_across_restart(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    await upstream.go_down()  # connections refused from now on

    outcome = await w.refetch()
    assert outcome.result is Result.FAILED, outcome.reason
    assert outcome.staple is not None and outcome.staple.der == w.good
    await w.assert_good_kept()
    await w.assert_cold_refused(reaches_upstream=False)

    await w.proxy.restart()  # loads the staple from disk; the CA is still down
    await w.assert_good_kept()
    outcome = await w.refetch()
    assert outcome.result is Result.FAILED, outcome.reason
    await w.assert_good_kept()
    await w.assert_cold_refused(reaches_upstream=False)


# --- how often the CA is asked ----------------------------------------------------------------------


async def test_concurrent_requests_for_one_uncached_serial_make_one_upstream_request(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path)
    stranger = x509.random_serial_number()
    stranger_der = ca.respond(stranger)
    upstream.behaviour = lambda serial: Reply(stranger_der, delay=0.3)
    request = ca.request(stranger)

    answers = await asyncio.gather(
        *(w.proxy.post(request) for _ in range(15)), *(w.proxy.get(request) for _ in range(15))
    )
    assert {a.body for a in answers} == {stranger_der}
    assert upstream.requests.count(stranger) == 1
    assert stored(w.state) == {file_name(w.key): w.good, file_name(ca.cert_id(stranger).key): stranger_der}


async def test_failing_upstream_is_not_asked_again_within_negative_ttl(
    ca: TestCA, upstream: FakeUpstream, make_proxy: ProxyFactory, tmp_path: Path
):
    w = await warm(ca, upstream, make_proxy, tmp_path, negative_ttl=30)
    stranger = x509.random_serial_number()
    stranger_key = ca.cert_id(stranger).key
    upstream.behaviour = lambda serial: Reply(status=500)

    for _ in range(5):
        assert_try_later(await w.proxy.post(ca.request(stranger)))
    assert upstream.requests.count(stranger) == 1
    assert w.refresher.failing(stranger_key) is not None
    assert w.cache.current(stranger_key) is None

    # Even once the CA is back, the verdict stands until negative_ttl has passed.
    upstream.behaviour = lambda serial: Reply(ca.respond(serial))
    assert_try_later(await w.proxy.get(ca.request(stranger)))
    assert upstream.requests.count(stranger) == 1
    assert stored(w.state) == {file_name(w.key): w.good}

    # A failed refetch of a stored staple marks it failing too, yet it is still served from memory.
    upstream.behaviour = lambda serial: Reply(status=500)
    assert (await w.refetch()).result is Result.FAILED
    assert w.refresher.failing(w.key) is not None
    await w.assert_good_kept()

    # The negative cache is per certificate: another serial is still fetched.
    other = x509.random_serial_number()
    other_der = ca.respond(other)
    upstream.behaviour = lambda serial: Reply(other_der)
    await assert_serves(w.proxy, ca, other, other_der, "GOOD")
    assert upstream.requests.count(other) == 1
    assert stored(w.state) == {file_name(w.key): w.good, file_name(ca.cert_id(other).key): other_der}
