"""What keeps ``sessionctl`` quick to start, and that being quick changed
nothing: the fast command-line reader agrees with argparse wherever it
answers, the socket path worked out without pathlib is pathlib's, and the
hot commands import nothing they do not need.

Speed itself is measured by ``scripts/bench.py``, never here.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sessionctl
from sessionctl import cli, registry, usage
from sessiond import paths
from sessiond.errors import InvalidRequest
from tests.conftest import Daemon, running

OPTIONS = sorted(
    {a.name for c in registry.COMMANDS.values() for a in c.arguments if a.name.startswith("-")}
    | {a.name for a in registry.GLOBALS}
)
# Values that are fine, values each check refuses, and the shapes argparse
# treats specially (dashes, spaces, '=', empty, negative numbers).
WORDS = [
    "s1", "abc.DEF_-9", "x" * 128, "x" * 129, "bad/id", "", " ", "a b", "-", "--", "-5", "-x",
    "-a b", "0", "5", "+5", "1_0", " 7", "٣", "99999999999999999999", "k=v", "=v", " k = v ",
    "active", "expired", "bogus", "json", "jsonl", "csv", "/tmp/x", "~/s", "rel//s/", "é",
    "--tou", "--soc", "-h", "--help", "--json=1", "--touch=", "--socket=", "--socket=/s",
    "--user=", "--user=u", "--ttl=5", "--limit=0", "--meta=a=b", "--status=active",
    "--format=csv", "--id=abc", "--before=2020", "HELP",
    "--version", "-q", "-7d", "+2h", "-5", "90m", "--before=-7d", "-qv", "--",
]
TOKENS = st.sampled_from([*registry.COMMANDS, *OPTIONS, *OPTIONS, *WORDS])


def argparse_reading(argv: list[str]) -> tuple[str, Any]:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return "ok", vars(usage.parse_with_argparse(argv))
    except registry.UsageError as exc:
        return "usage", str(exc)
    except SystemExit as exc:
        return "exit", (exc.code, out.getvalue())


def check_agreement(argv: list[str]) -> None:
    fast = cli.parse_fast(argv)
    slow = argparse_reading(argv)
    if fast is not None:
        assert slow == ("ok", vars(fast)), argv
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            combined: tuple[str, Any] = ("ok", vars(cli.parse(argv)))
    except registry.UsageError as exc:
        combined = ("usage", str(exc))
    except SystemExit as exc:
        combined = ("exit", (exc.code, out.getvalue()))
    assert combined == slow, argv


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, max_size=7))
def test_any_command_line_reads_as_argparse_reads_it(argv: list[str]) -> None:
    check_agreement(argv)


@st.composite
def plausible(draw: st.DrawFn) -> list[str]:
    """A command with the arguments it takes, options in any order and in
    either form, now and then one stray token."""
    name = draw(st.sampled_from(list(registry.COMMANDS)))
    arguments = registry.COMMANDS[name].arguments
    words: list[str] = []
    for arg in arguments:
        if arg.name.startswith("-"):
            continue
        if arg.kind == registry.OPTIONAL and draw(st.booleans()):
            break
        words.append(draw(st.sampled_from(["s1", "abc", "k", "v", "a b", "", "get"])))
    options: list[list[str]] = []
    for arg in draw(st.permutations([*registry.GLOBALS, *(a for a in arguments
                                                      if a.name.startswith("-"))])):
        if not draw(st.booleans()):
            continue
        if arg.kind == registry.FLAG:
            options.append([arg.name])
            continue
        allowed = arg.allowed()
        value = draw(st.sampled_from(list(allowed) if allowed else ["u", "5", "k=v", "/s"]))
        options.append([f"{arg.name}={value}"] if draw(st.booleans()) else [arg.name, value])
    cut = draw(st.integers(0, len(options)))
    argv = [t for o in options[:cut] for t in o] + words + [t for o in options[cut:] for t in o]
    if draw(st.booleans()):
        argv = ["--json", *argv] if draw(st.booleans()) else ["--socket", "/pre", *argv]
        argv.insert(2 if argv[0] == "--socket" else 1, name)
    else:
        argv.insert(0, name)
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(TOKENS))
    return argv


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plausible())
def test_ordinary_command_lines_read_as_argparse_reads_them(argv: list[str]) -> None:
    check_agreement(argv)


@pytest.mark.parametrize("argv", [
    ["get", "s1"], ["--json", "get", "s1", "--touch"], ["set", "s1", "k", "a b"],
    ["create", "--user", "u", "--meta", "a=1", "--meta=b=2", "--ttl", "60"],
    ["list", "--limit", "5", "--status", "active"], ["stats", "--json"], ["version"],
    ["version", "--client"], ["--version"], ["import", "f", "-q"], ["cleanup", "--before", "-7d"],
    ["create", "--ttl", "1h30m"], ["watch", "--reconnect-timeout", "5s"],
    ["config"], ["config", "default_ttl"], ["config", "default_ttl", "60"],
    ["--socket", "/s", "ping", "--no-autostart"], ["export", "--format=csv"],
    ["cleanup", "--dry-run", "--before", "2026-01-01"], ["refresh", "s1", "--revive"],
])
def test_the_usual_command_lines_take_the_fast_path(argv: list[str]) -> None:
    fast = cli.parse_fast(argv)
    assert fast is not None
    assert argparse_reading(argv) == ("ok", vars(fast))


def test_every_command_names_a_handler_that_takes_what_run_gives_it() -> None:
    # Handlers are named by string, to be imported only when they run: a
    # typo would otherwise surface only when someone runs that command.
    for name, command in registry.COMMANDS.items():
        handler = cli.load(command.handler)
        wanted = ["c", "args"] if command.daemon else ["args"]
        assert list(inspect.signature(handler).parameters) == wanted, name
        if command.prepare is not None:
            assert command.daemon, name
            assert list(inspect.signature(cli.load(command.prepare)).parameters) == ["args"]


@given(st.text(alphabet="/.~ab", max_size=12))
def test_the_socket_path_is_pathlibs(text: str) -> None:
    env = {paths.SOCKET_ENV: text, "XDG_RUNTIME_DIR": text}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        try:
            expected = str(paths.socket_path())
        except InvalidRequest:  # "~a": no such user, so no home to expand to
            with pytest.raises(InvalidRequest):
                paths.socket_location()
        else:
            assert paths.socket_location() == expected
        mp.delenv(paths.SOCKET_ENV)
        assert paths.socket_location() == str(paths.socket_path())


def test_the_package_exports_what_it_lists() -> None:
    assert sorted(sessionctl._HOME) == sorted(sessionctl.__all__)
    for name in sessionctl.__all__:
        assert getattr(sessionctl, name).__name__ == name
    assert set(sessionctl.__all__) <= set(dir(sessionctl))
    with pytest.raises(AttributeError):
        sessionctl.Nothing  # noqa: B018


# -- what a run imports --------------------------------------------------------


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("startup")) as daemon:
        yield daemon


def imported_by(env: dict[str, str], *argv: str) -> set[str]:
    """Modules a ``sessionctl`` run imports beyond those the interpreter
    starts with."""
    script = """
import json, sys
before = set(sys.modules)
from sessionctl.cli import main
status = main(sys.argv[1:])
sys.stderr.write(json.dumps([status, sorted(set(sys.modules) - before)]) + "\\n")
"""
    r = subprocess.run([sys.executable, "-c", script, *argv], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    status, modules = json.loads(r.stderr.splitlines()[-1])
    assert status == 0, r.stderr
    return set(modules)


def imported_by_python(code: str) -> set[str]:
    """Modules ``code`` imports in a fresh interpreter, beyond those the
    interpreter starts with."""
    script = f"""
import json, sys
before = set(sys.modules)
{code}
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, check=True)
    return set(json.loads(r.stdout))


def test_the_blocking_client_never_imports_anyio_and_the_async_one_does() -> None:
    plain = imported_by_python("import sessionctl; sessionctl.Client; sessionctl.Session")
    assert "sessionctl.client" in plain
    assert not {"anyio", "sessionctl.aclient", "trio", "asyncio"} & plain
    assert "anyio" in imported_by_python("import sessionctl; sessionctl.AsyncClient")
    assert imported_by_python("from sessionctl import Client, Pipeline, ClientClosed").isdisjoint(
        {"anyio", "sessionctl.aclient"})


def test_version_client_imports_neither_msgspec_nor_typing_nor_argparse(d: Daemon) -> None:
    # The floor of every run: the command line read, a line printed. (Plain
    # ``version`` also asks the daemon, so it loads the client.)
    loaded = imported_by(d.env, "version", "--client")
    assert not {"msgspec", "typing", "argparse", "sessiond.model"} & loaded, loaded


def test_get_imports_no_argparse_pathlib_or_platformdirs(d: Daemon) -> None:
    with d.client() as c:
        sid = c.create(user="startup").id
    # The socket named by SESSIOND_SOCKET, then found at its default place
    # under XDG_RUNTIME_DIR (a link to the same socket).
    runtime = d.root / "xrt"
    (runtime / "sessiond").mkdir(mode=0o700, parents=True, exist_ok=True)
    link = runtime / "sessiond" / "sessiond.sock"
    if not link.is_symlink():
        os.symlink(d.socket, link)
    by_default = {k: v for k, v in d.env.items() if k != "SESSIOND_SOCKET"}
    by_default["XDG_RUNTIME_DIR"] = str(runtime)
    unwanted = {"argparse", "pathlib", "platformdirs", "dataclasses", "anyio", "shutil",
                "sessionctl.pipeline", "sessionctl.arguments", "sessionctl.aclient"}
    for env in (d.env, by_default):
        loaded = imported_by(env, "get", sid)
        assert not unwanted & loaded, unwanted & loaded
