"""``Client()`` starts the daemon when none answers, as ``sessionctl`` does,
unless ``autostart=False`` or ``SESSIONCTL_NO_AUTOSTART=1`` says not to; and
each tool says how to turn autostart back on in its own words: Python
arguments from Python, flags from the CLI, the environment from the shim.

Every path a started daemon uses (HOME, XDG_RUNTIME_DIR, XDG_CONFIG_HOME,
SESSIOND_DATA_DIR, SESSIOND_CONFIG) is in a temp dir, and every daemon a
test starts is found and stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from sessionctl import Client, DaemonUnavailable, InvalidRequest
from sessionctl.connection import NO_AUTOSTART_ENV
from tests.conftest import SESSIONCTL, gone, wait_until
from tests.test_shim import BASH, SCRIPT, legacy_error

pytestmark = pytest.mark.local_only("autostart starts a daemon with the default (local) engine")

README = Path(__file__).resolve().parent.parent / "README.md"


class Fresh:
    """A user with nothing running and nothing installed: every path the
    client and a daemon it starts would use, inside ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "runtime"
        self.runtime.mkdir(mode=0o700)
        (root / "home").mkdir(mode=0o700)
        self.data_dir = root / "state"
        self.env = {
            "HOME": str(root / "home"),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "XDG_CONFIG_HOME": str(root / "home" / ".config"),
            "SESSIOND_DATA_DIR": str(self.data_dir),
            "SESSIOND_CONFIG": str(root / "config.json"),
        }

    @property
    def socket(self) -> Path:
        # Where Client() looks with no SESSIOND_SOCKET: the default place.
        return self.runtime / "sessiond" / "sessiond.sock"

    def nothing_started(self) -> bool:
        return not self.socket.exists() and not (self.data_dir / "sessiond.log").exists()


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fresh]:
    """``Fresh`` paths in this process's environment (which the daemon a
    client starts inherits), autostart left to the client's defaults; any
    daemon that answers on its socket afterwards is stopped."""
    where = Fresh(tmp_path)
    for key, value in where.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SESSIOND_SOCKET", raising=False)
    monkeypatch.delenv(NO_AUTOSTART_ENV, raising=False)
    yield where
    _stop_daemon_on(where.socket)


def _stop_daemon_on(socket: Path) -> None:
    try:
        with Client(socket, autostart=False, timeout=10) as c:
            pid = c.ping().pid
    except DaemonUnavailable:
        return
    os.kill(pid, signal.SIGTERM)
    wait_until(partial(gone, pid), 15, f"autostarted sessiond {pid} to exit")


def test_client_starts_a_daemon_when_none_answers(fresh: Fresh) -> None:
    with Client() as c:
        made = c.create(user="auto")
        pid = c.ping().pid
        assert c.server_pid == pid
    assert str(fresh.socket) == str(c.path)
    # Detached, logging to the data dir, and still serving afterwards.
    assert os.getsid(pid) == pid
    assert (fresh.data_dir / "sessiond.log").exists()
    with Client(autostart=False) as again:
        assert again.get(made.id).user == "auto" and again.ping().pid == pid


def test_autostart_true_wins_over_the_environment(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NO_AUTOSTART_ENV, "1")
    with Client(autostart=True) as c:
        assert c.ping().pid > 0


def test_the_environment_turns_it_off_and_the_error_says_how_in_python_words(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NO_AUTOSTART_ENV, "1")
    with pytest.raises(DaemonUnavailable) as caught:
        Client()
    message = str(caught.value)
    assert str(fresh.socket) in message
    assert f"{NO_AUTOSTART_ENV}='1' in the environment" in message
    assert "Client(autostart=True)" in message
    assert "--no-autostart" not in message
    assert fresh.nothing_started()


def test_autostart_false_turns_it_off_and_the_error_names_the_argument(fresh: Fresh) -> None:
    with pytest.raises(DaemonUnavailable) as caught:
        Client(autostart=False)
    message = str(caught.value)
    assert "Client(autostart=True)" in message
    assert NO_AUTOSTART_ENV not in message and "--no-autostart" not in message
    assert fresh.nothing_started()


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_an_empty_zero_or_false_variable_leaves_autostart_on(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(NO_AUTOSTART_ENV, value)
    with Client() as c:
        assert c.ping().pid > 0


def test_a_variable_that_is_no_boolean_is_invalid_request_and_starts_nothing(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NO_AUTOSTART_ENV, "maybe")
    with pytest.raises(InvalidRequest, match=f"^{NO_AUTOSTART_ENV}='maybe' is not a boolean: "):
        Client()
    with Client(autostart=True) as c:  # the argument wins: the variable is not read
        assert c.ping().pid > 0


def test_a_failed_start_is_daemon_unavailable_saying_why_and_naming_the_log(
    fresh: Fresh,
) -> None:
    config = fresh.env["SESSIOND_CONFIG"]
    Path(config).write_text("{ not json")
    with pytest.raises(DaemonUnavailable) as caught:
        Client()
    assert str(fresh.data_dir / "sessiond.log") in str(caught.value)
    assert f": config {config} is not valid JSON" in str(caught.value)


def readme_example(heading: str) -> str:
    """The Python code under ``heading`` in the README."""
    found = re.search(rf"### {re.escape(heading)}\n\n```python\n(.*?)```", README.read_text(),
                      re.S)
    assert found is not None, f"the README's {heading} example"
    return found.group(1)


def run_example(fresh: Fresh, code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **fresh.env},
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_the_readme_client_example_runs_on_a_fresh_install(fresh: Fresh) -> None:
    example = readme_example("Client")
    printed = run_example(fresh, example)
    assert printed == ["active", "1:00:00", "2", "session no-such-session not found", "True"]
    # What it prints is what its comments say it prints.
    assert re.findall(r"print\(.*\)\s+# (.+)$", example, re.M) == printed


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_readme_async_example_runs_on_a_fresh_install(fresh: Fresh, backend: str) -> None:
    example = readme_example("AsyncClient (asyncio and trio)")
    run = "asyncio.run(main())                      # or: trio.run(main)\n"
    assert example.endswith(run)
    if backend == "trio":  # as its last line's comment says
        example = example.replace("import asyncio\n", "import trio\n").replace(
            run, "trio.run(main)\n")
    printed = run_example(fresh, example)
    assert printed == ["bob", "1", "True"]
    assert re.findall(r"print\(.*\)\s+# (.+)$", example, re.M) == printed


# -- the CLI and the shim speak of their own switches ---------------------------


def cli(fresh: Fresh, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SESSIONCTL, *args], env={**os.environ, **fresh.env, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_sessionctl_errors_speak_of_its_flag_and_the_variable(fresh: Fresh) -> None:
    by_flag = cli(fresh, "ping", "--no-autostart").stderr
    assert "let sessionctl start it (drop --no-autostart)" in by_flag
    by_env = cli(fresh, "ping", **{NO_AUTOSTART_ENV: "1"}).stderr
    assert f"let sessionctl start it (unset {NO_AUTOSTART_ENV})" in by_env
    both = cli(fresh, "ping", "--no-autostart", **{NO_AUTOSTART_ENV: "yes"}).stderr
    assert f"(drop --no-autostart and unset {NO_AUTOSTART_ENV})" in both
    for message in (by_flag, by_env, both):
        assert message.startswith("sessionctl: error: no sessiond answers on ")
        assert len(message.splitlines()) == 1 and "Client(" not in message
    assert fresh.nothing_started()


def test_the_shims_error_speaks_of_the_variable(fresh: Fresh) -> None:
    env = {**os.environ, **fresh.env, NO_AUTOSTART_ENV: "1",
           "PATH": f"{Path(SESSIONCTL).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([BASH, str(SCRIPT), "get", "deadbeef0000"], env=env, cwd=fresh.root,
                       capture_output=True, text=True, timeout=60, check=False)
    message = legacy_error(r)
    assert f"let script.sh start it (unset {NO_AUTOSTART_ENV})" in message
    assert "Client(" not in message and "--no-autostart" not in message
    assert fresh.nothing_started()


def test_this_test_run_never_autostarts_by_accident(tmp_path: Path) -> None:
    """The harness sets SESSIONCTL_NO_AUTOSTART=1 for the whole run: a
    client made for a stopped daemon fails instead of starting one with
    the developer's own paths."""
    assert os.environ.get(NO_AUTOSTART_ENV) == "1"
    dead = tmp_path / "dead.sock"
    with pytest.raises(DaemonUnavailable):
        Client(dead)
    assert not dead.exists()
