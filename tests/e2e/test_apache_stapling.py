"""End-to-end: what ``openssl s_client -status`` sees through a real Apache httpd whose
``SSLStaplingForceURL`` points at ocspproxy (or, for the harness self-checks, at the CA itself).

Tests in this module share one PKI, CA responder (``-ndays 1``), ocspproxy and two Apache instances
(module-scoped fixtures); they are ordered so later ones build on earlier state but each one also
works alone (``-k``).  The one-minute-validity test builds its own private stack.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable

import pytest
from cryptography.x509 import ocsp

from .conftest import Stack
from .peers import (
    Apache,
    Observation,
    OcspProxy,
    OcspResponder,
    OcspText,
    Pki,
    describe,
    index_line,
    observe,
    poll_staple,
    query_ocsp,
    read_der_with_openssl,
    s_client,
    utcnow,
)

pytestmark = pytest.mark.e2e

#: how long ocspproxy may take after start-up to pre-fetch and serve (plus Apache's error cache)
FIRST_STAPLE_TIMEOUT = 30.0
#: a staple seen at time t must have nextUpdate > t - CLOCK_TOLERANCE (second granularity, skew 1 s)
CLOCK_TOLERANCE = dt.timedelta(seconds=3)


def _is_staple(staple: OcspText | None) -> bool:
    return staple is not None


def _wait_for_staple(apache: Apache, port: int, pki: Pki, what: str) -> OcspText:
    staple = poll_staple(
        port,
        pki.ca_pem,
        _is_staple,
        timeout=FIRST_STAPLE_TIMEOUT + apache.error_cache_timeout,
        what=what,
    )
    assert staple is not None
    return staple


def _assert_good(staple: OcspText | None, pki: Pki, *, when: dt.datetime | None = None) -> OcspText:
    assert staple is not None, "no OCSP response stapled"
    assert staple.response_status == "successful", staple.raw
    assert staple.cert_status == "good", staple.raw
    assert staple.serial == pki.good.serial_hex, staple.raw
    assert staple.this_update is not None and staple.next_update is not None, staple.raw
    now = when or utcnow()
    assert staple.next_update > now - CLOCK_TOLERANCE, f"stapled response already expired:\n{staple.raw}"
    assert staple.this_update <= now + CLOCK_TOLERANCE, f"response from the future:\n{staple.raw}"
    return staple


def _assert_responder_answers_were_valid(apache: Apache) -> None:
    """mod_ssl logs AH01936 only for a response *fresh from the responder* whose thisUpdate/nextUpdate
    fail its check (an expiring cached response logs AH01937 instead), and AH01935 for a CertID
    mismatch.  Apache never staples those (ReturnResponderErrors off), so only its log tells."""
    log = apache.error_log_text()
    bad = [line for line in log.splitlines() if "AH01936" in line or "AH01935" in line]
    assert not bad, "the responder handed Apache unusable responses:\n" + "\n".join(bad[:10])


# --------------------------------------------------------------------------------------------------
# harness self-check (no ocspproxy involved)
# --------------------------------------------------------------------------------------------------


def test_selfcheck_apache_staples_straight_from_ca(
    pki: Pki, ca: OcspResponder, apache_direct: Apache
) -> None:
    """Apache → ``openssl ocsp`` directly: good and revoked staples; a CA outage + Apache restart
    leaves no staple (proves the restart empties mod_ssl's stapling cache and that stopping the CA
    is a real outage); restarting the CA on the same port brings the staple back."""
    good_port = apache_direct.port_of(pki.good)
    _assert_good(s_client(good_port, pki.ca_pem), pki)

    revoked = s_client(apache_direct.port_of(pki.revoked), pki.ca_pem)
    assert revoked is not None, "Apache 2.4.71 staples revoked responses even with ReturnResponderErrors off"
    assert (revoked.response_status, revoked.cert_status) == ("successful", "revoked"), revoked.raw
    assert revoked.serial == pki.revoked.serial_hex

    try:
        ca.stop()
        apache_direct.restart()
        queries_before = apache_direct.responder_queries()
        assert s_client(good_port, pki.ca_pem) is None, "staple without a CA: Apache cache survived restart?"
        assert apache_direct.responder_queries() > queries_before, "Apache did not ask the responder"

        ca.start()  # same port, same index
        staple = poll_staple(
            good_port,
            pki.ca_pem,
            _is_staple,
            timeout=apache_direct.error_cache_timeout + 10,
            what="staple after CA restart",
        )
        _assert_good(staple, pki)
    finally:
        ca.ensure_running()


# --------------------------------------------------------------------------------------------------
# through ocspproxy
# --------------------------------------------------------------------------------------------------


def test_good_staple_through_proxy(
    pki: Pki, ca: OcspResponder, proxy: OcspProxy, apache_via_proxy: Apache
) -> None:
    ca.ensure_running()
    port = apache_via_proxy.port_of(pki.good)
    staple = _assert_good(_wait_for_staple(apache_via_proxy, port, pki, "a staple via ocspproxy"), pki)

    ders = proxy.der_files()
    assert ders, f"no *.der in the proxy state dir {proxy.state_dir}: {sorted(proxy.state_dir.rglob('*'))}"
    stored = [read_der_with_openssl(path) for path in ders]  # each one must be readable by OpenSSL
    assert any(
        s.serial == pki.good.serial_hex and s.good and s.this_update == staple.this_update for s in stored
    ), "the stapled response is not among the stored .der files:\n" + "\n".join(s.raw for s in stored)
    _assert_responder_answers_were_valid(apache_via_proxy)


def test_proxy_answers_post_and_get_directly(pki: Pki, ca: OcspResponder, proxy: OcspProxy) -> None:
    """Both request styles of RFC 6960 (POST as mod_ssl sends it, and GET) get the stored response."""
    ca.ensure_running()
    deadline = time.monotonic() + FIRST_STAPLE_TIMEOUT
    while True:
        answer = query_ocsp(proxy.url, pki.good, pki.ca_cert, method="POST")
        if (
            answer.http_status == 200
            and answer.parsed().response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        ):
            break
        assert time.monotonic() < deadline, f"proxy never answered successfully: {answer}"
        time.sleep(0.5)
    for method in ("POST", "GET"):
        answer = query_ocsp(proxy.url, pki.good, pki.ca_cert, method=method)
        assert answer.http_status == 200, (method, answer)
        assert answer.content_type.split(";")[0].strip() == "application/ocsp-response", (method, answer)
        resp = answer.parsed()
        assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, method
        assert resp.serial_number == pki.good.serial, method
        assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD, method
        assert resp.next_update_utc is not None and resp.next_update_utc > utcnow(), method


def test_revoked_is_stapled_as_revoked(
    pki: Pki, ca: OcspResponder, proxy: OcspProxy, apache_via_proxy: Apache
) -> None:
    ca.ensure_running()
    port = apache_via_proxy.port_of(pki.revoked)
    staple = _wait_for_staple(apache_via_proxy, port, pki, "a staple for the revoked leaf via ocspproxy")
    assert staple.response_status == "successful", staple.raw
    assert staple.cert_status == "revoked", staple.raw
    assert staple.serial == pki.revoked.serial_hex, staple.raw
    assert staple.revocation_time == pki.revoked_at, staple.raw


def test_staple_survives_ca_outage_and_restarts(
    pki: Pki, ca: OcspResponder, proxy: OcspProxy, apache_via_proxy: Apache
) -> None:
    ca.ensure_running()
    port = apache_via_proxy.port_of(pki.good)
    _assert_good(_wait_for_staple(apache_via_proxy, port, pki, "a staple via ocspproxy"), pki)

    try:
        ca.stop()

        # Apache restart: its (shared memory) stapling cache is gone, so it must ask the proxy again
        apache_via_proxy.restart()
        queries = apache_via_proxy.responder_queries()
        _assert_good(s_client(port, pki.ca_pem), pki)
        assert apache_via_proxy.responder_queries() > queries, "Apache answered from a cache it cannot have"

        # ocspproxy restart with the CA still down: it must serve what it stored, from the first request
        proxy.stop()
        assert not proxy.last_stop_needed_kill, "ocspproxy did not exit within 10 s of SIGTERM"
        proxy.start()
        apache_via_proxy.restart()
        _assert_good(s_client(port, pki.ca_pem), pki)
        revoked = s_client(apache_via_proxy.port_of(pki.revoked), pki.ca_pem)
        assert revoked is not None and revoked.cert_status == "revoked"
        _assert_responder_answers_were_valid(apache_via_proxy)
    finally:
        ca.ensure_running()


def test_one_minute_validity_is_refreshed_then_withheld(make_stack: Callable[..., Stack]) -> None:
    """CA with ``-nmin 1`` (nextUpdate = thisUpdate + 60 s):

    1. the first staple is good;
    2. a staple with a newer thisUpdate shows up before the first one's nextUpdate (pre-fetch refresh);
    3. after the CA goes down, staples keep coming until their nextUpdate, then none at all;
    4. at no point is a staple past its nextUpdate (checked on every handshake), the proxy never hands
       Apache an out-of-window response, and a still-valid response is not withheld (allowing
       ``early_withhold`` = 15 s of safety margin before nextUpdate).
    """
    early_withhold = dt.timedelta(seconds=15)
    margin = dt.timedelta(seconds=3)  # Apache's SSLStaplingResponseTimeSkew (1 s) + rounding
    began = time.monotonic()
    stack = make_stack(nmin=1)
    pki, apache = stack.pki, stack.apache
    port = apache.port_of(pki.good)
    seen: list[Observation] = []

    def history() -> str:
        return "observations:\n" + describe(seen)

    def look() -> Observation:
        obs = observe(port, pki.ca_pem)
        seen.append(obs)
        if obs.staple is not None:  # whatever is stapled must be good and unexpired right now
            try:
                _assert_good(obs.staple, pki, when=obs.started)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{history()}") from None
        return obs

    # 1. first staple
    first = _assert_good(_wait_for_staple(apache, port, pki, "first staple"), pki)
    assert first.this_update is not None and first.next_update is not None
    assert first.next_update - first.this_update == dt.timedelta(minutes=1), first.raw

    # 2. refreshed before the first one expires
    refreshed: OcspText | None = None
    while refreshed is None:
        obs = look()
        staple = obs.staple
        if staple is not None and staple.this_update is not None and staple.this_update > first.this_update:
            refreshed = staple
            assert obs.started < first.next_update, "refreshed only after nextUpdate\n" + history()
            break
        assert utcnow() < first.next_update, (
            "no refreshed staple before the first one's nextUpdate\n" + history()
        )
        time.sleep(1)
    assert refreshed.next_update is not None

    # 3. CA outage: served until nextUpdate, then withheld
    stack.ca.stop()
    ca_down = utcnow()
    latest_next = max(o.staple.next_update for o in seen if o.staple and o.staple.next_update)
    deadline = ca_down + dt.timedelta(minutes=1) + margin + dt.timedelta(seconds=15)
    while True:
        obs = look()
        if obs.staple is not None and obs.staple.next_update is not None:
            latest_next = max(latest_next, obs.staple.next_update)
        elif obs.started > latest_next + margin:
            break
        assert utcnow() < deadline, "staples did not stop after the last nextUpdate\n" + history()
        time.sleep(1)
    # ... and stays withheld once Apache's error cache entry has expired and it asks the proxy again
    time.sleep(apache.error_cache_timeout + 0.5)
    assert look().staple is None, "staple came back without a CA\n" + history()

    # the proxy itself says tryLater (never an expired response)
    answer = query_ocsp(stack.proxy.url, pki.good, pki.ca_cert)
    assert answer.http_status == 200, answer
    assert answer.parsed().response_status == ocsp.OCSPResponseStatus.TRY_LATER, answer

    # 4. invariants over the whole run
    _assert_responder_answers_were_valid(apache)
    # every observation in ``seen`` comes after the first good staple
    gaps = [o for o in seen if o.staple is None and o.started < latest_next - early_withhold]
    assert not gaps, (
        f"no staple at {', '.join(f'{o.started:%H:%M:%S}' for o in gaps)} although a valid response "
        f"existed\n{history()}"
    )
    assert time.monotonic() - began < 180


def test_revocation_reaches_the_handshake_within_the_stated_bound(make_stack: Callable[..., Stack]) -> None:
    """7-day responses (``-ndays 7``): ½ validity alone would refresh after 3.5 days. With
    ``max_interval`` the CA is asked again within it, so a revocation at the CA is stapled by Apache
    within max_interval + Apache's SSLStaplingStandardCacheTimeout (the bound the README states),
    plus the time to fetch and a handshake's polling interval."""
    max_interval = 10
    stack = make_stack(ndays=7, proxy_config=f"[refresh]\nmax_interval = {max_interval}\n")
    pki, apache = stack.pki, stack.apache
    port = apache.port_of(pki.good)
    first = _assert_good(_wait_for_staple(apache, port, pki, "first staple"), pki)
    assert first.this_update is not None and first.next_update is not None
    assert first.next_update - first.this_update == dt.timedelta(days=7), first.raw

    # Revoke at the CA: openssl ocsp reads its index again when the file's mtime (in whole
    # seconds) changes, so move it on explicitly.
    revoked_at = utcnow()
    mtime = pki.index_txt.stat().st_mtime
    pki.index_txt.write_text(
        index_line(pki.good, revoked_at=revoked_at - dt.timedelta(seconds=1))
        + index_line(pki.revoked, revoked_at=revoked_at - dt.timedelta(days=1))
    )
    os.utime(pki.index_txt, (mtime + 2, mtime + 2))
    # It looks before waiting for the next connection: the one waiting already gets the old answer.
    query_ocsp(stack.ca.url, pki.good, pki.ca_cert)
    assert query_ocsp(stack.ca.url, pki.good, pki.ca_cert).parsed().certificate_status.name == "REVOKED"
    began = time.monotonic()
    bound = max_interval + apache.standard_cache_timeout
    staple = poll_staple(
        port,
        pki.ca_pem,
        lambda s: s is not None and s.cert_status == "revoked",
        timeout=bound + 10,
        interval=0.5,
        what="a revoked staple",
    )
    took = time.monotonic() - began
    assert staple is not None and staple.serial == pki.good.serial_hex, staple
    assert took <= bound + 5, (
        f"revoked staple after {took:.1f} s; the bound is {bound} s (+ fetch and polling)"
    )
    assert "certificate revoked" in stack.proxy.log_text()
