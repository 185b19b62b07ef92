"""Why nothing answers on the socket, said when connecting has failed.

Imported on that error path only: a command that reaches its daemon never
pays for reading the data dir's lock file.

The case it exists for: the socket file was removed (a tmp cleaner, a
logout that emptied the runtime directory) while the daemon runs on,
holding the data dir's lock. It binds the path again within a few seconds
(``sessiond.rebind``); until then a client is told which daemon that is,
rather than to start one (which would fail on the lock). Said only when
that daemon does listen on a socket bound to the path the client tried
(the kernel remembers the name after the file is gone): a client sent to
another path is told what it always was.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

from sessiond.paths import LOCK_NAME, data_dir

# A listening socket's flag in /proc/net/unix (__SO_ACCEPTCON).
_ACCEPTCON = 0x10000


def holder(data: str | os.PathLike[str] | None = None) -> int | None:
    """The pid of the live process that holds the data dir (``data``, or
    the one the daemon would use), as its lock file says; ``None`` when it
    names none, or a process that is gone or not ours to signal (a pid
    reused after a crash)."""
    where = data_dir(os.fspath(data) if data is not None else None)
    try:
        text = (where / LOCK_NAME).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists, by the signal 0 test: one of another
    user's does (it cannot be signalled, but is there), and so does a
    zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def listens_on(pid: int, path: str) -> bool:
    """Whether process ``pid`` listens on a Unix socket bound to ``path``,
    whether or not the socket's file is still there: the kernel keeps the
    name it was bound to (``/proc/net/unix``), and the process's
    descriptors say which sockets are its own. False when /proc cannot
    tell."""
    bound = listening(pid)
    return path in bound or os.path.abspath(path) in bound


def listening(pid: int) -> set[str]:
    """The paths process ``pid``'s listening Unix sockets were bound to
    (see ``listens_on``); empty when it has none, or /proc cannot tell."""
    names: dict[str, str] = {}
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            next(f, None)  # the header
            for line in f:
                # Num RefCount Protocol Flags Type St Inode Path
                fields = line.rstrip("\n").split(None, 7)
                if len(fields) == 8 and int(fields[3], 16) & _ACCEPTCON:
                    names[f"socket:[{fields[6]}]"] = fields[7]
    except (OSError, ValueError):
        return set()
    if not names:
        return set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    found: set[str] = set()
    for fd in fds:
        try:
            name = names.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if name is not None:
            found.add(name)
    return found


_PEERCRED = struct.Struct("3i")


def no_answer(where: str, sock: socket.socket | None) -> str:
    """What to say when the daemon on ``where`` (connected on ``sock``) did
    not answer in time: that, and, when the process listening there is
    stopped (SIGSTOP, Ctrl-Z, a debugger), which one and how to resume
    it. The kernel keeps the listener's pid for a connection even before
    the daemon accepts it."""
    said = f"sessiond on {where} did not answer in time"
    if sock is None:
        return said
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        with open(f"/proc/{_PEERCRED.unpack(raw)[0]}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return said
    pid = _PEERCRED.unpack(raw)[0]
    # The state follows the command's name, which may hold anything.
    state = stat.rpartition(b")")[2].split()[:1]
    if state in ([b"T"], [b"t"]):
        return (f"{said}: its process (pid {pid}) is stopped (SIGSTOP, Ctrl-Z or a "
                f"debugger); 'kill -CONT {pid}' resumes it")
    return said


def socket_missing(where: str, pid: int) -> str:
    """What to tell a client when the daemon ``pid`` runs but ``where`` is gone."""
    return (
        f"sessiond (pid {pid}) holds {data_dir()} but its socket {where} is missing "
        f"(removed by a tmp cleaner, or a logout?); it binds it again within a few seconds"
    )


def not_a_socket(where: str, pid: int) -> str | None:
    """What to tell a client when the daemon ``pid`` listens on a socket
    bound to ``where`` but something that is no socket is at that path
    now (which the daemon leaves alone: it is not its to remove); ``None``
    when a socket (or nothing) is there."""
    try:
        st = os.lstat(where)
    except OSError:
        return None
    if stat.S_ISSOCK(st.st_mode):
        return None
    return (
        f"sessiond (pid {pid}) holds {data_dir()} and listens on {where}, but a file that "
        f"is no socket is at that path now, which it leaves alone; remove it, and the "
        f"daemon binds the path again within a second or two"
    )


def connect_failed(where: str, exc: OSError) -> str | None:
    """A better reason than ``exc`` for failing to connect to ``where``, if
    there is one: the daemon runs but its socket is gone or replaced by a
    file, or the path is one no socket can have. ``None``: say what the
    caller would have."""
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        pid = holder()
        if pid is None or not listens_on(pid, where):
            return None
        if isinstance(exc, FileNotFoundError):
            return socket_missing(where, pid)
        return not_a_socket(where, pid)
    if exc.errno is None and "too long" in str(exc):
        # connect(2) refuses such a path with no errno ("AF_UNIX path too long").
        return (
            f"cannot connect to {where}: the path is {len(os.fsencode(where))} bytes long "
            f"and a Unix socket's path can be at most 107; use a shorter --socket or "
            f"SESSIOND_SOCKET"
        )
    return None
