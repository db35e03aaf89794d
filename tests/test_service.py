"""The service end to end in-process: real HTTP both sides, a test CA, a fake upstream."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import eventually
from tests.pki import TestCA
from tests.upstream import FakeUpstream, Reply


async def test_prefetches_at_startup_and_serves_hits(ca: TestCA, upstream: FakeUpstream, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    await eventually(lambda: proxy.app.cache.servable(ca.cert_id(leaf.serial).key) is not None)
    assert upstream.requests == [leaf.serial]

    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.http_status == 200
    assert answer.status == "SUCCESSFUL" and answer.cert_status == "GOOD"
    assert answer.headers["Content-Type"] == "application/ocsp-response"
    assert "max-age=" in answer.headers["Cache-Control"]
    assert "public, no-transform, must-revalidate" in answer.headers["Cache-Control"]
    for header in ("Last-Modified", "Expires", "ETag", "Content-Length"):
        assert header in answer.headers
    assert upstream.requests == [leaf.serial], "a hit must not reach the CA"


async def test_get_and_post_return_identical_bytes(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    der = ca.request(leaf.serial)
    posted = await proxy.post(der)
    for prefix in ("/", "/ocsp/"):
        got = await proxy.get(der, prefix)
        assert got.body == posted.body
    assert posted.status == "SUCCESSFUL"


async def test_stored_bytes_are_what_the_ca_signed(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path: Path
):
    leaf = ca.leaf()
    signed = ca.respond(leaf.serial)
    upstream.behaviour = lambda serial: Reply(signed)
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.body == signed
    files = list((tmp_path / "state").glob("*.der"))
    assert len(files) == 1 and files[0].read_bytes() == signed
    text = subprocess.run(
        ["openssl", "ocsp", "-respin", str(files[0]), "-resp_text", "-noverify"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Cert Status: good" in text
    assert files[0].stat().st_mode & 0o077 == 0, "state files are private"


async def test_unknown_issuer_is_unauthorized_without_contacting_anyone(
    ca: TestCA, upstream: FakeUpstream, make_proxy
) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    stranger = TestCA(ocsp_url=upstream.url)
    answer = await proxy.post(stranger.request(12345))
    assert answer.http_status == 200 and answer.status == "UNAUTHORIZED"
    assert 12345 not in upstream.requests


async def test_malformed_requests_get_malformed_request(ca: TestCA, make_proxy) -> None:
    proxy = await make_proxy(ca=ca, leaves=[ca.leaf()]).start()
    for answer in (
        await proxy.post(b"not DER"),
        await proxy.post(b""),
        await proxy.get_raw("/!!notbase64!!"),
        await proxy.get_raw("/"),
    ):
        assert answer.status == "MALFORMED_REQUEST"
        assert answer.headers.get("Cache-Control") == "no-store"


async def test_sha256_certid_is_answered(ca: TestCA, upstream: FakeUpstream, make_proxy) -> None:
    leaf = ca.leaf()
    upstream.behaviour = lambda serial: Reply(ca.respond(serial, alg="sha256"))
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    answer = await proxy.post(ca.request(leaf.serial, alg="sha256"))
    assert answer.status == "SUCCESSFUL" and answer.cert_status == "GOOD"
    assert answer.ocsp.hash_algorithm.name == "sha256"


async def test_nonce_in_request_is_ignored(ca: TestCA, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    plain = await proxy.post(ca.request(leaf.serial))
    with_nonce = await proxy.post(ca.request(leaf.serial, nonce=True))
    assert with_nonce.body == plain.body


async def test_restart_during_ca_outage_keeps_serving(ca: TestCA, upstream: FakeUpstream, make_proxy) -> None:
    leaf = ca.leaf()
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    first = await proxy.post(ca.request(leaf.serial))
    assert first.cert_status == "GOOD"
    upstream.behaviour = lambda serial: Reply(status=503)
    await proxy.restart()
    again = await proxy.post(ca.request(leaf.serial))
    assert again.body == first.body


async def test_nothing_servable_is_try_later(ca: TestCA, upstream: FakeUpstream, make_proxy) -> None:
    leaf = ca.leaf()
    upstream.behaviour = lambda serial: Reply(status=500)
    proxy = await make_proxy(ca=ca, leaves=[leaf]).start()
    answer = await proxy.post(ca.request(leaf.serial))
    assert answer.http_status == 200 and answer.status == "TRY_LATER"
    assert answer.headers.get("Cache-Control") == "no-store"
