"""The socket file disappears under a running daemon (a tmp cleaner, a
logout that empties the runtime directory): the daemon binds its path
again within a few seconds and says so; until then a client is told which
daemon holds the data dir; a client that autostarts waits for it. What
another program put at the path is left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sessiond.errors import DaemonUnavailable
from tests.conftest import Daemon, wait_until

pytestmark = pytest.mark.local_only("the daemon's own socket file, whatever the engine")

REBOUND = "bound it again"


def lose_socket(d: Daemon, then: Callable[[], object]) -> object:
    """Remove the daemon's whole run directory, and call ``then`` before the
    daemon binds its socket again. The daemon checks once a second, so it
    may have done so in between: then try again (``then`` returns None)."""
    for _ in range(10):
        shutil.rmtree(d.socket.parent)
        result = then()
        if result is not None:
            return result
        wait_until(d.socket.exists, 15, "the socket to be bound again")
    raise AssertionError("the daemon always bound its socket again first")


def test_a_removed_run_dir_is_recreated_and_the_socket_bound_again(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert daemon.proc is not None
    # Where a client looks for the lock that names the daemon, as the CLI does.
    monkeypatch.setenv("SESSIOND_DATA_DIR", str(daemon.data_dir))
    pid = daemon.proc.pid
    with daemon.client() as c:
        made = c.create(id="kept")
        mode = os.stat(daemon.socket.parent).st_mode & 0o777

        def refused() -> str | None:
            try:
                with daemon.client(timeout=5):
                    return None  # already bound again
            except DaemonUnavailable as exc:
                return str(exc)

        message = lose_socket(daemon, refused)
        assert f"sessiond (pid {pid}) holds {daemon.data_dir}" in str(message)
        assert f"its socket {daemon.socket} is missing" in str(message)
        assert "binds it again within a few seconds" in str(message)
        # The connection made before goes on as if nothing happened.
        assert c.get("kept") == made
    wait_until(lambda: daemon.ctl("get", "kept").returncode == 0, 15, "a command to succeed")
    assert os.stat(daemon.socket.parent).st_mode & 0o777 == mode == 0o700
    assert REBOUND in daemon.log_text()
    with daemon.client() as c:
        assert c.ping().pid == pid
    assert daemon.stop() == 0
    assert not daemon.socket.exists()


def test_until_it_is_bound_again_sessionctl_names_the_daemon_and_exits_3(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None

    def cli() -> subprocess.CompletedProcess[str] | None:
        result = daemon.ctl("--no-autostart", "ping")
        return None if result.returncode == 0 else result

    result = lose_socket(daemon, cli)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("sessionctl: error: ") and result.stderr.count("\n") == 1
    assert f"sessiond (pid {daemon.proc.pid}) holds" in result.stderr
    assert "binds it again within a few seconds" in result.stderr
    wait_until(lambda: daemon.ctl("ping").returncode == 0, 15, "the socket to be bound again")


def test_a_command_that_autostarts_waits_for_the_running_daemon_to_bind_again(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None
    env = {"SESSIONCTL_NO_AUTOSTART": ""}
    autostart_log = daemon.data_dir / "sessiond.log"

    def autostarted() -> subprocess.CompletedProcess[str] | None:
        before = autostart_log.read_text() if autostart_log.exists() else ""
        result = daemon.ctl("--json", "ping", env=env)
        after = autostart_log.read_text() if autostart_log.exists() else ""
        # Only a run that did start a daemon (which found the data dir
        # locked) shows the path under test.
        return result if after != before else None

    result = lose_socket(daemon, autostarted)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 0, result.stderr
    assert f'"pid": {daemon.proc.pid}' in result.stdout
    # It lost to the daemon there: no error, as sessionctl went on with it.
    said = autostart_log.read_text()
    assert f" INFO another sessiond (pid {daemon.proc.pid}) already serves data dir" in said
    assert " ERROR " not in said
    assert REBOUND in daemon.log_text()


def test_what_another_program_put_at_the_path_is_left_alone(daemon: Daemon) -> None:
    assert daemon.proc is not None
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def take_path() -> bool | None:
        daemon.socket.parent.mkdir(mode=0o700, exist_ok=True)
        try:
            foreign.bind(str(daemon.socket))
        except OSError:
            return None  # the daemon was first
        return True

    try:
        lose_socket(daemon, take_path)
        foreign.listen(1)
        inode = os.stat(daemon.socket).st_ino
        wait_until(lambda: "no longer leads to this daemon" in daemon.log_text(), 15,
                   "the daemon to notice")
        assert os.stat(daemon.socket).st_ino == inode
        with pytest.raises(DaemonUnavailable):  # nothing answers there
            with daemon.client(timeout=0.5) as c:
                c.ping()
        # Once it is gone, the path is the daemon's again.
        foreign.close()
        daemon.socket.unlink()
        wait_until(lambda: daemon.ctl("ping").returncode == 0, 15, "the socket to be bound again")
        assert REBOUND in daemon.log_text()
    finally:
        foreign.close()


def test_a_clean_stop_leaves_another_programs_socket_in_place(daemon: Daemon) -> None:
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        daemon.socket.unlink()
        foreign.bind(str(daemon.socket))
        inode = os.stat(daemon.socket).st_ino
        assert daemon.stop() == 0
        assert os.stat(daemon.socket).st_ino == inode
    finally:
        foreign.close()


def test_a_client_sent_to_another_path_is_not_told_of_the_running_daemon(
    daemon: Daemon, tmp_path: Path
) -> None:
    # The daemon holds the data dir, but listens where it always did: the
    # path tried is simply not a socket, and nothing will bind it.
    other = tmp_path / "other.sock"
    result = daemon.ctl("--socket", str(other), "--no-autostart", "ping")
    assert result.returncode == 3
    assert f"no sessiond answers on {other}" in result.stderr
    assert "holds" not in result.stderr


def put_at_the_path(daemon: Daemon, make: Callable[[], None]) -> None:
    """Take the daemon's path for something of another program's (``make``
    puts it there), once the daemon's socket file is gone."""

    def take_path() -> bool | None:
        daemon.socket.parent.mkdir(mode=0o700, exist_ok=True)
        try:
            make()
        except FileExistsError:
            return None  # the daemon was first
        except OSError as exc:
            if "Address already in use" in str(exc):
                return None
            raise
        return True

    lose_socket(daemon, take_path)


def test_a_file_at_the_path_is_named_to_clients_at_once(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid

    def a_file() -> None:
        with open(daemon.socket, "x") as f:
            f.write("not a socket\n")

    put_at_the_path(daemon, a_file)
    wait_until(lambda: "no longer leads to this daemon" in daemon.log_text(), 15,
               "the daemon to notice")
    said = f"sessiond (pid {pid}) holds {daemon.data_dir} and listens on {daemon.socket}, " \
           f"but a file that is no socket is at that path now"
    # Before: "no sessiond answers (Connection refused)"; and a command
    # that autostarts waited its whole timeout, then said the socket was
    # missing and had not been bound again.
    for env in ({}, {"SESSIONCTL_NO_AUTOSTART": ""}):
        result = daemon.ctl("ping", env=env)
        assert result.returncode == 3, result
        assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
    assert daemon.socket.read_text() == "not a socket\n"
    daemon.socket.unlink()
    wait_until(lambda: daemon.ctl("ping").returncode == 0, 15, "the socket to be bound again")


def test_a_socket_that_nothing_listens_on_any_more_is_replaced(daemon: Daemon) -> None:
    assert daemon.proc is not None
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def bound_and_left() -> None:
        # Bound and closed, as a program that ended without removing it.
        foreign.bind(str(daemon.socket))
        foreign.close()

    try:
        put_at_the_path(daemon, bound_and_left)
    finally:
        foreign.close()
    # Before: left alone for good, as if another program still used it.
    wait_until(lambda: daemon.ctl("ping").returncode == 0, 15, "the socket to be bound again")
    assert REBOUND in daemon.log_text()
