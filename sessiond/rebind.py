"""Keeping the socket's path: bind it again when it is taken away.

A tmp cleaner, or a logout that empties ``$XDG_RUNTIME_DIR``, removes the
socket file while the daemon runs on: it holds the data dir's lock, so no
other daemon can start, and nobody can reach it. Once a second the daemon
checks that its path still leads to the socket it bound (the same device
and inode). When the path is gone it binds it again (``bind_socket``
re-creates the private directory too) and accepts there, and says so in
its log. When something else is at the path (another daemon's socket, say)
it warns once and leaves it alone: it is not this daemon's to remove. A
socket there that nothing listens on any more is replaced, as at start.

Not for a socket passed by systemd: systemd owns that one, and binds it
again itself when its socket unit is restarted.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from sessiond import paths
from sessiond.diskio import describe
from sessiond.errors import SessionError, StartError
from sessiond.server import Server
from sessiond.ticks import TICK, until_tick

log = logging.getLogger("sessiond")

CHECK_INTERVAL = TICK
# How often something else found at the path is looked at again.
JUDGE_AGAIN = 30.0
Identity = tuple[int, int]


def identity(path: Path) -> Identity | None:
    """What ``path`` leads to (device, inode); ``None`` once it is gone.
    Raises ``OSError`` when that cannot be told (a directory on the way
    that cannot be searched)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


class SocketKeeper:
    """The daemon's own socket at ``path``: watched, and bound again there
    (with ``bind``) when the path no longer leads to it."""

    def __init__(self, path: Path, bind: Callable[[Path], socket.socket]) -> None:
        self.path = path
        self._bind = bind
        # Taken just after the bind, before any client could connect.
        self.bound_as = self._identity()
        self._said: str | None = None  # the last problem logged (said once)
        # What else was last found at the path, and judged (see ``check``).
        self._judged: Identity | None = None
        self._judge_again = 0.0

    def _identity(self) -> Identity | None:
        """Of the socket just bound (``None`` if that cannot be told: the
        next check then warns, rather than the daemon failing)."""
        try:
            return identity(self.path)
        except OSError as exc:
            log.warning("cannot stat socket %s: %s", self.path, describe(exc))
            return None

    def still_ours(self) -> bool:
        """Whether the path still leads to our socket (then a clean stop
        removes it; another daemon's is left alone)."""
        try:
            return self.bound_as is not None and identity(self.path) == self.bound_as
        except OSError:
            return False

    async def run(self, server: Server) -> None:
        """Check every ``CHECK_INTERVAL`` seconds (at each tick:
        ``sessiond.ticks``), for the daemon's life."""
        while True:
            await anyio.sleep(until_tick())
            await self.check(server)

    async def check(self, server: Server) -> None:
        try:
            now = identity(self.path)
        except OSError as exc:
            self._say(f"cannot tell whether socket {self.path} is still this daemon's: "
                      f"{describe(exc)}")
            return
        if now is not None:
            if now == self.bound_as:
                self._said = None
                return
            if now == self._judged and time.monotonic() < self._judge_again:
                return
            # Something else is there. A socket nothing listens on (another
            # program's, which ended without removing it) is replaced, as at
            # start (``bind_socket``); a live one, or anything else, is left
            # alone. Judged when first found, then every ``JUDGE_AGAIN``
            # (a live one may end): the probe connects to it, and a live
            # program need not hear from us every second. In a thread: a
            # live one with a full backlog makes the probe wait.
            self._judged = now
            self._judge_again = time.monotonic() + JUDGE_AGAIN
            try:
                sock = await anyio.to_thread.run_sync(self._bind, self.path)
            except (SessionError, OSError):
                self._say(f"socket {self.path} no longer leads to this daemon (another "
                          f"daemon's socket, or a file, is there now): leaving it alone; "
                          f"clients cannot reach this daemon until it is removed")
                return
        else:
            try:
                sock = self._bind(self.path)
            except (SessionError, OSError) as exc:
                self._say(f"socket {self.path} is gone and could not be bound again: {exc}; "
                          f"retrying every {CHECK_INTERVAL:g}s")
                return
        try:
            self.bound_as = self._identity()
            await server.listen_on(sock)
        except OSError as exc:
            sock.close()
            self._say(f"socket {self.path} was bound again but cannot be listened on: "
                      f"{describe(exc)}; retrying")
            return
        self._said = None
        log.warning("socket %s was removed while this daemon ran (a tmp cleaner, or a "
                    "logout that emptied the runtime directory?): bound it again",
                    self.path)

    def _say(self, problem: str) -> None:
        if problem != self._said:
            log.warning("%s", problem)
            self._said = problem


SOCKET_PATH_MAX = paths.SOCKET_PATH_MAX


def bind_socket(path: Path) -> socket.socket:
    """A listening socket at ``path``, created 0600 by the umask at bind.

    A stale socket (nothing answers) is replaced; a live one is an error."""
    length = len(os.fsencode(path))
    if length > SOCKET_PATH_MAX:
        # Else bind says only "AF_UNIX path too long", with no errno.
        raise StartError(
            f"cannot bind {path}: the path is {length} bytes long and a Unix socket's "
            f"path can be at most {SOCKET_PATH_MAX}; choose a shorter one with --socket "
            f"or SESSIOND_SOCKET"
        )
    paths.private_dir(path.parent)
    if path.exists() or path.is_symlink():
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise StartError(f"{path} exists and is not a socket; remove it or choose --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A live daemon with a full backlog makes connect wait: that still
        # means "in use", so a timeout counts as live.
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("replacing stale socket %s", path)
            path.unlink(missing_ok=True)
        else:
            raise StartError(f"socket {path} is in use by another running sessiond")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot bind {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(old)
    sock.listen(512)
    return sock
