"""Why nothing answers on the socket, said when connecting has failed.

Imported on that error path only: a command that reaches its daemon never
pays for reading the data dir's lock file.

The case it exists for: the socket file was removed (a tmp cleaner, a
logout that emptied the runtime directory) while the daemon runs on,
holding the data dir's lock. It binds the path again within a few seconds
(``sessiond.rebind``); until then a client is told which daemon that is,
rather than to start one (which would fail on the lock).
"""

from __future__ import annotations

import os

from sessiond.paths import LOCK_NAME, data_dir


def holder(data: str | os.PathLike[str] | None = None) -> int | None:
    """The pid of the live ``sessiond`` that holds the data dir (``data``,
    or the one the daemon would use), as its lock file says; ``None`` when
    it names none, or a process that is gone or is not a sessiond (a pid
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
    except OSError:  # gone, or not ours to signal: not our daemon either way
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"sessiond" not in f.read():
                return None
    except FileNotFoundError:
        return None  # exited meanwhile (or no /proc: then kill(0) must do)
    except OSError:
        pass
    return pid


def socket_missing(where: str, pid: int) -> str:
    """What to tell a client when the daemon ``pid`` runs but ``where`` is gone."""
    return (
        f"sessiond (pid {pid}) holds {data_dir()} but its socket {where} is missing "
        f"(removed by a tmp cleaner, or a logout?); it binds it again within a few seconds"
    )


def connect_failed(where: str, exc: OSError) -> str | None:
    """A better reason than ``exc`` for failing to connect to ``where``, if
    there is one: the daemon runs but its socket is gone, or the path is
    one no socket can have. ``None``: say what the caller would have."""
    if isinstance(exc, FileNotFoundError):
        pid = holder()
        if pid is not None:
            return socket_missing(where, pid)
        return None
    if exc.errno is None and "too long" in str(exc):
        # connect(2) refuses such a path with no errno ("AF_UNIX path too long").
        return (
            f"cannot connect to {where}: the path is {len(os.fsencode(where))} bytes long "
            f"and a Unix socket's path can be at most 107; use a shorter --socket or "
            f"SESSIOND_SOCKET"
        )
    return None
