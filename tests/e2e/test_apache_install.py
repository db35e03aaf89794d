"""End-to-end: ``ocspproxy apache install`` on a Debian-style Apache tree with no stapling directives,
then a real Apache started on that tree staples through ocspproxy; ``apache scan`` sees it.

The install runs the real config test (``apache2 -t -f TREE/apache2.conf -d TREE`` after sourcing the
tree's envvars); a tree that fails it is rolled back to exactly what it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import apache_account
from .peers import (
    ApacheTree,
    DebianTree,
    OcspProxy,
    OcspResponder,
    Pki,
    free_port,
    poll_staple,
    run_ocspproxy,
    wait_until,
)

pytestmark = pytest.mark.e2e

STAPLE_TIMEOUT = 30.0


def _tree(root: Path, pki: Pki, **kwargs: object) -> DebianTree:
    user, group = apache_account()
    return DebianTree(
        root=root,
        port=free_port(),
        leaf_cert=kwargs.pop("leaf_cert", pki.good.chain_pem),  # type: ignore[arg-type]
        leaf_key=pki.good.key_pem,
        user=user,
        group=group,
        **kwargs,  # type: ignore[arg-type]
    ).write()


def _state(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under root: (kind, content or link target), to compare trees before and after."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_file():
                out[rel] = ("file", path.read_text(errors="replace"))
            else:
                out[rel] = ("dir", "")
    return out


@pytest.fixture
def httpd_tree(pki: Pki, tmp_path: Path) -> Iterator[tuple[DebianTree, ApacheTree]]:
    tree = _tree(tmp_path / "apache2", pki)
    httpd = ApacheTree(tree)
    try:
        yield tree, httpd
    finally:
        httpd.cleanup()


def test_install_then_apache_staples_through_ocspproxy(
    pki: Pki, ca: OcspResponder, proxy: OcspProxy, httpd_tree: tuple[DebianTree, ApacheTree], tmp_path: Path
) -> None:
    tree, httpd = httpd_tree
    main = str(tree.main_file)
    assert "Stapling" not in "".join(p.read_text() for p in tree.root.rglob("*.conf"))

    done = run_ocspproxy("apache", "install", "--apache-config", main, "--proxy-url", proxy.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"apache2 -t -f {main} -d {tree.root}" in done.stdout, done.stdout  # the real test, this tree
    assert "Syntax OK" in done.stdout, done.stdout
    available = tree.root / "conf-available" / "ocspproxy.conf"
    enabled = tree.root / "conf-enabled" / "ocspproxy.conf"
    assert os.readlink(enabled) == "../conf-available/ocspproxy.conf"
    text = available.read_text()
    assert f"SSLStaplingForceURL {proxy.url}\n" in text
    assert 'SSLStaplingCache "shmcb:${APACHE_RUN_DIR}/ssl_stapling(1048576)"' in text

    # Apache's first handshake asks ocspproxy: let it have the staple by then (mod_ssl would cache
    # a tryLater for SSLStaplingErrorCacheTimeout)
    wait_until(lambda: bool(proxy.der_files()), timeout=STAPLE_TIMEOUT, what="ocspproxy's first staple")
    httpd.start()
    staple = poll_staple(
        tree.port, pki.ca_pem, lambda s: s is not None, timeout=STAPLE_TIMEOUT, what="a staple"
    )
    assert staple is not None and staple.good, staple.raw if staple else None
    assert staple.serial == pki.good.serial_hex

    config = tmp_path / "ocspproxy.toml"
    config.write_text(f'listen = "127.0.0.1:{proxy.port}"\n')
    scanned = run_ocspproxy(
        "apache", "scan", "--apache-config", main, "--state-dir", str(proxy.state_dir), "--config",
        str(config), "--json",
    )  # fmt: skip
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    (site,) = json.loads(scanned.stdout)
    assert site["certificate_file"] == str(pki.good.chain_pem)
    assert site["serial"] == pki.good.serial_hex
    assert (site["issuer_found"], site["issuer_source"]) == (True, "certificate file")
    assert site["ocsp_url"] == pki.ocsp_url
    assert site["stapling_force_url"] == proxy.url and site["through_ocspproxy"] is True
    assert site["stapling_possible"] is True, site
    assert site["staple_status"] == "good", site
    assert site["problem"] is None

    again = run_ocspproxy("apache", "install", "--apache-config", main, "--proxy-url", proxy.url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "unchanged: already installed" in again.stdout, again.stdout
    assert available.read_text() == text and os.readlink(enabled) == "../conf-available/ocspproxy.conf"


def test_install_rolls_back_when_the_tree_fails_its_config_test(pki: Pki, tmp_path: Path) -> None:
    """A vhost naming a missing certificate: apache2 -t fails, everything is put back, exit status 1."""
    tree = _tree(tmp_path / "apache2", pki, leaf_cert=tmp_path / "missing.pem")
    before = _state(tree.root)
    done = run_ocspproxy(
        "apache", "install", "--apache-config", str(tree.main_file), "--proxy-url", "http://127.0.0.1:2560/"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "does not exist or is empty" in done.stdout, done.stdout  # mod_ssl's own words
    assert "rolled back" in done.stdout and "fails without ocspproxy's settings too" in done.stderr
    assert _state(tree.root) == before


def test_install_rolls_back_its_own_breakage_and_keeps_the_old_file(pki: Pki, tmp_path: Path) -> None:
    """No mod_socache_shmcb: the snippet's shmcb stapling cache fails the test; an older
    conf-available/ocspproxy.conf (not enabled) comes back byte for byte, with its mode."""
    tree = _tree(tmp_path / "apache2", pki, with_shmcb=False)
    old = tree.root / "conf-available" / "ocspproxy.conf"
    old.write_text("# an older ocspproxy.conf, not enabled\n")
    old.chmod(0o600)
    before = _state(tree.root)
    done = run_ocspproxy("apache", "install", "--apache-config", str(tree.main_file))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "'shmcb' stapling cache not supported" in done.stdout, done.stdout
    assert "failed with ocspproxy's settings; rolled back" in done.stderr, done.stderr
    assert _state(tree.root) == before
    assert old.stat().st_mode & 0o777 == 0o600
