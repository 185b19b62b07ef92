"""The directories above the socket's and the data dir: nobody else may
be able to put another directory in their place.

A private (0700) directory keeps others out of what is in it, not out of
its name: whoever can write the directory that holds it can rename it away,
full, and make their own in its place (with a socket of theirs for our
clients, or a journal of theirs for our next start). An ``XDG_RUNTIME_DIR``
that another user made first (``export XDG_RUNTIME_DIR=/tmp/runtime-$USER;
mkdir -p "$XDG_RUNTIME_DIR"``, which succeeds on theirs) was accepted, and
its owner then took the daemon's socket path over while it ran. Every
directory above must be the user's or root's and writable by nobody else,
unless sticky (``/tmp``), as OpenSSH's StrictModes asks.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionctl import Client, DaemonUnavailable
from tests.conftest import SESSIONCTL, Daemon, wait_until
from tests.isolation import OTHER_UID, needs_root, refused
from tests.rawwire import seed, snapshot

pytestmark = pytest.mark.local_only("the paths are checked before any engine is opened")


def serves(d: Daemon, sock: Path) -> None:
    """Start ``d`` and wait until it answers on ``sock``, its state whole."""
    d.start(wait=False)

    def answers() -> bool:
        assert d.proc is not None
        assert d.proc.poll() is None, d.log_text()
        try:
            with Client(sock, timeout=5) as c:
                c.ping()
        except DaemonUnavailable:
            return False
        return True

    wait_until(answers, 30, "sessiond to answer")
    seed(sock)
    assert len(snapshot(sock)[0]) == 3


def placed_in(d: Daemon, shared: Path, which: str) -> Path:
    """``d``'s socket directory or data dir, moved below ``shared``."""
    if which == "socket":
        d.extra_env["SESSIOND_SOCKET"] = str(shared / "sessiond" / "sessiond.sock")
        return shared / "sessiond"
    d.extra_env["SESSIOND_DATA_DIR"] = str(shared / "data")
    return shared / "data"


@pytest.mark.parametrize("which", ["socket", "data"])
@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_directory_above_that_others_can_write_is_refused(
    make_daemon: Callable[..., Daemon], which: str, mode: int
) -> None:
    d = make_daemon(start=False)
    shared = d.root / "shared"
    shared.mkdir()
    shared.chmod(mode)
    where = placed_in(d, shared, which)
    refused(d, "unsafe permissions", f"{shared}, above {where}, is writable by group or "
               f"others (mode {mode:o}) and not sticky")
    assert not (shared / "sessiond" / "sessiond.sock").exists()
    # Once nobody else can write it, the same daemon starts and serves.
    shared.chmod(0o755)
    serves(d, shared / "sessiond" / "sessiond.sock" if which == "socket" else d.socket)


@pytest.mark.parametrize("which", ["socket", "data"])
def test_a_sticky_directory_above_like_tmp_is_accepted(
    make_daemon: Callable[..., Daemon], which: str
) -> None:
    d = make_daemon(start=False)
    shared = d.root / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    placed_in(d, shared, which)
    serves(d, shared / "sessiond" / "sessiond.sock" if which == "socket" else d.socket)


@pytest.mark.parametrize("which", ["socket", "data"])
def test_a_directory_above_owned_by_another_uid_is_refused(
    make_daemon: Callable[..., Daemon], which: str
) -> None:
    needs_root("a directory")
    d = make_daemon(start=False)
    shared = d.root / "shared"
    shared.mkdir(mode=0o755)
    os.chown(shared, OTHER_UID, OTHER_UID)
    where = placed_in(d, shared, which)
    refused(d, "unsafe permissions", f"{shared}, above {where}, is owned by uid {OTHER_UID}")


def test_a_symlink_of_another_uid_on_the_way_is_refused(
    make_daemon: Callable[..., Daemon],
) -> None:
    needs_root("a directory")
    d = make_daemon(start=False)
    real = d.root / "real"
    real.mkdir(mode=0o755)
    link = d.root / "link"
    link.symlink_to(real)
    os.lchown(link, OTHER_UID, OTHER_UID)
    d.extra_env["SESSIOND_DATA_DIR"] = str(link / "data")
    refused(d, "unsafe permissions", f"{link}, on the way to {link / 'data'}, is a symlink "
               f"of uid {OTHER_UID}")


def test_a_runtime_dir_another_user_made_first_is_refused_at_autostart(
    tmp_path: Path, started: list[int]
) -> None:
    """The attack as it happened: the other user makes the runtime dir the
    victim will name, open to all; autostart's daemon refused to use it,
    and the client says why."""
    needs_root("a directory")
    runtime = tmp_path / "rt"  # short: the socket path has 107 bytes at most
    runtime.mkdir()
    os.chown(runtime, OTHER_UID, OTHER_UID)
    runtime.chmod(0o777)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SESSIOND_", "XDG_", "SESSIONCTL_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    r = subprocess.run([SESSIONCTL, "create", "--meta", "token=secret"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    lock = home / ".local" / "state" / "sessiond" / "sessiond.lock"
    holder = lock.read_text().strip() if lock.exists() else ""
    if holder.isdigit():
        started.append(int(holder))  # a daemon that took the runtime dir: stopped after
    assert r.returncode == 3, r
    assert r.stdout == ""
    assert f"unsafe permissions: {runtime}, above {runtime / 'sessiond'}, is owned by uid " \
           f"{OTHER_UID}" in r.stderr, r.stderr
    assert not (runtime / "sessiond" / "sessiond.sock").exists()
