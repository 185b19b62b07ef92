"""Autostart on a socket other than the default: the daemon it starts gets
a data dir of its own, ``DATA_DIR/sockets/HASH`` (the first 16 hex digits of
the SHA-256 of the socket's absolute path), so that it never meets the lock
of the daemon that holds the data dir; and installed systemd units, which
own only the default socket, leave every other socket to autostart.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from sessionctl import Client, DaemonUnavailable
from tests.conftest import SESSIONCTL, Daemon
from tests.test_systemd import install_service, isolated_env

AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}


def own_dir(d: Daemon, socket: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(socket))).hexdigest()[:16]
    return d.data_dir / "sockets" / digest


def _ping(socket: Path) -> int | None:
    """The pid of the daemon that answers on ``socket``, if one does."""
    try:
        with Client(socket, timeout=10) as c:
            return c.ping().pid
    except DaemonUnavailable:
        return None


def test_another_socket_gets_a_daemon_with_a_data_dir_of_its_own(
    daemon: Daemon, started: list[int], tmp_path: Path
) -> None:
    assert daemon.proc is not None
    other = tmp_path / "other.sock"
    r = daemon.ctl("--socket", str(other), "create", "--id", "elsewhere", env=AUTOSTART_ON)
    pid = _ping(other)
    if pid is not None:
        started.append(pid)
    # Before: the daemon started here found the default one's lock and
    # exited, and this was exit 3.
    assert r.returncode == 0, r.stderr
    assert pid is not None and pid != daemon.proc.pid
    data = own_dir(daemon, other)
    assert (data / "data.jsonl").exists() and (data / "sessiond.log").exists()
    for level in (daemon.data_dir, data.parent, data):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    # Two daemons, two sets of sessions.
    with daemon.client() as c:
        assert "elsewhere" not in {s.id for s in c.list()}
    listed = daemon.ctl("--socket", str(other), "list", "--ids")
    assert listed.stdout == "elsewhere\n"


def test_the_same_socket_finds_the_same_data_again(
    make_daemon: Callable[..., Daemon], started: list[int], tmp_path: Path
) -> None:
    d = make_daemon(start=False)
    other = tmp_path / "again.sock"
    assert d.ctl("--socket", str(other), "create", "--id", "kept", env=AUTOSTART_ON).returncode == 0
    first = _ping(other)
    assert first is not None
    started.append(first)
    assert d.ctl("--socket", str(other), "shutdown").returncode == 0
    r = d.ctl("--socket", str(other), "get", "kept", "--json", env=AUTOSTART_ON)
    second = _ping(other)
    if second is not None:
        started.append(second)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"] == "kept" and second not in (None, first)


def test_installed_units_leave_another_socket_to_autostart(
    make_daemon: Callable[..., Daemon], started: list[int], tmp_path: Path
) -> None:
    d = make_daemon(start=False)
    assert install_service(d, manager=True).returncode == 0
    env = isolated_env(d, **AUTOSTART_ON)  # SESSIOND_SOCKET: not the default socket
    done = subprocess.run([SESSIONCTL, "ping", "--json"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    pid = _ping(d.socket)
    if pid is not None:
        started.append(pid)
    # Before: refused, exit 3, as if the units owned every socket.
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pid"] == pid
