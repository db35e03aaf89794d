"""The status page in a real browser: Debian's Chromium, headless, renders it from a running service
with a certificate in each state; the rendered DOM shows each with the right verdict, most urgent
first, and a screenshot is kept as a test artefact (its path is printed; with
OCSPPROXY_SCREENSHOT=FILE it is also copied there: docs/status-page.png is made so)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from tests.conftest import eventually
from tests.pki import TestCA
from tests.required import unavailable
from tests.upstream import FakeUpstream, Reply

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


async def chromium(tmp_path: Path, *args: str) -> bytes:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        unavailable("chromium is not installed (scripts/test installs Debian's chromium as root)")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    proc = await asyncio.create_subprocess_exec(
        binary,
        *FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def test_the_status_page_renders_each_certificate_with_its_verdict(
    ca: TestCA, upstream: FakeUpstream, make_proxy, tmp_path: Path
) -> None:
    fine = ca.leaf("www.example.org")
    failing = ca.leaf("shop.example.org")
    never = ca.leaf("mail.example.org")
    no_url = ca.leaf("letsencrypt-style.example.org", ocsp_url=None)
    down: set[int] = {never.serial}
    upstream.behaviour = lambda serial: Reply(status=503) if serial in down else Reply(ca.respond(serial))
    proxy = await make_proxy(ca=ca, leaves=[fine, failing, never, no_url]).start()
    assert proxy.app is not None and proxy.app.admin is not None
    key = ca.cert_id(failing.serial).key
    await eventually(lambda: proxy.app is not None and proxy.app.cache.servable(key) is not None)
    down.add(failing.serial)
    await proxy.app.admin.view.refresh(key)  # its CA fails now: a warning, with time left

    url = proxy.admin_url + "/"
    dom = (await chromium(tmp_path, "--dump-dom", url)).decode()
    rows = re.findall(r'<tr data-verdict="(\w+)">.*?CN=([\w.-]+)', dom)
    assert rows == [
        ("critical", "mail.example.org"),
        ("warning", "shop.example.org"),
        ("none", "letsencrypt-style.example.org"),
        ("ok", "www.example.org"),
    ], dom[:3000]
    assert "503" in dom and "no OCSP URL" in dom and "<svg" in dom
    assert "1 ok" in dom and "1 warning" in dom and "1 critical" in dom and "1 none" in dom

    screenshot = tmp_path / "status-page.png"
    await chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1400,640", url)
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    print(f"status page screenshot: {screenshot}")
    if target := os.environ.get("OCSPPROXY_SCREENSHOT"):
        shutil.copyfile(screenshot, target)
