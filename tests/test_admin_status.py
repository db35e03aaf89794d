"""The admin listener's pure parts: verdicts with an injected clock, their order and exit codes, the
classes of fetch results, the admin address, the request counters and their message."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from ocspproxy.admin.address import AdminAddress, parse_admin
from ocspproxy.admin.history import fetch_class
from ocspproxy.admin.status import Row, Verdict, exit_code, judge, orphan_row, sort_rows, span
from ocspproxy.config import ConfigError, load_config
from ocspproxy.core.ocsp import CertKey
from ocspproxy.core.staple import CertStatus, Staple
from ocspproxy.serve.tally import LATENCY_BUCKETS, Tally, TallySnapshot
from ocspproxy.workers.protocol import decode_tally, encode_tally

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
KEY = CertKey(alg="sha1", issuer_key_hash=b"\x01" * 20, serial=0x1234)


def staple(
    left: dt.timedelta, *, validity: dt.timedelta = dt.timedelta(days=7), status: str = "good"
) -> Staple:
    return Staple(
        key=KEY,
        der=b"",
        status=CertStatus(status),
        this_update=NOW + left - validity,
        next_update=NOW + left,
        produced_at=NOW + left - validity,
        revocation_time=NOW - dt.timedelta(days=1) if status == "revoked" else None,
    )


def verdict(
    s: Staple | None, failures: int = 0, url: str | None = "http://ca/", **kw: float
) -> tuple[str, Verdict]:
    status, v, _why = judge(
        url=url,
        staple=s,
        failures=failures,
        error="HTTP 500" if failures else None,
        now=NOW,
        critical_margin=kw.get("critical_margin", 86400.0),
        refresh_margin=kw.get("refresh_margin", 0.2),
    )
    return status, v


def test_a_good_staple_with_time_left_is_ok() -> None:
    assert verdict(staple(dt.timedelta(days=3))) == ("good", Verdict.OK)


def test_a_failing_refresh_with_time_left_is_a_warning() -> None:
    assert verdict(staple(dt.timedelta(days=3)), failures=2) == ("good", Verdict.WARNING)


def test_a_staple_within_the_margin_is_critical_failing_or_not() -> None:
    assert verdict(staple(dt.timedelta(hours=23))) == ("good", Verdict.CRITICAL)
    assert verdict(staple(dt.timedelta(hours=23)), failures=5) == ("good", Verdict.CRITICAL)
    assert verdict(staple(dt.timedelta(hours=25)), failures=5) == ("good", Verdict.WARNING)


def test_the_margin_is_at_most_the_last_fifth_of_the_validity() -> None:
    """A one-minute test response is not critical all its life: 12 s of its 60 s are."""
    minute = dt.timedelta(minutes=1)
    assert verdict(staple(dt.timedelta(seconds=13), validity=minute)) == ("good", Verdict.OK)
    assert verdict(staple(dt.timedelta(seconds=11), validity=minute)) == ("good", Verdict.CRITICAL)
    assert verdict(staple(dt.timedelta(hours=2)), critical_margin=3 * 3600) == ("good", Verdict.CRITICAL)


def test_nothing_to_serve_revoked_and_unknown_are_critical() -> None:
    assert verdict(None) == ("missing", Verdict.CRITICAL)
    assert verdict(staple(-dt.timedelta(seconds=1))) == ("expired", Verdict.CRITICAL)
    assert verdict(staple(dt.timedelta(days=3), status="revoked")) == ("revoked", Verdict.CRITICAL)
    assert verdict(staple(dt.timedelta(days=3), status="unknown")) == ("unknown", Verdict.CRITICAL)


def test_no_ocsp_url_is_none_with_why() -> None:
    status, v, why = judge(
        url=None, staple=None, failures=0, error=None, now=NOW, critical_margin=1, refresh_margin=0.2
    )
    assert (status, v) == ("none", Verdict.NONE) and "no OCSP URL" in why
    assert orphan_row("/a.pem", None, "issuer not found").verdict is Verdict.NONE


def test_rows_sort_by_urgency_then_expiry_and_exit_with_the_worst() -> None:
    def row(name: str, v: Verdict, hours: float | None) -> Row:
        when = NOW + dt.timedelta(hours=hours) if hours is not None else None
        return Row(
            files=(name,), subject=None, serial=None, issuer=None, ocsp_url=None, status="good",
            next_update=when, verdict=v, why="",
        )  # fmt: skip

    rows = [
        row("ok-late", Verdict.OK, 50),
        row("none", Verdict.NONE, None),
        row("ok-soon", Verdict.OK, 30),
        row("warn", Verdict.WARNING, 40),
        row("crit", Verdict.CRITICAL, 1),
    ]
    assert [r.files[0] for r in sort_rows(rows)] == ["crit", "warn", "none", "ok-soon", "ok-late"]
    assert exit_code(rows) == 2
    assert exit_code([r for r in rows if r.verdict is not Verdict.CRITICAL]) == 1
    assert exit_code([r for r in rows if r.verdict in (Verdict.OK, Verdict.NONE)]) == 0
    assert exit_code([]) == 0
    back = Row.from_json(rows[3].to_json())
    assert back == rows[3]


def test_span_reads_like_a_person() -> None:
    assert [span(s) for s in (5, 600, 3 * 3600 + 300, 2 * 86400 + 7200)] == [
        "5 s",
        "10 min",
        "3 h 5 min",
        "2 d 2 h",
    ]


@pytest.mark.parametrize(
    ("result", "reason", "labels"),
    [
        ("stored", "newer", ("ok", "stored")),
        ("same", "identical", ("ok", "same")),
        ("failed", "timed out", ("timeout", "timeout")),
        ("failed", "HTTP 503", ("http_error", "503")),
        ("failed", "response of 99999 bytes exceeds 65536", ("too_large", "too_large")),
        ("failed", "ClientConnectorError: Cannot connect to host", ("connection_error", "connection_error")),
        ("rejected", "responder answered TRY_LATER", ("invalid", "error_status")),
        ("rejected", "expired: nextUpdate 2026-01-01 has passed", ("invalid", "expired")),
        (
            "rejected",
            "no SingleResponse for the requested certificate (CertID mismatch)",
            ("invalid", "certid"),
        ),
        ("rejected", "signer is neither the issuer nor a certificate in the response", ("invalid", "signer")),
        ("rejected", "responder certificate lacks id-kp-OCSPSigning", ("invalid", "signer")),
        ("rejected", "not an OCSP response: garbage", ("invalid", "malformed")),
        ("rejected", "thisUpdate is 2 h in the future", ("invalid", "times")),
        ("rejected", "something new", ("invalid", "other")),
    ],
)
def test_fetch_results_fold_into_few_classes(result: str, reason: str, labels: tuple[str, str]) -> None:
    assert fetch_class(result, reason) == labels


def test_an_answer_taken_from_the_fleet_and_a_fetch_held_are_counted_apart_from_the_cas() -> None:
    assert fetch_class("stored", "nothing servable stored", shared=True) == ("shared", "stored")
    assert fetch_class("held", "not asked: http://ca:80 failed 5 times in a row") == ("held", "held")


def test_admin_address_forms() -> None:
    assert parse_admin("") is None
    assert parse_admin("127.0.0.1:2561") == AdminAddress("127.0.0.1", 2561)
    assert parse_admin("http://[::1]:9") == AdminAddress("::1", 9)
    assert parse_admin("unix:/run/ocspproxy/admin.sock") == AdminAddress(
        path=Path("/run/ocspproxy/admin.sock")
    )
    for bad in ("unix:relative", "host.example:1", "127.0.0.1", "https://127.0.0.1:1"):
        with pytest.raises(ValueError):
            parse_admin(bad)
    assert AdminAddress("0.0.0.0", 2560).overlaps("127.0.0.1", 2560)
    assert not AdminAddress("127.0.0.1", 0).overlaps("127.0.0.1", 0)


def test_the_configuration_refuses_the_ocsp_port_for_the_admin_listener(tmp_path) -> None:
    with pytest.raises(ConfigError, match="admin_listen"):
        load_config(
            None, {"state_dir": tmp_path, "listen": "127.0.0.1:2560", "admin_listen": "127.0.0.1:2560"}
        )
    toml = tmp_path / "c.toml"
    toml.write_text('admin_listen = ""\n[admin]\ncritical_margin = 600\n')
    config = load_config(toml, {"state_dir": tmp_path})
    assert config.admin_listen is None and config.critical_margin == 600
    assert load_config(None, {"state_dir": tmp_path}).admin_listen == AdminAddress("127.0.0.1", 2561)
    # An OCSP port of one's own choosing moves the default admin port along (never onto it).
    moved = load_config(None, {"state_dir": tmp_path, "listen": "0.0.0.0:2561"})
    assert moved.admin_listen == AdminAddress("127.0.0.1", 2562)


def test_a_tally_counts_by_outcome_and_bucket_and_travels_whole() -> None:
    tally = Tally()
    for seconds in (0.0001, 0.0004, 0.003, 99.0):
        tally.answered("hit", seconds)
    tally.answered("miss", 0.2)
    snapshot = tally.snapshot(refused=7)
    assert snapshot.answers == {"hit": 4, "miss": 1}
    assert (
        snapshot.buckets["hit"][0] == 2
        and snapshot.buckets["hit"][3] == 1
        and snapshot.buckets["hit"][-1] == 1
    )
    assert len(snapshot.buckets["hit"]) == len(LATENCY_BUCKETS) + 1
    back = decode_tally(encode_tally(snapshot)[1:])
    assert back == snapshot
    total = TallySnapshot()
    total.add(back)
    total.add(replace(back, refused=1))
    assert total.answers["hit"] == 8 and total.refused == 8
    with pytest.raises(ValueError):
        decode_tally(b'[{"hit": 1}, {"hit": [1]}, {}, 0]')
