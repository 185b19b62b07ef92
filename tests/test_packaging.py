"""What ``pip install .`` gives: the wheel built with the oldest setuptools
``build-system`` admits, its commands (the legacy tool's ``session`` among
them), the systemd units and the LICENSE; and those commands, installed in
the environment that runs the tests, against a real daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

import pytest

from sessiond import __version__
from tests.conftest import BIN, Daemon
from tests.test_shim import shim

ROOT = Path(__file__).resolve().parent.parent
SESSION = str(BIN / "session")
# What a build must not see: caches, environments and earlier builds (a
# stale build/ dir can put deleted modules in a wheel).
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "build", "dist", "*.egg-info", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis",
)


def setuptools_floor() -> str:
    """The lowest setuptools ``[build-system] requires`` admits."""
    text = (ROOT / "pyproject.toml").read_text()
    system = text.split("[build-system]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'"setuptools>=([0-9][0-9.]*)"', system)
    assert found, f"no setuptools>= floor in [build-system]: {system!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """``pip wheel . --no-deps`` on a copy of the source, with the lowest
    setuptools the project says it builds with."""
    where = tmp_path_factory.mktemp("wheel")
    source = where / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    pin = where / "build-constraints.txt"
    pin.write_text(f"setuptools=={setuptools_floor()}\n")
    out = where / "dist"
    pip = [sys.executable, "-m", "pip"]
    env = dict(os.environ)
    command = [*pip, "wheel", ".", "--no-deps", "--quiet", "--wheel-dir", str(out)]
    # pip 25.3 and later take build constraints as such (and from 26.2 on
    # no longer apply PIP_CONSTRAINT to builds); the pip a venv starts with
    # may be older, and applies PIP_CONSTRAINT to the build environment.
    helped = subprocess.run([*pip, "wheel", "--help"], capture_output=True, text=True,
                            timeout=60, check=True)
    if "--build-constraint" in helped.stdout:
        command += ["--build-constraint", str(pin)]
    else:
        env["PIP_CONSTRAINT"] = str(pin)
    r = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True,
                       timeout=100, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = out.glob("sessiond-*.whl")
    return zipfile.ZipFile(built)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    return wheel.read(f"sessiond-{__version__}.dist-info/{name}").decode()


def test_the_wheel_builds_with_the_oldest_setuptools_build_system_names(
    wheel: zipfile.ZipFile,
) -> None:
    assert f"Generator: setuptools ({setuptools_floor()})" in dist_info(wheel, "WHEEL")


def test_the_wheel_installs_the_three_commands(wheel: zipfile.ZipFile) -> None:
    scripts = dist_info(wheel, "entry_points.txt").split("[console_scripts]\n", 1)[1]
    entries = dict(
        (name.strip(), target.strip())
        for name, _, target in (line.partition("=") for line in scripts.splitlines())
        if target
    )
    assert entries == {
        # python -m sessiond's main: it blocks the daemon's signals before
        # the daemon's modules are imported (sessiond.daemon.SIGNALS).
        "sessiond": "sessiond.__main__:main",
        "sessionctl": "sessionctl.cli:main",
        # The legacy tool's own name, the code scripts/script.sh runs.
        "session": "sessionctl.shim:main",
    }
    assert "from sessionctl.shim import main" in (ROOT / "scripts" / "script.sh").read_text()


def test_the_wheel_ships_the_units_the_templates_the_license_and_python_m_sessiond(
    wheel: zipfile.ZipFile,
) -> None:
    names = set(wheel.namelist())
    for unit in ("sessiond.service", "sessiond.socket"):
        assert wheel.read(f"sessiond/units/{unit}") == (ROOT / "systemd" / unit).read_bytes()
    license_file = f"sessiond-{__version__}.dist-info/licenses/LICENSE"
    assert license_file in names
    assert wheel.read(license_file) == (ROOT / "LICENSE").read_bytes()
    assert "Copyright (c)" in wheel.read(license_file).decode()
    assert {"sessiond/__main__.py", "sessiond/py.typed", "sessionctl/py.typed",
            "sessiond/shared/__init__.py", "sessiond/shared/scripts.py"} <= names
    # The completion scripts' templates: `sessionctl completion` reads them.
    for shell in ("bash", "zsh", "fish"):
        template = f"sessionctl/shells/{shell}.tmpl"
        assert wheel.read(template) == (ROOT / template).read_bytes()


def test_the_wheel_metadata_declares_the_license_and_the_pythons(
    wheel: zipfile.ZipFile,
) -> None:
    meta = Parser().parsestr(dist_info(wheel, "METADATA"))
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    floor = meta["Requires-Python"]
    assert floor == ">=3.11"
    classifiers = meta.get_all("Classifier") or []
    declared = sorted(c.rsplit(" ", 1)[1] for c in classifiers
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    # The oldest version a classifier names is the one requires-python names.
    assert declared and declared[0] == floor.removeprefix(">=")
    assert "Operating System :: POSIX :: Linux" in classifiers
    # The test extra runs the tests; the linters are the dev extra's.
    requires = meta.get_all("Requires-Dist") or []
    by_extra: dict[str, set[str]] = {}
    for req in requires:
        name = re.match(r"[A-Za-z0-9_.-]+", req)
        extra = re.search(r'extra == "(\w+)"', req)
        if name and extra:
            by_extra.setdefault(extra.group(1), set()).add(name.group(0))
    # (redis-py: the suite runs shared mode against real Redis servers;
    # trio: AsyncClient is tested under trio as well as asyncio; xdist: the
    # suite runs on every CPU.)
    assert by_extra["test"] == {"pytest", "hypothesis", "pytest-timeout", "pytest-xdist",
                                 "redis", "hiredis", "trio"}
    assert by_extra["dev"] == {"ruff", "mypy"}
    assert by_extra["shared"] == {"redis", "hiredis"}


# -- the installed commands, against a real daemon -----------------------


def session(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``session`` command, from a directory that is not the
    repository, as a legacy user's script would run it."""
    where = d.root / "elsewhere"
    where.mkdir(exist_ok=True)
    return subprocess.run([SESSION, *args], env=d.env, cwd=where, capture_output=True,
                          text=True, timeout=30, check=False)


SAME_ANSWERS = [
    ("get", "known"),
    ("get", "missing"),
    ("list", "--user", "alice"),
    ("list", "--status", "nonsense"),
    ("set", "known"),
    ("expire",),
    ("cleanup", "--dry-run"),
    ("cleanup", "--before", "not-a-time"),
    ("config", "default_ttl"),
    ("frobnicate",),
    ("help",),
    ("version",),
]


@pytest.mark.parametrize("args", SAME_ANSWERS, ids=" ".join)
def test_the_session_command_answers_as_script_sh_does(
    daemon: Daemon, args: tuple[str, ...],
) -> None:
    with daemon.client() as c:
        c.create(id="known", user="alice", meta={"k": "v"})
    via_command = session(daemon, *args)
    via_script = shim(daemon, *args)
    assert (via_command.returncode, via_command.stdout, via_command.stderr) == (
        via_script.returncode, via_script.stdout, via_script.stderr)
    assert via_command.stdout or via_command.stderr


def test_the_session_command_changes_what_script_sh_then_reads(daemon: Daemon) -> None:
    made = session(daemon, "create", "--user", "bob", "--ttl", "600", "--meta", "a=1,b=2")
    assert made.returncode == 0, made.stderr
    sid = json.loads(made.stdout)["session"]["id"]
    assert session(daemon, "set", sid, "c", "3").returncode == 0
    seen = json.loads(shim(daemon, "get", sid).stdout)["session"]
    assert seen["user"] == "bob" and seen["meta"] == {"a": "1", "b": "2", "c": "3"}
    assert session(daemon, "delete", sid).returncode == 0
    gone = shim(daemon, "get", sid)
    assert gone.returncode == 1 and json.loads(gone.stdout)["ok"] is False


def test_python_m_sessiond_runs_the_daemon(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    (d.root / "run").mkdir(mode=0o700)
    with d.log.open("ab") as log:
        d.proc = subprocess.Popen([sys.executable, "-m", "sessiond"], env=d.env,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    d.wait_ready()
    with d.client() as c:
        assert c.ping().pid == d.proc.pid
    assert f"sessiond {__version__} ready on {d.socket}" in d.log_text()
    assert d.stop() == 0
    version = subprocess.run([sys.executable, "-m", "sessiond", "--version"], env=d.env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert (version.returncode, version.stdout) == (0, f"sessiond {__version__}\n")
