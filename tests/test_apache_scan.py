"""``ocspproxy apache scan``: every TLS site of a fixture tree with real certificates made at test time."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ocspproxy.apache.commands import Context, scan_command
from ocspproxy.apache.config import TLSSite, read_apache_config
from ocspproxy.apache.ctl import RunResult, Tools
from ocspproxy.apache.scan import SiteReport, force_url_conflicts, scan_sites, staple_state
from ocspproxy.cli import main
from ocspproxy.core.ocsp import CertKey, issuer_key_hash
from ocspproxy.core.validate import Rules
from tests.pki import Leaf, TestCA, pem

TEMPLATE = Path(__file__).parent / "fixtures" / "apache" / "scan"
PROXY = "http://127.0.0.1:2560/"
REQUIRED_KEYS = {
    "vhost", "config_file", "line", "certificate_file", "serial", "issuer_found", "ocsp_url",
    "stapling_possible", "problem", "server_name", "subject", "issuer_source", "staple_status",
    "staple_next_update", "stapling_force_url",
}  # fmt: skip


@dataclass
class Tree:
    root: Path
    state: Path
    ca: TestCA
    leaves: dict[str, Leaf]

    @property
    def main(self) -> Path:
        return self.root / "apache2.conf"

    def key(self, name: str) -> CertKey:
        return CertKey(
            alg="sha1", issuer_key_hash=issuer_key_hash(self.ca.cert, "sha1"), serial=self.leaves[name].serial
        )

    def store(self, name: str, der: bytes) -> None:
        self.state.mkdir(exist_ok=True)
        (self.state / f"{self.key(name)}.der").write_bytes(der)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "apache2"
    shutil.copytree(TEMPLATE, root)
    certs = root / "certs"
    (certs / "hashed").mkdir(parents=True)
    ca = TestCA(ocsp_url="http://ocsp.ca.example/")
    leaves = {
        name: ca.leaf(f"{name}.example") for name in ("chain", "chainfile", "cafile", "capath", "lonely")
    }
    leaves |= {"https": ca.leaf("https.example"), "shared": ca.leaf("shared.example")}
    leaves["nourl"] = ca.leaf("nourl.example", ocsp_url=None)
    (certs / "chain.pem").write_bytes(pem(leaves["chain"].cert, ca.cert))
    (certs / "chainfile-leaf.pem").write_bytes(pem(leaves["chainfile"].cert))
    (certs / "issuer.pem").write_bytes(pem(ca.cert))
    (certs / "cafile-leaf.pem").write_bytes(pem(leaves["cafile"].cert))
    (certs / "bundle.pem").write_bytes(pem(ca.root, ca.rogue, ca.cert))  # the rogue has the CA's name
    (certs / "capath-leaf.pem").write_bytes(pem(leaves["capath"].cert))
    (certs / "hashed" / "0a1b2c3d.0").write_bytes(pem(ca.cert))
    (certs / "hashed" / "README").write_text("not a certificate\n")
    (certs / "lonely.pem").write_bytes(pem(leaves["lonely"].cert))
    (certs / "nourl.pem").write_bytes(pem(leaves["nourl"].cert, ca.cert))
    (certs / "https.pem").write_bytes(pem(leaves["https"].cert, ca.cert))
    (certs / "shared.pem").write_bytes(pem(leaves["shared"].cert, ca.cert))
    return Tree(root=root, state=tmp_path / "state", ca=ca, leaves=leaves)


def _scan(tree: Tree, **kwargs: Any) -> dict[str, SiteReport]:
    sites = read_apache_config(tree.main, environment={}).sites
    reports = scan_sites(sites, state_dir=tree.state, proxy_url=PROXY, now=dt.datetime.now(dt.UTC), **kwargs)
    return {r.site.server_name or "": r for r in reports}


def _openssl_hex(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _kinds(report: SiteReport) -> list[str]:
    return [p.kind for p in report.problems]


def test_issuer_is_found_where_mod_ssl_looks(tree: Tree) -> None:
    reports = _scan(tree)
    assert reports["chain.example"].issuer_source == "certificate file"
    assert reports["chainfile.example"].issuer_source == "SSLCertificateChainFile"
    assert reports["cafile.example"].issuer_source == "SSLCACertificateFile"  # past root and rogue
    assert reports["capath.example"].issuer_source == "SSLCACertificatePath"
    for name in ("chain", "chainfile", "cafile", "capath"):
        report = reports[f"{name}.example"]
        assert report.problems == () and report.stapling_possible, report
        assert report.issuer == "CN=Test Issuing CA"
        assert report.ocsp_url == "http://ocsp.ca.example/"
        assert report.serial == _openssl_hex(tree.leaves[name].serial)
        assert report.subject == f"CN={name}.example"


def test_each_problem_is_named(tree: Tree) -> None:
    reports = _scan(tree)
    lonely = reports["lonely.example"]
    assert _kinds(lonely) == ["no_issuer"] and not lonely.stapling_possible
    assert "AH02217" in lonely.problems[0].message
    assert "SSLCertificateChainFile" in (lonely.problems[0].fix or "")
    assert lonely.staple_status is None

    nourl = reports["nourl.example"]
    assert _kinds(nourl) == ["no_ocsp_url"] and not nourl.stapling_possible
    assert "Let's Encrypt" in nourl.problems[0].message and nourl.ocsp_url is None

    missing = reports["missing.example"]
    assert _kinds(missing) == ["unreadable_certificate"] and not missing.stapling_possible
    assert "No such file or directory" in missing.problems[0].message

    https = reports["https.example"]
    assert _kinds(https) == ["https_force_url"] and not https.stapling_possible
    assert "aborts the handshakes" in https.problems[0].message


def test_one_certificate_with_two_force_urls(tree: Tree) -> None:
    reports = _scan(tree)
    a, b, c = (reports[f"{x}.shared.example"] for x in "abc")
    assert _kinds(a) == _kinds(b) == ["force_url_conflict"]
    assert "b.shared.example" in a.problems[0].message and "http://ocsp.example.net/" in a.problems[0].message
    assert "a.shared.example" in b.problems[0].message and PROXY in b.problems[0].message
    assert f"{tree.root / 'sites-enabled' / 'sites.conf'}:65" in a.problems[0].message  # file:line of b
    assert c.problems == ()  # SSLUseStapling off: mod_ssl makes no stapling entry for it
    assert a.stapling_possible and a.through_ocspproxy and not b.through_ocspproxy


def test_staple_states(tree: Tree) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = tree.ca
    tree.store("chain", ca.respond(tree.leaves["chain"].serial))
    tree.store(
        "chainfile",
        ca.respond(tree.leaves["chainfile"].serial, this_update=now - dt.timedelta(hours=2)),
    )
    tree.store("cafile", b"not an OCSP response")
    tree.store("capath", ca.respond(tree.leaves["capath"].serial, status="revoked"))
    reports = _scan(tree)
    good = reports["chain.example"]
    assert good.staple_status == "good" and good.staple_next_update is not None
    assert good.staple_next_update > now
    assert good.staple_file == tree.state / f"{tree.key('chain')}.der"
    expired = reports["chainfile.example"]
    assert expired.staple_status == "expired" and expired.staple_next_update == now - dt.timedelta(hours=1)
    assert reports["cafile.example"].staple_status == "invalid"
    assert reports["capath.example"].staple_status == "revoked"
    assert reports["https.example"].staple_status == "missing"


def test_staple_signed_by_someone_else_is_invalid(tree: Tree) -> None:
    tree.store("chain", tree.ca.respond(tree.leaves["chain"].serial, signer="rogue"))
    key = tree.key("chain")
    status, _, _ = staple_state(tree.state, key, tree.ca.cert, now=dt.datetime.now(dt.UTC), rules=Rules())
    assert status == "invalid"


def test_scan_never_creates_or_cleans_the_state_directory(tree: Tree) -> None:
    _scan(tree)
    assert not tree.state.exists()
    tree.state.mkdir()
    leftover = tree.state / ".tmp-sha1-00-01.der.abcd"  # a running ocspproxy's write in progress
    leftover.write_bytes(b"x")
    _scan(tree)
    assert leftover.exists()


def test_issuer_ocsp_url_from_ocspproxy_config(tree: Tree) -> None:
    reports = _scan(tree, overrides=[(tree.ca.cert, "http://ocsp.configured.example/")])
    nourl = reports["nourl.example"]
    assert nourl.problems == () and nourl.stapling_possible
    assert nourl.ocsp_url == "http://ocsp.configured.example/"


def test_force_url_conflicts_pure() -> None:
    def report(name: str, url: str | None, fingerprint: str, use: bool | None = True) -> SiteReport:
        site = TLSSite(
            config_file=Path("/etc/apache2/sites-enabled/x.conf"),
            line=len(name),
            server_name=name,
            vhost="*:443",
            certificate_file=Path(f"/certs/{fingerprint}.pem"),
            chain_file=None,
            ca_certificate_file=None,
            ca_certificate_path=None,
            stapling_force_url=url,
            use_stapling=use,
        )
        return SiteReport(site=site, fingerprint=fingerprint)

    reports = force_url_conflicts(
        [
            report("a", PROXY, "f1"),
            report("bb", None, "f1"),
            report("ccc", PROXY, "f2"),
            report("d", "x", "f2", False),
        ]
    )
    assert [len(r.problems) for r in reports] == [1, 1, 0, 0]
    assert "bb (/etc/apache2/sites-enabled/x.conf:2) has none" in reports[0].problems[0].message


# --- the command ---------------------------------------------------------------------------------


def test_json_output(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    tree.store("chain", tree.ca.respond(tree.leaves["chain"].serial))
    status = main(
        ["apache", "scan", "--apache-config", str(tree.main), "--state-dir", str(tree.state), "--json"]
    )
    assert status == 1  # the tree has a site for every problem: the exit status says so with --json too
    sites = json.loads(capsys.readouterr().out)
    assert len(sites) == 11
    assert all(set(site) >= REQUIRED_KEYS for site in sites)
    first = sites[0]
    assert first["vhost"] == "*:443" and first["server_name"] == "chain.example"
    assert first["config_file"] == str(tree.root / "sites-enabled" / "sites.conf") and first["line"] == 5
    assert first["certificate_file"] == str(tree.root / "certs" / "chain.pem")
    assert (first["issuer_found"], first["stapling_possible"], first["problem"]) == (True, True, None)
    assert first["staple_status"] == "good" and first["staple_next_update"].endswith("Z")
    assert first["stapling_force_url"] == PROXY and first["through_ocspproxy"] is True
    lonely = next(s for s in sites if s["server_name"] == "lonely.example")
    assert lonely["issuer_found"] is False and lonely["issuer_source"] is None
    assert "AH02217" in lonely["problem"] and lonely["problems"][0]["kind"] == "no_issuer"
    assert (first["attention"], first["reasons"]) == (False, [])
    assert (lonely["attention"], lonely["reasons"]) == (True, ["no issuer", "not through ocspproxy"])


def test_text_output(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apache", "scan", "--apache-config", str(tree.main), "--state-dir", str(tree.state)]) == 1
    out = capsys.readouterr().out
    assert f"Apache configuration: {tree.main} (given with --apache-config; 3 files read)" in out
    assert "found in SSLCACertificatePath (CN=Test Issuing CA)" in out
    assert "AH02217" in out and "fix:" in out and "Let's Encrypt" in out
    assert "asks ocspproxy at http://127.0.0.1:2560/" in out
    assert out.rstrip().endswith(
        "11 TLS sites: 0 stapled good through ocspproxy, 11 need attention (8 missing staple, "
        "1 unreadable certificate, 1 no issuer, 1 no OCSP URL, 1 https:// ForceURL, 2 ForceURL conflict, "
        "1 stapling off, 8 not through ocspproxy)."
    )


def test_config_sets_listen_and_state_dir(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    config = tree.root.parent / "ocspproxy.toml"
    config.write_text(f'listen = "127.0.0.1:2561"\nstate_dir = "{tree.state}"\n')
    tree.store("chain", tree.ca.respond(tree.leaves["chain"].serial))
    assert main(["apache", "scan", "--apache-config", str(tree.main), "--config", str(config), "--json"]) == 1
    first = json.loads(capsys.readouterr().out)[0]
    assert first["staple_status"] == "good" and first["through_ocspproxy"] is False  # 2560 is not 2561


def test_unreadable_apache_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apache", "scan", "--apache-config", str(tmp_path / "nope.conf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read Apache's configuration" in err


def test_apache_config_found_with_apachectl_v(tree: Tree) -> None:
    v_output = f' -D HTTPD_ROOT="{tree.root}"\n -D SERVER_CONFIG_FILE="apache2.conf"\n'
    calls: list[list[str]] = []

    def runner(argv: Any, *, env: Any, timeout: float) -> RunResult:
        calls.append(list(argv))
        return RunResult(returncode=0, output=v_output)

    out: list[str] = []
    ctx = Context(
        out=out.append,
        err=out.append,
        runner=runner,
        tools=Tools(ctl="/x/apachectl", control_names=("/x/apachectl",)),
    )
    assert (
        scan_command(apache_config=None, state_dir=tree.state, config_file=None, as_json=False, ctx=ctx) == 1
    )
    assert calls == [["/x/apachectl", "-V"]]
    assert f"Apache configuration: {tree.main} (from apachectl -V;" in out[0]


def test_apache_config_not_found_exits_2(tmp_path: Path) -> None:
    def runner(argv: Any, *, env: Any, timeout: float) -> RunResult:
        return RunResult(returncode=127, output="not found")

    err: list[str] = []
    ctx = Context(out=err.append, err=err.append, runner=runner, tools=Tools())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ocspproxy.apache.ctl.USUAL_MAIN_FILES", (tmp_path / "none.conf",))
        status = scan_command(apache_config=None, state_dir=None, config_file=None, as_json=True, ctx=ctx)
    assert status == 2
    assert len(err) == 1 and "Apache's configuration not found" in err[0] and "--apache-config" in err[0]


def test_unreadable_chain_file_is_named_and_the_search_goes_on(tmp_path: Path) -> None:
    ca = TestCA()
    leaf = ca.leaf("partial.example")
    (tmp_path / "leaf.pem").write_bytes(pem(leaf.cert))
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    main = tmp_path / "httpd.conf"
    main.write_text(
        "<VirtualHost *:443>\nSSLCertificateFile leaf.pem\nSSLCertificateChainFile gone.pem\n"
        "SSLCACertificateFile ca.pem\n</VirtualHost>\n"
    )
    (report,) = scan_sites(
        read_apache_config(main, environment={}).sites,
        state_dir=tmp_path / "state",
        proxy_url=PROXY,
        now=dt.datetime.now(dt.UTC),
    )
    assert report.issuer_source == "SSLCACertificateFile" and report.stapling_possible
    assert _kinds(report) == ["unreadable_file"]
    assert f"SSLCertificateChainFile {tmp_path / 'gone.pem'}: unreadable" in report.problems[0].message


def test_a_key_or_csr_where_a_certificate_belongs_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = TestCA()
    leaf = ca.leaf("key.example")
    key = tmp_path / "site.key"
    key.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "key.example")])
    csr = tmp_path / "chain.csr"
    csr.write_bytes(
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(leaf.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    (tmp_path / "leaf.pem").write_bytes(pem(leaf.cert))
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    main_file = tmp_path / "httpd.conf"
    main_file.write_text(
        "<VirtualHost *:443>\nServerName key.example\nSSLCertificateFile site.key\n</VirtualHost>\n"
        "<VirtualHost *:443>\nServerName csr.example\nSSLCertificateFile leaf.pem\n"
        "SSLCertificateChainFile chain.csr\nSSLCACertificateFile ca.pem\n</VirtualHost>\n"
    )
    keyed, chained = scan_sites(
        read_apache_config(main_file, environment={}).sites,
        state_dir=tmp_path / "state",
        proxy_url=PROXY,
        now=dt.datetime.now(dt.UTC),
    )
    assert _kinds(keyed) == ["not_a_certificate"]
    assert keyed.problems[0].message == f"certificate file {key} holds a private key, not a certificate"
    assert "SSLCertificateKeyFile" in (keyed.problems[0].fix or "")
    assert chained.issuer_source == "SSLCACertificateFile" and _kinds(chained) == ["unreadable_file"]
    assert chained.problems[0].message == (
        f"SSLCertificateChainFile {csr}: holds a certificate signing request (CSR), not a certificate"
    )
    main(["apache", "scan", "--apache-config", str(main_file), "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert f"PROBLEM        certificate file {key} holds a private key, not a certificate" in out
    assert not any(text in out for text in ("ParseError", "asn1", "Unable to load PEM"))


def test_an_issuer_override_that_is_no_certificate_is_named(tree: Tree) -> None:
    key = tree.root / "ca.key"
    key.write_bytes(
        tree.leaves["chain"].key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = tree.root.parent / "ocspproxy.toml"
    config.write_text(f'[[issuer]]\ncertificate = "{key}"\nocsp_url = "http://ocsp.example/"\n')
    out: list[str] = []
    err: list[str] = []
    ctx = Context(out=out.append, err=err.append, tools=Tools(), environment={})
    scan_command(apache_config=tree.main, state_dir=tree.state, config_file=config, as_json=True, ctx=ctx)
    warning = f"ocspproxy: warning: [[issuer]] certificate {key}: holds a private key, not a certificate"
    assert err == [warning]


def _stapling_site(tmp_path: Path, ca: TestCA, names: list[str]) -> tuple[Path, dict[str, Leaf]]:
    """An Apache config stapling every site through ocspproxy, one vhost per name (nourl*: no URL)."""
    leaves: dict[str, Leaf] = {}
    vhosts = []
    for name in names:
        leaf = leaves[name] = ca.leaf(
            f"{name}.example", ocsp_url=None if name.startswith("nourl") else "default"
        )
        (tmp_path / f"{name}.pem").write_bytes(pem(leaf.cert, ca.cert))
        vhosts.append(
            f"<VirtualHost *:443>\nServerName {name}.example\nSSLCertificateFile {name}.pem\n</VirtualHost>\n"
        )
    main_file = tmp_path / "httpd.conf"
    main_file.write_text(f"SSLUseStapling on\nSSLStaplingForceURL {PROXY}\n" + "".join(vhosts))
    return main_file, leaves


def _store(state: Path, ca: TestCA, leaf: Leaf, der: bytes) -> None:
    state.mkdir(exist_ok=True)
    key = CertKey(alg="sha1", issuer_key_hash=issuer_key_hash(ca.cert, "sha1"), serial=leaf.serial)
    (state / f"{key}.der").write_bytes(der)


def test_summary_and_exit_status_say_what_needs_attention(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = TestCA(ocsp_url="http://ocsp.ca.example/")
    main_file, leaves = _stapling_site(tmp_path, ca, ["good", "revoked", "nourl"])
    state = tmp_path / "state"
    _store(state, ca, leaves["good"], ca.respond(leaves["good"].serial))
    _store(state, ca, leaves["revoked"], ca.respond(leaves["revoked"].serial, status="revoked"))
    args = ["apache", "scan", "--apache-config", str(main_file), "--state-dir", str(state)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        "3 TLS sites: 1 stapled good through ocspproxy, 2 need attention (1 revoked, 1 no OCSP URL)."
    )
    nourl = out.split("nourl.example\n", 1)[1]
    assert "  staple         none: the certificate has no OCSP URL, nothing to staple\n" in nourl
    assert "nothing stored yet" not in out

    assert main([*args, "--json"]) == 1
    sites = json.loads(capsys.readouterr().out)
    assert [(s["attention"], s["reasons"]) for s in sites] == [
        (False, []),
        (True, ["revoked"]),
        (True, ["no OCSP URL"]),
    ]
    assert sites[2]["staple_status"] == "none"

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expired = ca.respond(leaves["revoked"].serial, this_update=now - dt.timedelta(hours=2))
    _store(state, ca, leaves["revoked"], expired)
    assert main(args) == 1
    assert "2 need attention (1 expired, 1 no OCSP URL)." in capsys.readouterr().out


def test_exit_status_0_when_every_site_staples_good_through_ocspproxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = TestCA(ocsp_url="http://ocsp.ca.example/")
    main_file, leaves = _stapling_site(tmp_path, ca, ["one", "two"])
    state = tmp_path / "state"
    for leaf in leaves.values():
        _store(state, ca, leaf, ca.respond(leaf.serial))
    args = ["apache", "scan", "--apache-config", str(main_file), "--state-dir", str(state)]
    assert main(args) == 0
    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith("2 TLS sites: 2 stapled good through ocspproxy, 0 need attention.")
    )
    assert main([*args, "--json"]) == 0
    assert [s["attention"] for s in json.loads(capsys.readouterr().out)] == [False, False]


def test_help_names_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["apache", "scan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "exit status: 0 every TLS site staples a good, current response through ocspproxy; 1 at least" in text
    )
    assert "2 the input was unusable" in text


def test_text_names_where_the_vhost_opens_and_where_its_certificate_is_set(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["apache", "scan", "--apache-config", str(tree.main), "--state-dir", str(tree.state)])
    out = capsys.readouterr().out
    sites = tree.root / "sites-enabled" / "sites.conf"
    chain = out.split("chain.example\n", 1)[1]
    assert chain.startswith(
        f"  vhost          <VirtualHost *:443> at {sites}:2\n"
        f"  certificate    {tree.root / 'certs' / 'chain.pem'} (SSLCertificateFile at {sites}:5)\n"
    )
    assert "defined at" not in out
