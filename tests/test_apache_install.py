"""``ocspproxy apache install`` on Debian- and RHEL-like temporary trees, with a stubbed Apache: what is
written, where, which config test runs, exact rollback, idempotence, reload."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from ocspproxy.apache.commands import Context, install_command
from ocspproxy.apache.ctl import Layout, RunResult, Tools, discover_tools
from ocspproxy.apache.snippet import render_snippet

FIXTURES = Path(__file__).parent / "fixtures" / "apache"
URL = "http://127.0.0.1:2560/"
DEBIAN_TOOLS = Tools(
    ctl="/usr/sbin/apache2ctl",
    httpd="/usr/sbin/apache2",
    systemctl="/usr/bin/systemctl",
    control_names=("/usr/sbin/apache2ctl",),
)
RHEL_TOOLS = Tools(
    ctl="/usr/sbin/apachectl", httpd="/usr/sbin/httpd", systemctl=None, control_names=("/usr/sbin/apachectl",)
)


class FakeApache:
    """Answers ``-V`` (compiled-in config), ``-t`` (next result of ``tests``) and reloads; records calls."""

    def __init__(self, *, compiled: Path, tests: Sequence[int] = (0,), reloads: Sequence[int] = (0,)) -> None:
        self.compiled = compiled
        self.tests = list(tests)
        self.reloads = list(reloads)
        self.calls: list[tuple[tuple[str, ...], Mapping[str, str] | None]] = []

    def __call__(self, argv: Sequence[str], *, env: Mapping[str, str] | None, timeout: float) -> RunResult:
        assert 0 < timeout <= 120
        self.calls.append((tuple(argv), env))
        if "-V" in argv:
            root, name = self.compiled.parent, self.compiled.name
            return RunResult(
                returncode=0, output=f' -D HTTPD_ROOT="{root}"\n -D SERVER_CONFIG_FILE="{name}"\n'
            )
        if "-t" in argv:
            rc = self.tests.pop(0)
            return RunResult(returncode=rc, output="Syntax OK\n" if rc == 0 else "AH00526: Syntax error\n")
        rc = self.reloads.pop(0)
        return RunResult(returncode=rc, output="" if rc == 0 else "reload failed\n")

    @property
    def tests_run(self) -> list[tuple[str, ...]]:
        return [argv for argv, _ in self.calls if "-t" in argv]


class Run:
    def __init__(self, fake: FakeApache, tools: Tools) -> None:
        self.fake = fake
        self.tools = tools
        self.out: list[str] = []
        self.err: list[str] = []

    def __call__(self, main: Path, *, dry_run: bool = False, reload: bool = False, url: str = URL) -> int:
        ctx = Context(
            out=self.out.append, err=self.err.append, runner=self.fake, tools=self.tools, environment={}
        )
        return install_command(
            apache_config=main, proxy_url=url, config_file=None, dry_run=dry_run, reload=reload, ctx=ctx
        )

    @property
    def text(self) -> str:
        return "\n".join(self.out)


def state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below root with its kind, content or target, mode and mtime."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if path.is_symlink():
                out[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif path.is_file():
                out[str(path.relative_to(root))] = ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns)
            else:
                out[str(path.relative_to(root))] = ("dir", st.st_mode)
    return out


@pytest.fixture
def debian(tmp_path: Path) -> Path:
    root = tmp_path / "apache2"
    shutil.copytree(FIXTURES / "debian", root, symlinks=True)
    (root / "conf-available").mkdir()
    return root / "apache2.conf"


@pytest.fixture
def rhel(tmp_path: Path) -> Path:
    root = tmp_path / "httpd"
    shutil.copytree(FIXTURES / "rhel", root, symlinks=True)
    main = root / "conf" / "httpd.conf"
    main.write_text(main.read_text().replace('ServerRoot "/etc/httpd"', f'ServerRoot "{root}"'))
    return main


def _elsewhere(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "apache2" / "apache2.conf"  # Apache's default is not the tree under test


# --- Debian --------------------------------------------------------------------------------------


def test_debian_dry_run_changes_nothing(debian: Path, tmp_path: Path) -> None:
    run = Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)
    before = state(debian.parent)
    assert run(debian, dry_run=True, reload=True) == 0
    assert state(debian.parent) == before
    root = debian.parent
    assert f"{root}/conf-available/ocspproxy.conf: would create" in run.out
    assert f"{root}/conf-enabled/ocspproxy.conf: would link to ../conf-available/ocspproxy.conf" in run.out
    assert "  +    SSLStaplingForceURL http://127.0.0.1:2560/" in run.out  # the content it would write
    assert (
        f"would test the configuration with: APACHE_CONFDIR={root} . {root}/envvars && "
        f"/usr/sbin/apache2 -t -f {debian} -d {root}"
    ) in run.out
    assert any(line.startswith("would reload Apache with: ") and "-k graceful" in line for line in run.out)
    assert run.out[-1] == "dry run: nothing changed"
    assert run.fake.tests_run == []


def test_debian_install(debian: Path, tmp_path: Path) -> None:
    run = Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)
    assert run(debian) == 0, run.text + "\n".join(run.err)
    root = debian.parent
    written = root / "conf-available" / "ocspproxy.conf"
    link = root / "conf-enabled" / "ocspproxy.conf"
    assert written.read_text() == render_snippet(
        proxy_url=URL, layout=Layout.DEBIAN, certificates=4, answer_budget=3.0, skew=60.0
    )
    assert written.stat().st_mode & 0o777 == 0o644
    assert os.readlink(link) == "../conf-available/ocspproxy.conf"
    ((argv, env),) = [(a, e) for a, e in run.fake.calls if "-t" in a]
    assert argv[:2] == ("/bin/sh", "-c") and argv[4] == str(root / "envvars")
    assert argv[5:] == ("/usr/sbin/apache2", "-t", "-f", str(debian), "-d", str(root))
    assert env is not None and env["APACHE_CONFDIR"] == str(root)
    assert f"{written}: created" in run.out
    assert f"{link} -> ../conf-available/ocspproxy.conf: created" in run.out
    assert "  | Syntax OK" in run.out
    assert "installed: Apache staples through ocspproxy once reloaded" in run.out
    assert any(line.startswith("Apache not reloaded (no --reload)") for line in run.out)
    # what competes with the snippet, by file:line
    example = root / "sites-enabled" / "example.conf"
    assert any(
        line.startswith(f"warning: {example}:31: SSLStaplingForceURL http://ocsp.example.net/")
        for line in run.out
    )
    assert any(line.startswith(f"warning: {example}:19: SSLUseStapling off") for line in run.out)
    assert any(
        line.startswith(f"warning: {root}/mods-enabled/ssl.conf:24: SSLStaplingCache") for line in run.out
    )
    # the only changes: the file and the link
    assert {p.name for p in (root / "conf-available").iterdir()} == {"ocspproxy.conf"}


def test_debian_install_twice_is_unchanged(debian: Path, tmp_path: Path) -> None:
    assert Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)(debian) == 0
    before = state(debian.parent)
    run = Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)
    assert run(debian) == 0
    assert state(debian.parent) == before
    root = debian.parent
    assert f"{root}/conf-available/ocspproxy.conf: unchanged" in run.out
    assert f"{root}/conf-enabled/ocspproxy.conf -> ../conf-available/ocspproxy.conf: unchanged" in run.out
    assert "unchanged: already installed" in run.out


def _previous_state(debian: Path) -> None:
    old = debian.parent / "conf-available" / "ocspproxy.conf"
    old.write_text("# written by hand from the README\nSSLUseStapling on\n")
    old.chmod(0o640)
    os.utime(old, ns=(1_577_836_800_000_000_000, 1_577_836_800_000_000_000))
    (debian.parent / "conf-enabled" / "ocspproxy.conf").symlink_to("../conf-available/old-ocspproxy.conf")


def test_failed_config_test_restores_file_and_link_exactly(debian: Path, tmp_path: Path) -> None:
    _previous_state(debian)
    before = state(debian.parent)
    run = Run(FakeApache(compiled=_elsewhere(tmp_path), tests=[1, 0]), DEBIAN_TOOLS)
    assert run(debian) == 1
    assert state(debian.parent) == before  # content, mode, mtime, link target
    root = debian.parent
    assert f"{root}/conf-available/ocspproxy.conf: will replace" in run.out
    assert "  -SSLUseStapling on" in run.out  # the diff shows what goes
    assert "  | AH00526: Syntax error" in run.out
    assert (
        f"rolled back {root}/conf-enabled/ocspproxy.conf: -> ../conf-available/old-ocspproxy.conf again"
        in run.out
    )
    assert f"rolled back {root}/conf-available/ocspproxy.conf: previous content, mode and owner" in run.out
    assert run.err == ["ocspproxy: Apache's config test failed with ocspproxy's settings; rolled back"]
    assert len(run.fake.tests_run) == 2  # with, then without ocspproxy's file


def test_failed_config_test_of_a_broken_tree(debian: Path, tmp_path: Path) -> None:
    before = state(debian.parent)
    run = Run(FakeApache(compiled=_elsewhere(tmp_path), tests=[1, 1]), DEBIAN_TOOLS)
    assert run(debian) == 1
    assert state(debian.parent) == before
    assert "fails without ocspproxy's settings too" in run.err[0]


def test_unchanged_but_failing_config_test(debian: Path, tmp_path: Path) -> None:
    assert Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)(debian) == 0
    before = state(debian.parent)
    run = Run(FakeApache(compiled=_elsewhere(tmp_path), tests=[1]), DEBIAN_TOOLS)
    assert run(debian) == 1
    assert state(debian.parent) == before
    assert "not because of ocspproxy's file" in run.err[0]


def test_regular_file_where_the_link_goes_is_refused(debian: Path, tmp_path: Path) -> None:
    (debian.parent / "conf-enabled" / "ocspproxy.conf").write_text("# mine\n")
    before = state(debian.parent)
    run = Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)
    assert run(debian) == 2
    assert state(debian.parent) == before
    assert "is a regular file" in run.err[0] and "nothing changed" in run.err[0]


def test_https_proxy_url_is_refused(debian: Path, tmp_path: Path) -> None:
    before = state(debian.parent)
    run = Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)
    assert run(debian, url="https://127.0.0.1:2560/") == 2
    assert state(debian.parent) == before and "refusing https://" in run.err[0]


def test_no_apache_program_to_test_with(debian: Path, tmp_path: Path) -> None:
    before = state(debian.parent)
    run = Run(FakeApache(compiled=_elsewhere(tmp_path)), Tools())
    assert run(debian) == 2
    assert state(debian.parent) == before and "no apache2 or httpd program" in run.err[0]


def test_reload_of_the_default_tree(debian: Path) -> None:
    fake = FakeApache(compiled=debian, reloads=[1, 0])  # systemctl fails, apache2ctl works
    run = Run(fake, DEBIAN_TOOLS)
    assert run(debian, reload=True) == 0
    argvs = [argv for argv, _ in fake.calls if "-V" not in argv]
    assert argvs == [
        ("/usr/sbin/apache2ctl", "-t"),  # Apache's own tree: its own control script
        ("/usr/bin/systemctl", "reload", "apache2"),
        ("/usr/sbin/apache2ctl", "graceful"),
    ]
    assert run.out[-1] == "Apache reloaded"
    # A fallback that works needs no error above it.
    assert "  | reload failed" not in run.out and "  exit status 1" not in run.out
    assert run.out[-3:] == [
        "running: /usr/bin/systemctl reload apache2",
        "running: /usr/sbin/apache2ctl graceful",
        "Apache reloaded",
    ]


def test_reload_without_systemd_goes_straight_to_apachectl(debian: Path) -> None:
    found = {"apache2ctl": "/usr/sbin/apache2ctl", "apache2": "/usr/sbin/apache2"}
    found["systemctl"] = "/usr/bin/systemctl"  # installed, but not the running init (a container)
    tools = discover_tools(lambda name, path: found.get(name), booted=lambda: False)
    fake = FakeApache(compiled=debian, reloads=[0])
    run = Run(fake, tools)
    assert run(debian, reload=True) == 0
    reloads = [argv for argv, _ in fake.calls if "-V" not in argv and "-t" not in argv]
    assert reloads == [("/usr/sbin/apache2ctl", "graceful")]
    assert not any("systemctl" in line for line in run.out)


def test_failed_reload_keeps_the_configuration(debian: Path) -> None:
    run = Run(FakeApache(compiled=debian, reloads=[1, 1]), DEBIAN_TOOLS)
    assert run(debian, reload=True) == 1
    assert (debian.parent / "conf-enabled" / "ocspproxy.conf").is_symlink()
    assert "configuration stays installed" in run.err[0]
    # Every method failed: now what each said is shown, each under its command.
    assert run.out[-8:] == [
        "running: /usr/bin/systemctl reload apache2",
        "running: /usr/sbin/apache2ctl graceful",
        "failed: /usr/bin/systemctl reload apache2",
        "  | reload failed",
        "  exit status 1",
        "failed: /usr/sbin/apache2ctl graceful",
        "  | reload failed",
        "  exit status 1",
    ]


# --- RHEL ----------------------------------------------------------------------------------------


def test_rhel_install(rhel: Path, tmp_path: Path) -> None:
    run = Run(FakeApache(compiled=tmp_path / "etc" / "httpd" / "conf" / "httpd.conf"), RHEL_TOOLS)
    assert run(rhel) == 0, run.text + "\n".join(run.err)
    root = rhel.parent.parent
    written = root / "conf.d" / "ocspproxy.conf"
    assert written.read_text() == render_snippet(
        proxy_url=URL, layout=Layout.RHEL, certificates=2, answer_budget=3.0, skew=60.0
    )
    assert '"shmcb:/run/httpd/ssl_stapling(1048576)"' in written.read_text()
    ((argv, env),) = [(a, e) for a, e in run.fake.calls if "-t" in a]
    assert argv == ("/usr/sbin/httpd", "-t", "-f", str(rhel), "-d", str(root)) and env is None
    assert "layout: RHEL (conf/ + conf.d/)" in run.out
    stapling = root / "conf.d" / "stapling.conf"
    assert any(line.startswith(f"warning: {stapling}:2: SSLStaplingCache") for line in run.out)
    again = Run(FakeApache(compiled=tmp_path / "elsewhere.conf"), RHEL_TOOLS)
    assert again(rhel) == 0 and f"{written}: unchanged" in again.out


def test_rhel_tree_that_does_not_read_conf_d_is_rolled_back(tmp_path: Path) -> None:
    root = tmp_path / "httpd"
    shutil.copytree(FIXTURES / "rhel", root)  # ServerRoot "/etc/httpd": conf.d/ of this tree is not read
    before = state(root)
    run = Run(FakeApache(compiled=tmp_path / "elsewhere.conf"), RHEL_TOOLS)
    assert run(root / "conf" / "httpd.conf") == 1
    assert state(root) == before
    assert "does not read" in run.err[0] and run.fake.tests_run == []


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    main = tmp_path / "httpd.conf"
    main.write_text("Listen 80\n")
    run = Run(FakeApache(compiled=tmp_path / "elsewhere.conf"), RHEL_TOOLS)
    assert run(main) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["httpd.conf"]
    assert "neither a Debian layout" in run.err[0] and "ocspproxy apache snippet" in run.err[0]


def test_absolute_link_to_the_file_counts_as_enabled(debian: Path, tmp_path: Path) -> None:
    assert Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)(debian) == 0
    link = debian.parent / "conf-enabled" / "ocspproxy.conf"
    link.unlink()
    link.symlink_to(debian.parent / "conf-available" / "ocspproxy.conf")  # as `ln -s` by hand makes it
    run = Run(FakeApache(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)
    assert run(debian) == 0
    assert f"{link} -> {debian.parent}/conf-available/ocspproxy.conf: unchanged" in run.out
    assert os.readlink(link) == str(debian.parent / "conf-available" / "ocspproxy.conf")


def test_interrupted_config_test_is_rolled_back(debian: Path, tmp_path: Path) -> None:
    class Interrupted(FakeApache):
        def __call__(
            self, argv: Sequence[str], *, env: Mapping[str, str] | None, timeout: float
        ) -> RunResult:
            if "-t" in argv:
                raise KeyboardInterrupt
            return super().__call__(argv, env=env, timeout=timeout)

    before = state(debian.parent)
    run = Run(Interrupted(compiled=_elsewhere(tmp_path)), DEBIAN_TOOLS)
    with pytest.raises(KeyboardInterrupt):
        run(debian)
    assert state(debian.parent) == before
    assert any(line.startswith("rolled back") for line in run.out)
