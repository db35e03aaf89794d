"""Tests for ocspproxy.apache.config: reading httpd's configuration and finding the certificates to staple."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from ocspproxy.apache.config import ApacheConfigError, TLSSite, read_apache_config

FIXTURES = Path(__file__).parent / "fixtures" / "apache"
DEBIAN = FIXTURES / "debian"
RHEL = FIXTURES / "rhel"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def certs(sites: tuple[TLSSite, ...]) -> list[str]:
    return [str(site.certificate_file) for site in sites]


def read(main: Path, **kwargs: object) -> tuple[TLSSite, ...]:
    return read_apache_config(main, environment={}, **kwargs).sites  # type: ignore[arg-type]


# --- Debian /etc/apache2 ---------------------------------------------------------------------------


def test_debian_tree_sites() -> None:
    config = read_apache_config(DEBIAN / "apache2.conf", environment={})
    assert config.main_file == DEBIAN / "apache2.conf"
    assert config.server_root == DEBIAN
    example = DEBIAN / "sites-enabled" / "example.conf"
    ca = Path("/etc/ssl/certs/ca-certificates.crt")  # server-wide, from conf-enabled/
    intermediate = Path("/etc/ssl/example certs/intermediate.pem")
    shared = Path("/etc/ssl/example certs/example.com.pem")
    shop = dict(
        config_file=example,
        server_name="shop.example.net",
        vhost="192.0.2.10:443 [2001:db8::10]:443",
        chain_file=intermediate,
        ca_certificate_file=ca,
        ca_certificate_path=None,
        stapling_force_url="http://ocsp.example.net/",
        use_stapling=True,
    )
    common = dict(chain_file=None, ca_certificate_file=ca, ca_certificate_path=None, stapling_force_url=None)
    assert config.sites == (
        TLSSite(
            config_file=DEBIAN / "sites-enabled" / "default-ssl.conf",
            line=17,
            server_name=None,
            vhost="_default_:443",
            certificate_file=Path("/etc/ssl/certs/ssl-cert-snakeoil.pem"),
            use_stapling=True,  # server-wide, from mods-enabled/ssl.conf
            **common,  # type: ignore[arg-type]
        ),
        TLSSite(
            config_file=example,
            line=8,
            server_name="www.example.com",
            vhost="*:443",
            certificate_file=shared,
            use_stapling=True,
            **common,  # type: ignore[arg-type]
        ),
        TLSSite(
            config_file=example,
            line=17,
            server_name="static.example.com",
            vhost="*:443",
            certificate_file=shared,
            use_stapling=False,
            **common,  # type: ignore[arg-type]
        ),
        # The continued directive is reported at its first line; relative paths are under ServerRoot.
        TLSSite(line=25, certificate_file=DEBIAN / "ssl/shop.example.net.rsa.crt", **shop),  # type: ignore[arg-type]
        TLSSite(line=28, certificate_file=DEBIAN / "ssl/shop.example.net.ecdsa.crt", **shop),  # type: ignore[arg-type]
    )


def test_debian_tree_files_read_in_httpd_order() -> None:
    config = read_apache_config(DEBIAN / "apache2.conf", environment={})
    assert [f.relative_to(DEBIAN).as_posix() for f in config.files_read] == [
        "envvars",
        "apache2.conf",
        "mods-enabled/mpm_event.load",
        "mods-enabled/socache_shmcb.load",
        "mods-enabled/ssl.load",
        "mods-enabled/mpm_event.conf",
        "mods-enabled/ssl.conf",
        "ports.conf",
        "conf-enabled/security.conf",
        "conf-enabled/ssl-trust.conf",
        "sites-enabled/000-default.conf",
        "sites-enabled/default-ssl.conf",
        "sites-enabled/example.conf",
    ]


def test_envvars_assignments_resolve_variables(tmp_path: Path) -> None:
    shutil.copy(DEBIAN / "envvars", tmp_path / "envvars")
    main = write(
        tmp_path / "apache2.conf",
        """
        <VirtualHost *:443>
            SSLCertificateFile ${APACHE_LOG_DIR}/a.pem
            SSLStaplingForceURL http://${APACHE_RUN_USER}.${LANG}${APACHE_RUN_DIR}/${FROM_ENV}
        </VirtualHost>
        """,
    )
    # envvars overrides the environment, as apache2ctl sources it; $SUFFIX is "" for /etc/apache2
    environment = {"APACHE_LOG_DIR": "/elsewhere", "FROM_ENV": "kept"}
    sites = read_apache_config(main, environment=environment).sites
    assert certs(sites) == ["/var/log/apache2/a.pem"]
    assert sites[0].stapling_force_url == "http://www-data.C/var/run/apache2/kept"


def test_envvars_is_not_executed(tmp_path: Path) -> None:
    write(
        tmp_path / "envvars",
        """
        export A=$(touch pwned)
        export B=`touch pwned`
        export C="quoted;value" D=ignored
        export E='single$A'
        F=local
        export F
        if true; then export G=never; fi
        """,
    )
    main = write(
        tmp_path / "apache2.conf", "SSLStaplingForceURL ${A}|${B}|${C}|${E}|${F}|${G}\nSSLCertificateFile x\n"
    )
    (site,) = read_apache_config(main, environment={}).sites
    assert site.stapling_force_url == "${A}|${B}|quoted;value|single$A|local|${G}"
    assert not (tmp_path / "pwned").exists()


# --- RHEL /etc/httpd ------------------------------------------------------------------------------


@pytest.fixture
def rhel(tmp_path: Path) -> Path:
    """The RHEL tree copied to tmp_path, its ServerRoot "/etc/httpd" pointed at the copy."""
    root = tmp_path / "httpd"
    shutil.copytree(RHEL, root)
    conf = root / "conf" / "httpd.conf"
    text = conf.read_text()
    assert 'ServerRoot "/etc/httpd"' in text
    conf.write_text(text.replace('ServerRoot "/etc/httpd"', f'ServerRoot "{root}"'))
    return root


def test_rhel_tree(rhel: Path) -> None:
    config = read_apache_config(rhel / "conf" / "httpd.conf", server_root=Path("/nonexistent"))
    assert config.server_root == rhel  # the ServerRoot directive wins over the argument
    stapling = dict(ca_certificate_path=Path("/etc/pki/tls/certs"), use_stapling=True)
    assert config.sites == (
        TLSSite(
            config_file=rhel / "conf.d" / "example.conf",
            line=5,
            server_name="intranet.example.org",
            vhost="*:443",
            certificate_file=rhel / "conf/certs/intranet.example.org.crt",
            chain_file=None,
            ca_certificate_file=rhel / "conf/certs/internal-ca.pem",
            stapling_force_url=None,
            **stapling,  # type: ignore[arg-type]
        ),
        TLSSite(
            config_file=rhel / "conf.d" / "ssl.conf",
            line=38,
            server_name=None,
            vhost="_default_:443",
            certificate_file=Path("/etc/pki/tls/certs/localhost.crt"),
            chain_file=None,
            ca_certificate_file=None,
            stapling_force_url=None,
            # from conf.d/stapling.conf, read after ssl.conf: server-wide settings apply regardless
            **stapling,  # type: ignore[arg-type]
        ),
    )
    read_names = [f.relative_to(rhel).as_posix() for f in config.files_read]
    assert read_names == [
        "conf/httpd.conf",
        "conf.modules.d/00-base.conf",
        "conf.modules.d/00-mpm.conf",
        "conf.modules.d/00-ssl.conf",
        "conf.d/example.conf",
        "conf.d/ssl.conf",
        "conf.d/stapling.conf",
        "conf.d/welcome.conf",
    ]


def test_rhel_layout_default_server_root(rhel: Path) -> None:
    # Without ServerRoot, conf/httpd.conf sits under the compiled-in root (/etc/httpd), not in it.
    conf = rhel / "conf" / "httpd.conf"
    conf.write_text("\n".join(line for line in conf.read_text().splitlines() if "ServerRoot" not in line))
    config = read_apache_config(conf, environment={})
    assert config.server_root == rhel
    assert len(config.sites) == 2


# --- tokenizing ------------------------------------------------------------------------------------


def test_quotes_escapes_comments_and_continuations(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        r"""
        # a comment \
        SSLCertificateFile /swallowed/by/the/comment.pem
          # indented comment
        Define A "x\"z"
        Define SPACED "two words"
        Define B 'q\'r\\s'
        Define C plain\\back
        Define D con\
        tinued
        sslcertificatefile "/certs/with space.pem"
        SSLCertificateFile /certs/a#b.pem
        SSLStaplingForceURL ${A}|${B}|${C}|${D}
        SSLCERTIFICATEFILE \
            /certs/continued.pem
        SSLCertificateFile ${SPACED}
        """,
    )
    # variables are substituted into the line before it is split, like httpd does
    with pytest.raises(ApacheConfigError, match=r"main\.conf:15: SSLCertificateFile takes one argument"):
        read(main)
    main.write_text(main.read_text().replace("${SPACED}", "/spaced.pem"))
    sites = read(main)
    assert certs(sites) == ["/certs/with space.pem", "/certs/a#b.pem", "/certs/continued.pem", "/spaced.pem"]
    assert [site.line for site in sites] == [10, 11, 13, 15]
    assert sites[0].stapling_force_url == r"""x"z|q'r\s|plain\back|continued"""


def test_crlf_and_bom(tmp_path: Path) -> None:
    main = tmp_path / "main.conf"
    main.write_bytes(b"\xef\xbb\xbfSSLCertificateFile /a.pem\r\nSSLCertificateFile \\\r\n /b.pem\r\n")
    assert certs(read(main)) == ["/a.pem", "/b.pem"]


# --- Define, ${VAR} and conditional sections -------------------------------------------------------


def test_define_and_variables(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        """
        Define CERTS /etc/certs
        Define FLAG
        SSLCertificateFile ${CERTS}/a.pem
        SSLCertificateFile ${FROM_ARG}/b.pem
        SSLCertificateFile ${FROM_ENV}/c.pem
        SSLCertificateFile /${FLAG}${UNDEFINED}/d.pem
        Define CERTS /redefined
        UnDefine FROM_ARG
        SSLCertificateFile ${CERTS}/e.pem${FROM_ARG}
        """,
    )
    sites = read_apache_config(
        main,
        defines={"FROM_ARG": "/arg", "FROM_ENV": "/arg-wins"},
        environment={"FROM_ENV": "/env", "CERTS": "/env-loses"},
    ).sites
    assert certs(sites) == [
        "/etc/certs/a.pem",
        "/arg/b.pem",
        "/arg-wins/c.pem",
        "/${FLAG}${UNDEFINED}/d.pem",  # no value, undefined: kept as written
        "/redefined/e.pem${FROM_ARG}",
    ]


def test_ifdefine(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        """
        <IfDefine !TLS_OFF>
            SSLCertificateFile /not-off.pem
            <IfDefine LOCAL>
                SSLCertificateFile /local.pem
            </IfDefine>
        </IfDefine>
        <IfDefine TLS_OFF>
            SSLCertificateFile /off.pem
            Include /does/not/exist.conf
            <IfDefine TLS_OFF>
            </IfDefine>
        </IfDefine>
        Define LOCAL
        <ifdefine LOCAL>
            SSLCertificateFile /local-late.pem
        </IFDEFINE>
        """,
    )
    assert certs(read(main)) == ["/not-off.pem", "/local-late.pem"]
    with pytest.raises(ApacheConfigError, match=r"exist\.conf"):
        read(main, defines={"TLS_OFF": ""})  # now that branch is read, Include and all
    assert certs(read(main, defines={"LOCAL": "1"})) == ["/not-off.pem", "/local.pem", "/local-late.pem"]


def test_ifmodule_follows_loadmodule(tmp_path: Path) -> None:
    body = """
        <IfModule mod_ssl.c>
            SSLCertificateFile /ssl-file-name.pem
        </IfModule>
        <IfModule ssl_module>
            SSLCertificateFile /ssl-identifier.pem
        </IfModule>
        <IfModule !mod_ssl.c>
            SSLCertificateFile /no-ssl.pem
        </IfModule>
        <IfModule mod_version.c>
            SSLCertificateFile /built-in.pem
        </IfModule>
        """
    # no LoadModule at all: a static build or partial tree, every module counts as present
    assert certs(read(write(tmp_path / "static.conf", body))) == [
        "/ssl-file-name.pem",
        "/ssl-identifier.pem",
        "/built-in.pem",
    ]
    loaded = write(
        tmp_path / "loaded.conf", "LoadModule ssl_module modules/mod_ssl.so\n" + textwrap.dedent(body)
    )
    assert certs(read(loaded)) == ["/ssl-file-name.pem", "/ssl-identifier.pem", "/built-in.pem"]
    other = write(
        tmp_path / "other.conf", "LoadModule dir_module modules/mod_dir.so\n" + textwrap.dedent(body)
    )
    assert certs(read(other)) == ["/no-ssl.pem", "/built-in.pem"]


def test_iffile_and_other_conditions(tmp_path: Path) -> None:
    (tmp_path / "present").touch()
    main = write(
        tmp_path / "main.conf",
        """
        <IfFile present>
            SSLCertificateFile /present.pem
        </IfFile>
        <IfFile !present>
            SSLCertificateFile /absent.pem
        </IfFile>
        <IfVersion >= 2.4.8>
            SSLCertificateFile /fullchain.pem
        </IfVersion>
        <IfVersion < 2.4.8>
            SSLCertificateFile /cert.pem
        </IfVersion>
        <IfDirective SSLStaplingCache>
            SSLCertificateFile /directive.pem
        </IfDirective>
        <If "%{HTTP_HOST} == 'example.com'">
            SSLCertificateFile /per-request.pem
        </If>
        """,
    )
    # <IfVersion> and <IfDirective> are not evaluated: their contents are always read
    assert certs(read(main)) == ["/present.pem", "/fullchain.pem", "/cert.pem", "/directive.pem"]


def test_macro_contents_are_not_expanded(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        """
        <Macro TLSHost $name>
            <VirtualHost *:443>
                ServerName $name
                SSLCertificateFile /etc/ssl/$name.pem
            </VirtualHost>
            <Macro Inner>
            </Macro>
        </Macro>
        Use TLSHost www.example.com
        """,
    )
    assert read(main) == ()


# --- virtual hosts ---------------------------------------------------------------------------------


def test_server_wide_certificate_and_inheritance(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        """
        ServerName main.example.com
        SSLEngine on
        SSLCertificateFile /main.pem
        <VirtualHost *:443>
            SSLCertificateFile /vhost-rsa.pem
            SSLCertificateFile /vhost-ecdsa.pem
            SSLCACertificatePath ca
            SSLUseStapling OFF
        </VirtualHost>
        <VirtualHost *:8443>
            SSLEngine off
            SSLCertificateFile /plain-http.pem
        </VirtualHost>
        <Directory /srv>
            SSLCertificateFile /not-a-server-directive.pem
        </Directory>
        SSLCertificateChainFile chain.pem
        SSLStaplingForceURL http://ocsp.example/
        SSLUseStapling on
        """,
    )
    main_site, rsa, ecdsa = read(main)
    assert (main_site.vhost, main_site.server_name, main_site.line) == ("_default_", "main.example.com", 3)
    assert (rsa.vhost, rsa.server_name, rsa.certificate_file) == ("*:443", None, Path("/vhost-rsa.pem"))
    assert ecdsa.certificate_file == Path("/vhost-ecdsa.pem")
    for site in (main_site, rsa, ecdsa):
        assert site.chain_file == tmp_path / "chain.pem"
        assert site.stapling_force_url == "http://ocsp.example/"
    assert main_site.use_stapling is True and rsa.use_stapling is False
    assert (main_site.ca_certificate_path, rsa.ca_certificate_path) == (None, tmp_path / "ca")


def test_shared_certificate_yields_one_site_per_vhost(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        """
        <VirtualHost a.example:443>
            ServerName a.example
            SSLCertificateFile /shared.pem
        </VirtualHost>
        <VirtualHost b.example:443>
            ServerName b.example
            SSLCertificateFile /shared.pem
        </VirtualHost>
        """,
    )
    sites = read(main)
    assert [(s.server_name, str(s.certificate_file)) for s in sites] == [
        ("a.example", "/shared.pem"),
        ("b.example", "/shared.pem"),
    ]


def test_include_inside_vhost_belongs_to_it(tmp_path: Path) -> None:
    write(tmp_path / "options-ssl.conf", "SSLUseStapling on\nSSLCertificateChainFile /chain.pem\n")
    main = write(
        tmp_path / "main.conf",
        """
        <VirtualHost *:443>
            SSLCertificateFile /a.pem
            Include options-ssl.conf
        </VirtualHost>
        <VirtualHost *:443>
            SSLCertificateFile /b.pem
        </VirtualHost>
        """,
    )
    a, b = read(main)
    assert (a.use_stapling, a.chain_file) == (True, Path("/chain.pem"))
    assert (b.use_stapling, b.chain_file) == (None, None)


# --- includes and paths ----------------------------------------------------------------------------


def test_include_missing_errors_but_include_optional_does_not(tmp_path: Path) -> None:
    optional = write(
        tmp_path / "optional.conf",
        """
        IncludeOptional missing.conf
        IncludeOptional missing-dir/*.conf
        Include empty/*.conf
        SSLCertificateFile /ok.pem
        """,
    )
    (tmp_path / "empty").mkdir()
    assert certs(read(optional)) == ["/ok.pem"]
    strict = write(tmp_path / "strict.conf", "# strict\nInclude missing.conf\n")
    with pytest.raises(ApacheConfigError) as caught:
        read(strict)
    assert str(caught.value).startswith(f"{strict}:2: Include missing.conf: ")
    assert caught.value.file == strict and caught.value.line == 2


def test_include_directory_recursively_and_globs(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "b.conf", "SSLCertificateFile /b.pem\n")
    write(tmp_path / "conf" / "a" / "z.conf", "SSLCertificateFile /a-z.pem\n")
    write(tmp_path / "conf" / "c.txt", "SSLCertificateFile /c.pem\n")
    write(tmp_path / "sites" / "one.conf", "SSLCertificateFile /one.pem\n")
    write(tmp_path / "sites" / "one.conf.dpkg-old", "SSLCertificateFile /old.pem\n")
    write(tmp_path / "sites" / ".hidden.conf", "SSLCertificateFile /hidden.pem\n")
    write(tmp_path / "vendors" / "x" / "ssl.conf", "SSLCertificateFile /x.pem\n")
    write(tmp_path / "vendors" / "y" / "ssl.conf", "SSLCertificateFile /y.pem\n")
    main = write(tmp_path / "main.conf", "Include conf\nInclude sites/*.conf\nInclude vendors/*/ssl.conf\n")
    assert certs(read(main)) == ["/a-z.pem", "/b.pem", "/c.pem", "/one.pem", "/x.pem", "/y.pem"]


def test_relative_paths_follow_server_root(tmp_path: Path) -> None:
    write(tmp_path / "root" / "inc" / "site.conf", "SSLCertificateFile certs/site.pem\n")
    write(tmp_path / "other" / "inc" / "site.conf", "SSLCertificateFile certs/other.pem\n")
    main = write(
        tmp_path / "etc" / "main.conf",
        f"""
        Include inc/site.conf
        ServerRoot "{tmp_path / "other"}"
        Include inc/site.conf
        SSLCACertificateFile ../root/ca.pem
        """,
    )
    sites = read(main, server_root=tmp_path / "root")
    assert [s.certificate_file for s in sites] == [
        tmp_path / "root" / "certs" / "site.pem",
        tmp_path / "other" / "certs" / "other.pem",
    ]
    assert sites[0].ca_certificate_file == tmp_path / "root" / "ca.pem"
    assert (
        read_apache_config(main, server_root=tmp_path / "root", environment={}).server_root
        == tmp_path / "other"
    )
    # without ServerRoot or server_root, the main file's directory is the root
    write(tmp_path / "etc" / "inc" / "site.conf", "SSLCertificateFile certs/etc.pem\n")
    plain = write(tmp_path / "etc" / "plain.conf", "Include inc/site.conf\n")
    assert certs(read(plain)) == [str(tmp_path / "etc" / "certs" / "etc.pem")]


def test_include_recursion_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "Include b.conf\n")
    b = write(tmp_path / "b.conf", "# b\nInclude a.conf\n")
    with pytest.raises(ApacheConfigError, match="recursion") as caught:
        read(tmp_path / "a.conf")
    assert str(caught.value).startswith(f"{b}:2: ")
    selfish = write(tmp_path / "self.conf", "Include self.conf\n")
    with pytest.raises(ApacheConfigError, match="recursion"):
        read(selfish)


def test_include_depth_limit(tmp_path: Path) -> None:
    for n in range(70):
        write(tmp_path / f"{n}.conf", f"Include {n + 1}.conf\n")
    write(tmp_path / "70.conf", "SSLCertificateFile /deep.pem\n")
    with pytest.raises(ApacheConfigError, match="nested"):
        read(tmp_path / "0.conf")


def test_the_same_file_may_be_included_twice(tmp_path: Path) -> None:
    write(tmp_path / "common.conf", "SSLCertificateFile /common.pem\n")
    main = write(tmp_path / "main.conf", "Include common.conf\nInclude common.conf\n")
    config = read_apache_config(main, environment={})
    assert certs(config.sites) == ["/common.pem", "/common.pem"]
    assert config.files_read == (main, tmp_path / "common.conf")


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("<VirtualHost *:443>\n</IfModule>\n", 2, "</IfModule> without matching <IfModule> section"),
        ("ServerName x\n</VirtualHost>\n", 2, "</VirtualHost> without matching"),
        ("<IfModule ssl_module>\n<VirtualHost *:443>\n", 2, "<VirtualHost> section is not closed"),
        ("<IfDefine NOPE>\n<IfDefine X>\n</IfDefine>\n", 1, "<IfDefine> section is not closed"),
        ("\n<VirtualHost *:443\n</VirtualHost>\n", 2, "missing closing '>'"),
        ("<VirtualHost *:443>\n<VirtualHost *:8443>\n", 2, "cannot be nested"),
        ("<VirtualHost>\n</VirtualHost>\n", 1, "needs an address"),
        ("SSLUseStapling maybe\n", 1, "SSLUseStapling must be On or Off"),
        ("SSLCertificateFile\n", 1, "SSLCertificateFile takes one argument"),
        ("Include a.conf b.conf\n", 1, "Include takes one argument"),
    ],
)
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    main = tmp_path / "main.conf"
    main.write_text(text)
    with pytest.raises(ApacheConfigError) as caught:
        read(main)
    assert str(caught.value).startswith(f"{main}:{line}: ")
    assert message in str(caught.value)


def test_unbalanced_section_in_included_file(tmp_path: Path) -> None:
    # httpd parses every file on its own: a section cannot close in another file
    write(tmp_path / "close.conf", "# closes\n</IfModule>\n")
    main = write(tmp_path / "main.conf", "<IfModule ssl_module>\nInclude close.conf\n</IfModule>\n")
    with pytest.raises(ApacheConfigError, match=r"close\.conf:2: </IfModule> without matching"):
        read(main)


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(ApacheConfigError, match=r"missing\.conf: cannot read"):
        read(tmp_path / "missing.conf")


def test_misspelt_mod_ssl_directives_are_noted(tmp_path: Path) -> None:
    main = write(
        tmp_path / "httpd.conf",
        """
        LoadModule ssl_module modules/mod_ssl.so
        <VirtualHost *:443>
            ServerName a.example
            SSLEngine on
            SSLCertificateFiel /etc/ssl/a.pem
            sslusestapeling on
            SSLFrobnicate on
            sslcertificatekeyfile /etc/ssl/a.key
        </VirtualHost>
        <IfModule !ssl_module>
            SSLCertificateFiel /etc/ssl/skipped.pem
        </IfModule>
        """,
    )
    config = read_apache_config(main, environment={})
    assert config.sites == ()
    assert [str(m) for m in config.misspellings] == [
        f"SSLCertificateFiel at {main}:5 (mod_ssl has SSLCertificateFile)",
        f"sslusestapeling at {main}:6 (mod_ssl has SSLUseStapling)",
    ]  # not a name close to none (SSLFrobnicate), nor one spelt in another case, nor an unread section
    assert config.no_sites() == (
        f"Apache configuration {main} (1 file read) has no TLS virtual host: no SSLCertificateFile in effect"
    )
