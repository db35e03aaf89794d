"""The forward proxy: chosen from the configuration only, used as an absolute-URI HTTP proxy with
credentials from a file, and its failures are upstream failures that name the proxy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ocspproxy.config import ConfigError, load_config, proxy_route
from ocspproxy.core.ocsp import build_request
from ocspproxy.upstream.http import Fetcher, UpstreamError, UpstreamSettings
from ocspproxy.upstream.proxy import ProxyRoute
from tests.conftest import eventually
from tests.forwardproxy import ForwardProxy
from tests.pki import TestCA, pem
from tests.upstream import FakeUpstream


def _config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "ocspproxy.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + text)
    return load_config(path)


def test_the_proxy_is_chosen_by_issuer_then_default_and_never_from_the_environment_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, other = TestCA(), TestCA()
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    (tmp_path / "other.pem").write_bytes(pem(other.cert))
    monkeypatch.setenv("HTTP_PROXY", "http://stray.example:3128")
    config = _config(
        tmp_path,
        '[upstream]\nproxy = "http://dmz:3128"\n'
        '[[issuer]]\ncertificate = "ca.pem"\nupstream_proxy = "http://ca-proxy:8080"\n'
        '[[issuer]]\ncertificate = "other.pem"\nupstream_proxy = ""\n',
    )
    route = proxy_route(config)
    assert route.proxy_for("http://ocsp.ca.test/", ca.cert) == "http://ca-proxy:8080"
    assert route.proxy_for("http://ocsp.other.test/", other.cert) is None, '"" means straight to the CA'
    assert route.proxy_for("http://ocsp.third.test/", TestCA().cert) == "http://dmz:3128"
    plain = proxy_route(_config(tmp_path, ""))
    assert plain.proxy_for("http://ocsp.ca.test/") is None, "HTTP_PROXY is ignored unless use_env_proxy"


def test_the_environment_is_honoured_only_when_enabled_with_no_proxy() -> None:
    env = {"HTTP_PROXY": "http://envproxy:3128", "NO_PROXY": "internal.example,.corp"}
    on = ProxyRoute.from_settings(default=None, issuers={}, use_env=True, auth_file=None, environ=env)
    off = ProxyRoute.from_settings(default=None, issuers={}, use_env=False, auth_file=None, environ=env)
    assert on.proxy_for("http://ocsp.public.example/") == "http://envproxy:3128"
    assert on.proxy_for("http://internal.example/") is None
    assert on.proxy_for("http://ocsp.ca.corp:8080/") is None
    assert off.proxy_for("http://ocsp.public.example/") is None


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[upstream]\nproxy = "http://user:secret@dmz:3128"\n', "upstream.proxy", "proxy_auth_file"),
        ('[upstream]\nproxy = "socks5://dmz:1080"\n', "upstream.proxy", "http://host:port"),
        ("[upstream]\nuse_env_proxy = 1\n", "upstream.use_env_proxy", "true or false"),
        ('[[issuer]]\ncertificate = "ca.pem"\n', "issuer[0]", "ocsp_url or upstream_proxy"),
        ("[bundle]\nwarn_margin = -1\n", "bundle.warn_margin", "between"),
    ],
)
def test_bad_proxy_settings_are_refused_naming_the_key(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, text)
    assert caught.value.key == key and message in str(caught.value)


def test_proxy_credentials_come_from_a_file_and_are_never_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "auth").write_text("ocsp:s3cret\n")
    config = _config(tmp_path, '[upstream]\nproxy = "http://dmz:3128"\nproxy_auth_file = "auth"\n')
    assert proxy_route(config).auth == ("ocsp", "s3cret")
    (tmp_path / "auth").write_text("no colon here s3cret\n")
    with pytest.raises(ConfigError) as caught:
        proxy_route(config)
    assert "user:password" in str(caught.value) and "s3cret" not in str(caught.value)


async def test_requests_go_through_the_proxy_as_absolute_uris_with_credentials(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    proxy = await ForwardProxy(credentials=("ocsp", "s3cret")).start()
    leaf = ca.leaf()
    request = build_request(ca.cert_id(leaf.serial).key, ca.cert_id(leaf.serial).issuer_name_hash)
    fetcher = Fetcher(UpstreamSettings(), ProxyRoute(default=proxy.url, auth=("ocsp", "s3cret")))
    await fetcher.start()
    try:
        der = await fetcher.fetch(upstream.url, request, proxy=proxy.url)
        assert der and upstream.requests == [leaf.serial]
        assert proxy.seen[0].method == "POST" and proxy.seen[0].target == upstream.url
        assert proxy.seen[0].authorization is not None
        wrong = Fetcher(UpstreamSettings(), ProxyRoute(default=proxy.url, auth=("ocsp", "wrong")))
        await wrong.start()
        with pytest.raises(UpstreamError, match=rf"proxy {proxy.url}: authentication required \(HTTP 407\)"):
            await wrong.fetch(upstream.url, request, proxy=proxy.url)
        await wrong.close()
        await proxy.stop()
        with pytest.raises(UpstreamError, match=rf"^proxy {proxy.url}: connection refused$"):
            await fetcher.fetch(upstream.url, request, proxy=proxy.url)
    finally:
        await fetcher.close()
        await proxy.stop()


async def test_a_failing_proxy_is_an_upstream_failure_the_staple_stays_and_the_log_names_the_proxy(
    make_proxy: Any, ca: TestCA, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    forward = await ForwardProxy().start()
    leaf = ca.leaf()
    service = make_proxy(
        ca=ca,
        leaves=[leaf],
        upstream=UpstreamSettings(connect_timeout=1.0, total_timeout=2.0, proxy=forward.url),
    )
    await service.start()
    await eventually(lambda: service.app.cache.servable(ca.cert_id(leaf.serial).key) is not None)
    assert forward.seen and forward.seen[0].target == upstream.url, "fetched through the proxy"
    await forward.stop()
    service.app.scheduler.track_all([ca.cert_id(leaf.serial).key])
    await service.app.refresher.refresh(
        ca.cert_id(leaf.serial).key, service.app.catalog.job_for(ca.cert_id(leaf.serial).key)
    )
    answer = await service.post(ca.request(leaf.serial))
    assert answer.status == "SUCCESSFUL" and answer.cert_status == "GOOD", "the stored staple is still served"
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == "upstream" and line.get("result") == "failed"]
    assert failed and failed[-1]["reason"] == f"proxy {forward.url}: connection refused"
