"""Start a daemon when none answers, as tmux and gpg-agent do.

If the systemd user units are installed and the socket is the default one
(the path their socket unit listens on), the daemon is systemd's to run: we
ask systemd to start it rather than starting a second, unmanaged one, and
fail if systemd cannot. Otherwise we start ``sessiond`` detached and wait
(up to 5 s) until it answers. Its log is ``sessiond.log`` in its data dir,
which the daemon itself writes and rotates by size (``--log-file``); its
stdout and stderr are appended to the same file from the start, so that a
daemon that dies before it has set up its log (a broken installation, an
interpreter that cannot start) still leaves its reason there.

A daemon started on another socket (``--socket``, or ``$SESSIOND_SOCKET``
pointing elsewhere than ``sessionctl`` was told by default) gets a data dir
of its own, ``DATA_DIR/sockets/HASH`` (the first 16 hex digits of the
SHA-256 of the socket's absolute path): the default daemon holds the data
dir's lock, so a second daemon there could never start. Derived rather than
put beside the socket, because a socket lives in a runtime dir that a
logout or a reboot empties (or in a /tmp shared with others), while the
journal must last and stay private; the same socket path always finds the
same data again.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sessiond.errors import DaemonUnavailable
from sessiond.service import SOCKET, service_installed, systemctl, user_unit_dir

WAIT_SECONDS = 5.0
# Daemons this process started: a Popen dropped while its child runs warns
# (ResourceWarning), and the child, once it ends, stays a zombie until it
# is waited for. A program that keeps a Client for long outlives the daemon
# it started, so each is kept here and reaped at the next start (which is
# when one is needed again: the last one stopped answering).
_started: list[subprocess.Popen[bytes]] = []


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(os.fspath(path))
        except OSError:
            return False
        return True


def _same(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def owned_by_units(path: Path) -> bool:
    """Whether systemd's units, installed, own the socket ``path``: the
    default one, which their socket unit listens on."""
    from sessiond.paths import default_socket

    return _same(path, default_socket()) and service_installed()


def daemon_data_dir(path: Path) -> Path:
    """The data dir of the daemon autostarted on ``path``: the data dir
    (``$SESSIOND_DATA_DIR`` or the default) for the socket ``sessionctl``
    uses when told none, else one of its own below it (see the module)."""
    import hashlib

    from sessiond.paths import data_dir, socket_path

    data = data_dir()
    if _same(path, socket_path()):
        return data
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:16]
    return data / "sockets" / digest


def start_advice(where: str) -> str:
    """How to start a daemon on ``where`` by hand, for a message."""
    import shlex

    from sessiond.paths import data_dir, socket_path

    path = Path(where)
    if owned_by_units(path):
        return f"start it with 'systemctl --user start {SOCKET}'"
    words = ["sessiond"]
    if not _same(path, socket_path()):
        words += ["--socket", where, "--data-dir", str(daemon_data_dir(path))]
    elif not _same(daemon_data_dir(path), data_dir()):
        words += ["--data-dir", str(daemon_data_dir(path))]
    return f"start it with '{shlex.join(words)}'"


def start_daemon(path: Path) -> None:
    """Make a daemon answer on ``path`` or raise ``DaemonUnavailable``."""
    _started[:] = [p for p in _started if p.poll() is None]
    if owned_by_units(path):
        _start_with_systemd(path)
        return
    from sessiond.paths import data_dir, private_dir

    data = daemon_data_dir(path)
    # Each level private, from the data dir down: a parent that mkdir
    # makes on the way is made with the umask's mode, which the default
    # daemon would then refuse as its data dir.
    top = data_dir()
    for level in (*reversed(data.relative_to(top).parents), data.relative_to(top)):
        private_dir(top / level)
    log_path = data / "sessiond.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessiond", "--socket", os.fspath(path),
             "--data-dir", os.fspath(data), "--log-file", os.fspath(log_path),
             "--autostarted"],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    _started.append(proc)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if _answers(path):
            return
        code = proc.poll()
        if code is not None and not _answers(path):
            # It may have lost a race to another autostarted daemon, or the
            # daemon that holds the data dir lost its socket file (it binds
            # it again within a few seconds): give that one the rest of the wait.
            if code != 0 and _other_daemon_alive(data, proc.pid):
                if _wait_for(path, deadline):
                    return
                from sessionctl.unreachable import holder, listens_on

                pid = holder(data)
                if pid is not None and listens_on(pid, os.fspath(path)):
                    raise DaemonUnavailable(
                        f"sessiond (pid {pid}) holds {data} but its socket {path} is "
                        f"missing, and it has not bound it again within {WAIT_SECONDS:g}s; "
                        f"see its log"
                    )
            raise DaemonUnavailable(
                f"sessiond exited with status {code} before answering on {path}; "
                f"see {log_path}"
            )
        time.sleep(0.02)
    raise DaemonUnavailable(
        f"sessiond did not answer on {path} within {WAIT_SECONDS:g}s; see {log_path}"
    )


def _other_daemon_alive(data: Path, ours: int) -> bool:
    """Whether the data dir's lock names a live process other than ours (then
    ours lost a race to it). Read, not locked: taking the lock even briefly
    could make the winner of that race fail too."""
    from sessiond.paths import LOCK_NAME

    try:
        text = (data / LOCK_NAME).read_text().strip()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: wait, as for a race
    if not text.isdigit():
        return True  # the winner has the lock but has not written its pid yet
    pid = int(text)
    if pid == ours:
        return False
    from sessionctl.unreachable import alive

    return alive(pid)


def _wait_for(path: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if _answers(path):
            return True
        time.sleep(0.05)
    return False


def _start_with_systemd(path: Path) -> None:
    # Starting the socket unit is enough: systemd then holds the socket and
    # starts the service on our first connection.
    problem = systemctl("start", SOCKET)
    if problem is not None:
        raise DaemonUnavailable(
            f"sessiond is installed as a systemd user service ({user_unit_dir() / SOCKET}), "
            f"so sessionctl does not start it itself, and systemd could not: {problem}. "
            f"Start it with 'systemctl --user start {SOCKET}', or run "
            f"'sessiond install-service --uninstall' to let sessionctl start it"
        )
    if not _wait_for(path, time.monotonic() + WAIT_SECONDS):
        raise DaemonUnavailable(
            f"systemd started {SOCKET} but nothing answers on {path} within "
            f"{WAIT_SECONDS:g}s; see 'systemctl --user status {SOCKET}' and "
            f"'journalctl --user -u sessiond'"
        )
