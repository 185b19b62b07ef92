"""Advice that is right: errors name the real flag and the command that
fixes them, the unreachable-daemon hint names systemd only when its units
own the socket and ``SESSIONCTL_NO_AUTOSTART`` only when it is set,
counts have their plurals, a ttl is said once, and ``list --limit`` says
when it left sessions out. Through the real ``sessionctl``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import SESSIONCTL, Daemon, running
from tests.test_systemd import install_service, isolated_env


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("advice")) as daemon:
        yield daemon


def failure(r: subprocess.CompletedProcess[str], status: int) -> str:
    assert r.returncode == status, r
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    return r.stderr.removeprefix("sessionctl: error: ").rstrip("\n")


def expired_session(d: Daemon) -> str:
    with d.client() as c:
        sid = c.create().id
        c.expire(sid)
    return sid


# -- the real flag --------------------------------------------------------------


def test_refreshing_an_expired_session_names_revive_as_the_flag(d: Daemon) -> None:
    sid = expired_session(d)
    assert failure(d.ctl("refresh", sid), 1) == (
        f"session {sid} has expired; add --revive to bring it back "
        f"('sessionctl refresh {sid} --revive')"
    )
    assert d.ctl("refresh", sid, "--revive").returncode == 0


@pytest.mark.parametrize("args", [("set", "k", "v"), ("unset", "k")])
def test_changing_an_expired_session_says_how_to_bring_it_back(
    d: Daemon, args: tuple[str, ...]
) -> None:
    sid = expired_session(d)
    assert failure(d.ctl(args[0], sid, *args[1:]), 1) == (
        f"session {sid} has expired; bring it back first with 'sessionctl refresh {sid} "
        f"--revive'"
    )


# -- how to start the daemon ------------------------------------------------------


def test_the_hint_without_units_is_to_run_sessiond(make_daemon: Callable[..., Daemon]) -> None:
    stopped = make_daemon(start=False)
    said = failure(stopped.ctl("ping"), 3)
    assert said == (
        f"no sessiond answers on {stopped.socket} (No such file or directory); start it "
        f"with 'sessiond', or let sessionctl start it (unset SESSIONCTL_NO_AUTOSTART)"
    )
    assert "systemctl" not in said


def test_the_hint_on_another_socket_names_it_and_its_data_dir(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    stopped = make_daemon(start=False)
    other = tmp_path / "other.sock"
    said = failure(stopped.ctl("--socket", str(other), "ping"), 3)
    data = stopped.data_dir / "sockets"
    assert f"start it with 'sessiond --socket {other} --data-dir {data}/" in said


def test_the_hint_with_units_installed_is_to_start_their_socket(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    stopped = make_daemon(start=False)
    assert install_service(stopped, manager=True).returncode == 0
    env = isolated_env(stopped)
    del env["SESSIOND_SOCKET"]  # the default socket, which the units own
    default = Path(env["XDG_RUNTIME_DIR"]) / "sessiond" / "sessiond.sock"
    done = subprocess.run([SESSIONCTL, "ping"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert failure(done, 3) == (
        f"no sessiond answers on {default} (No such file or directory); start it with "
        f"'systemctl --user start sessiond.socket', or let sessionctl start it (unset "
        f"SESSIONCTL_NO_AUTOSTART)"
    )
    # Another socket is not theirs: the hint is to run sessiond.
    other = tmp_path / "other.sock"
    done = subprocess.run([SESSIONCTL, "--socket", str(other), "ping"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    said = failure(done, 3)
    assert "systemctl" not in said and f"'sessiond --socket {other} " in said


@pytest.mark.parametrize(("flag", "env", "advice"), [
    (True, "", "drop --no-autostart)"),
    (False, "1", "unset SESSIONCTL_NO_AUTOSTART)"),
    (True, "yes", "drop --no-autostart and unset SESSIONCTL_NO_AUTOSTART)"),
])
def test_the_hint_names_what_turned_autostart_off(
    make_daemon: Callable[..., Daemon], flag: bool, env: str, advice: str
) -> None:
    stopped = make_daemon(start=False)
    args = ["ping", "--no-autostart"] if flag else ["ping"]
    said = failure(stopped.ctl(*args, env={"SESSIONCTL_NO_AUTOSTART": env}), 3)
    assert said.endswith(f", or let sessionctl start it ({advice}")
    assert ("SESSIONCTL_NO_AUTOSTART" in said) == bool(env)


# -- words ------------------------------------------------------------------------


def test_counts_have_their_plurals(d: Daemon, tmp_path: Path) -> None:
    with d.client() as c:
        for s in c.list():
            c.delete(s.id)
    expired_session(d)
    assert d.ctl("cleanup", "--dry-run").stdout.splitlines()[0] == (
        "would remove 1 session, 0 remaining"
    )
    assert d.ctl("cleanup").stdout.splitlines()[0] == "removed 1 session, 0 remaining"
    assert d.ctl("cleanup").stdout == "removed 0 sessions, 0 remaining\n"
    d.ctl("create")
    target = tmp_path / "one.json"
    assert d.ctl("export", "--output", str(target)).stdout == f"exported 1 session to {target}\n"
    assert ", 1 session kept, " in d.ctl("compact").stdout
    assert d.ctl("list").stdout.splitlines()[-1] == "1 session"


def test_a_ttl_is_said_once(d: Daemon) -> None:
    sid = d.ctl("create", "--ttl", "1h30m").stdout.strip()
    assert "ttl          5400s (1h 30m)" in d.ctl("get", sid).stdout.splitlines()
    short = d.ctl("create", "--ttl", "5").stdout.strip()
    assert "ttl          5s" in d.ctl("get", short).stdout.splitlines()  # not "5s (5s)"


def test_list_limit_says_when_more_sessions_match(d: Daemon) -> None:
    with d.client() as c:
        for s in c.list():
            c.delete(s.id)
        for user in ("ann", "ann", "bob"):
            c.create(user=user)
    assert d.ctl("list", "--limit", "1").stdout.splitlines()[-1] == (
        "1 session shown; more match (raise --limit to see them)"
    )
    # Exactly as many as match, or more in the store that do not: no note.
    assert d.ctl("list", "--limit", "3").stdout.splitlines()[-1] == "3 sessions"
    assert d.ctl("list", "--user", "ann", "--limit", "2").stdout.splitlines()[-1] == "2 sessions"
    assert d.ctl("list", "--user", "bob", "--limit", "1").stdout.splitlines()[-1] == "1 session"
    # JSON stays the array it was.
    assert d.ctl("list", "--limit", "1", "--json").stdout.count('"id"') == 1
