"""The main process <-> worker messages, and the worker's copy of what it may answer."""

from __future__ import annotations

import dataclasses
import datetime as dt

from ocspproxy.core.ocsp import CertId, CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.core.validate import validate_response
from ocspproxy.serve.answer import Answer, Outcome
from ocspproxy.serve.hits import HitTable, IssuerRow
from ocspproxy.serve.limits import Limits
from ocspproxy.workers.child import Mirror, WorkerSettings
from ocspproxy.workers.protocol import (
    CHUNK,
    decode_drops,
    decode_handoff,
    decode_issuers,
    decode_staples,
    encode_drops,
    encode_handoff,
    encode_issuers,
    encode_staples,
)
from tests.pki import TestCA, now

SKEW = dt.timedelta(seconds=300)


def _staple(ca: TestCA, serial: int, **kwargs: object) -> Staple:
    der = ca.respond(serial, **kwargs)  # type: ignore[arg-type]
    return validate_response(der, key=ca.cert_id(serial).key, issuer=ca.cert, now=now(), skew=SKEW)


def _rows(ca: TestCA) -> list[IssuerRow]:
    cid = ca.cert_id(1)
    return [IssuerRow("sha1", cid.key.issuer_key_hash, cid.issuer_name_hash, "CN=Test Issuing CA")]


def test_staples_round_trip_field_for_field() -> None:
    ca = TestCA()
    staples = [_staple(ca, 1), _staple(ca, 2, status="revoked"), _staple(ca, 3, status="unknown")]
    messages = list(encode_staples(staples))
    assert len(messages) == 1 and messages[0][:1] == b"S"
    back = decode_staples(messages[0][1:])
    assert back == [
        Staple(
            key=s.key,
            der=s.der,
            status=s.status,
            this_update=s.this_update,
            next_update=s.next_update,
            produced_at=s.produced_at,
            revocation_time=s.revocation_time,
        )
        for s in staples
    ]
    assert back[1].revocation_time is not None and back[1].revocation_time == staples[1].revocation_time
    assert all(b.etag == s.etag for b, s in zip(back, staples, strict=True))


def test_many_staples_are_split_into_messages_below_the_chunk_size() -> None:
    ca = TestCA()
    one = _staple(ca, 1)
    many = [dataclasses.replace(one, key=CertKey("sha1", b"\x01" * 20, n)) for n in range(500)]
    messages = list(encode_staples(many))
    assert len(messages) > 1
    assert all(len(m) <= CHUNK + 2048 for m in messages)
    assert [s.key.serial for m in messages for s in decode_staples(m[1:])] == list(range(500))


def test_issuers_and_drops_round_trip() -> None:
    rows = _rows(TestCA())
    message = encode_issuers(rows)
    assert message[:1] == b"I" and decode_issuers(message[1:]) == rows
    keys = [CertKey("sha256", b"\xaa" * 32, 0x1234), CertKey("sha1", b"\xbb" * 20, 1)]
    (drop,) = encode_drops(keys)
    assert drop[:1] == b"D" and decode_drops(drop[1:]) == keys


def test_a_large_handoff_travels_in_order_in_several_parts() -> None:
    buffer = bytes(range(256)) * 700  # 179,200 bytes
    first, *rest = encode_handoff(buffer)
    total, part = decode_handoff(first[1:])
    assert first[:1] == b"H" and total == len(buffer)
    assert all(m[:1] == b"C" for m in rest) and len(rest) == 3
    assert part + b"".join(m[1:] for m in rest) == buffer
    small = encode_handoff(b"POST / HTTP/1.0\r\n\r\n")
    assert len(small) == 1 and decode_handoff(small[0][1:]) == (19, b"POST / HTTP/1.0\r\n\r\n")


def hit(mirror: Mirror, cert_id: CertId, at: dt.datetime) -> Answer | None:
    """What the worker answers at time at: the one hit table, over its mirror."""
    mirror.clock = lambda: at
    return HitTable(mirror, mirror).hit(cert_id)


def test_mirror_answers_only_like_the_main_process() -> None:
    ca = TestCA()
    mirror = Mirror()
    staple = _staple(ca, 7)
    mirror.apply(next(encode_staples([staple])))
    cid = ca.cert_id(7)
    assert hit(mirror, cid, now()) is None  # no issuers yet: the main process would say unauthorized
    mirror.apply(encode_issuers(_rows(ca)))
    answer = hit(mirror, cid, now())
    assert answer is not None and answer.outcome is Outcome.HIT and answer.staple is not None
    assert answer.staple.der == staple.der and answer.issuer == "CN=Test Issuing CA"
    # the issuer name hash must match too, as in Inventory.issuer_for
    assert hit(mirror, CertId(cid.key, b"\x00" * 20), now()) is None
    assert hit(mirror, ca.cert_id(8), now()) is None  # a miss
    # never past nextUpdate, and forgotten then
    assert hit(mirror, cid, staple.next_update) is None
    assert cid.key not in mirror.staples
    # a newer staple replaces, a drop removes, a new issuer table removes the issuer
    mirror.apply(next(encode_staples([staple])))
    revoked = _staple(ca, 7, status="revoked")
    mirror.apply(next(encode_staples([revoked])))
    answer = hit(mirror, cid, now())
    assert answer is not None and answer.staple is not None and answer.staple.der == revoked.der
    mirror.apply(next(encode_drops([cid.key])))
    assert hit(mirror, cid, now()) is None
    mirror.apply(next(encode_staples([staple])))
    mirror.apply(encode_issuers([]))
    assert hit(mirror, cid, now()) is None


def test_worker_settings_round_trip() -> None:
    settings = WorkerSettings(
        index=3,
        listen_fds=(7, 9),
        channel_fd=11,
        limits=Limits(max_request_bytes=2048, max_connections=10, request_timeout=1.5, connection_lifetime=9),
        log_level="warning",
        log_format="json",
        shutdown_timeout=2.0,
    )
    assert WorkerSettings.from_json(settings.to_json()) == settings


def test_mirror_sweep_forgets_only_what_expired() -> None:
    ca = TestCA()
    mirror = Mirror()
    short = _staple(ca, 1, validity=dt.timedelta(minutes=5))
    long = _staple(ca, 2)
    mirror.apply(next(encode_staples([short, long])))
    assert mirror.sweep(now()) == 0 and len(mirror.staples) == 2
    assert mirror.sweep(short.next_update) == 1
    assert list(mirror.staples) == [long.key]
