"""Start a daemon when none answers, as tmux and gpg-agent do.

If the systemd user units are installed and the socket is the default one
(the path their socket unit listens on), the daemon is systemd's to run: we
ask systemd to start it rather than starting a second, unmanaged one, and
fail if systemd cannot. Otherwise we start ``sessiond`` detached, in
``/`` (a daemon left in the caller's directory would keep its filesystem
busy for its whole life, so every path it is given is absolute), and wait
until it answers: as long as it runs, up to the client's ``timeout`` (a
big journal takes seconds to replay), failing at once when it exits. Its
log is ``sessiond.log`` in its data dir, which the daemon itself writes
and rotates by size (``--log-file``); its stdout and stderr are appended
to the same file from the start, so that a daemon that dies before it has
set up its log (a broken installation, an interpreter that cannot start)
still leaves its reason there, and the client's message quotes it.

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
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from sessiond.errors import DaemonUnavailable
from sessiond.service import SOCKET, service_installed, systemctl, user_unit_dir

# How long systemd's socket unit may take to listen once started.
SYSTEMD_WAIT_SECONDS = 5.0
# How much of the log a failed start wrote is read for its reason, and a
# line of it that the daemon logged (sessiond.logs.FORMAT): the others
# reached its stderr. A daemon that lost a race of starts logs there too.
REASON_BYTES = 65536
_RECORD = re.compile(r" sessiond\[(\d+)\] ([A-Z]+) (.*)")
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


def start_daemon(path: Path, timeout: float | None) -> str | None:
    """Make a daemon answer on ``path`` or raise ``DaemonUnavailable``:
    the one started is waited for as long as it runs (it may be replaying
    a big journal), up to ``timeout`` seconds (``None``: no limit).
    Returns what a person should know of the start (``apart``), if any."""
    _started[:] = [p for p in _started if p.poll() is None]
    if owned_by_units(path):
        _start_with_systemd(path)
        return None
    from sessiond.paths import SOCKET_PATH_MAX, config_path, data_dir, private_dir

    data = daemon_data_dir(path)
    note = apart(data, data_dir())
    # Each level private, from the data dir down: a parent that mkdir
    # makes on the way is made with the umask's mode, which the default
    # daemon would then refuse as its data dir.
    top = data_dir()
    for level in (*reversed(data.relative_to(top).parents), data.relative_to(top)):
        private_dir(top / level)
    log_path = data / "sessiond.log"
    # The daemon runs in / (see the module), every path it is given made
    # absolute; but for a relative socket path too long for a Unix socket
    # once absolute, which it can bind only from here.
    where: str = os.path.abspath(path)
    cwd: str | None = "/"
    if len(os.fsencode(where)) > SOCKET_PATH_MAX:
        where, cwd = os.fspath(path), None
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # Where this start's lines begin: its reason, if it fails, is there.
        offset = os.fstat(fd).st_size
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessiond", "--socket", where,
             "--data-dir", os.path.abspath(data), "--log-file", os.path.abspath(log_path),
             "--config", os.path.abspath(config_path()), "--autostarted"],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    _started.append(proc)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not _past(deadline):
        if _answers(path):
            return note
        code = proc.poll()
        if code is not None and not _answers(path):
            # It may have lost a race to another autostarted daemon, or the
            # daemon that holds the data dir lost its socket file (it binds
            # it again within a few seconds): that one is waited for then.
            if code != 0 and _other_daemon_alive(data, proc.pid):
                _wait_for_holder(path, data, proc.pid, deadline, timeout)
                return None
            reason = _reason(log_path, offset, proc.pid)
            raise DaemonUnavailable(
                f"sessiond exited with status {code} before answering on {path}"
                f"{': ' + reason if reason else ''}; see {log_path}"
            )
        time.sleep(0.02)
    raise DaemonUnavailable(
        f"sessiond (pid {proc.pid}), started, has not answered on {path} within "
        f"{timeout:g}s (a big journal takes a while to replay: it may answer soon); "
        f"see {log_path}"
    )


def apart(data: Path, top: Path) -> str | None:
    """Said when a daemon is about to start on another socket for the
    first time (``data``, its data dir, holds no journal yet) while the
    data dir ``top`` holds sessions: a ``sessionctl`` of the first
    releases started the daemon of every socket on ``top``, so after an
    upgrade the sessions a daemon there kept for this socket would seem
    gone, when they are the default socket's. ``None`` otherwise."""
    from sessiond.paths import JOURNAL_NAME

    if data == top or (data / JOURNAL_NAME).exists():
        return None
    try:
        with open(top / JOURNAL_NAME, "rb") as journal:
            # Lines, not the zeros a running daemon keeps reserved.
            first = journal.read(1)
    except OSError:
        return None  # none there (or none to read): nothing to be told
    if first in (b"", b"\0"):
        return None
    return (f"sessiond started on this socket with a data dir of its own, {data}, empty; "
            f"the sessions in {top} are the default socket's (sessionctl of the first "
            f"releases kept every socket's there: export them there, import them here)")


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _wait_for_holder(
    path: Path, data: Path, ours: int, deadline: float | None, timeout: float | None
) -> None:
    """Wait, up to ``deadline``, for the daemon that holds ``data`` (ours
    found it locked) to answer on ``path``: it won a race of starts and may
    still be replaying, or it lost its socket file and binds it again.
    Raises ``DaemonUnavailable`` when it does not, and at once when it
    listens on another path (it was started there by hand): it never
    will."""
    from sessionctl.unreachable import holder, listening, not_a_socket

    where = os.fspath(path)
    while _other_daemon_alive(data, ours):
        if _answers(path):
            return
        pid = holder(data)
        bound = listening(pid) if pid is not None else set()
        if pid is not None and (where in bound or os.path.abspath(where) in bound):
            squatted = not_a_socket(where, pid)
            if squatted is not None:
                # The daemon will not remove it: waiting would only end in
                # the timeout, with a wrong reason.
                raise DaemonUnavailable(squatted)
        if bound and where not in bound and os.path.abspath(where) not in bound:
            raise DaemonUnavailable(
                f"another sessiond (pid {pid}) holds data dir {data} and listens on "
                f"{', '.join(sorted(bound))}, not on {path}; use that socket, or give this "
                f"one a data dir of its own (SESSIOND_DATA_DIR)"
            )
        if _past(deadline):
            if bound:
                raise DaemonUnavailable(
                    f"sessiond (pid {pid}) holds {data} but its socket {path} is "
                    f"missing, and it has not bound it again within {timeout:g}s; "
                    f"see its log"
                )
            raise DaemonUnavailable(
                f"another sessiond{f' (pid {pid})' if pid else ''} holds data dir {data} "
                f"and has not answered on {path} within {timeout:g}s (a big journal takes "
                f"a while to replay: it may answer soon); see {data / 'sessiond.log'}"
            )
        time.sleep(0.05)
    if not _answers(path):
        raise DaemonUnavailable(
            f"sessiond exited before answering on {path}: another sessiond held data dir "
            f"{data}, and ended before it answered; see {data / 'sessiond.log'}"
        )


def _reason(log_path: Path, offset: int, pid: int) -> str | None:
    """Why the daemon ``pid`` stopped, from what its start wrote to its log
    (from ``offset``): the last error it logged, else the last line that
    reached its stderr (a traceback's last line, an interpreter's
    complaint). ``None`` when it said nothing."""
    try:
        with open(log_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0  # rotated since: this start's lines are all there is
            f.seek(max(offset, size - REASON_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    logged: str | None = None
    printed: str | None = None
    for line in text.splitlines():
        line = line.strip()
        record = _RECORD.search(line)
        if record is None:
            if line:
                printed = line
        elif int(record[1]) == pid and record[2] in ("ERROR", "CRITICAL"):
            logged = record[3]
    return logged or printed


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
    if not _wait_for(path, time.monotonic() + SYSTEMD_WAIT_SECONDS):
        raise DaemonUnavailable(
            f"systemd started {SOCKET} but nothing answers on {path} within "
            f"{SYSTEMD_WAIT_SECONDS:g}s; see 'systemctl --user status {SOCKET}' and "
            f"'journalctl --user -u sessiond'"
        )
