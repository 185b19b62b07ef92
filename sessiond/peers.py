"""Who may connect: the peer's uid (``SO_PEERCRED``), and what a peer of
another uid is told and what the log keeps of it.

Only the daemon's own user is served (the socket's directory is private,
so another uid reaches it only as root, or through modes widened by
hand). A refused peer is told why in one error frame before the daemon
hangs up, rather than left to guess whether its request ran; the log
notes each refused uid at most once a ``LOG_EVERY``, counting the rest, so
that a peer that connects in a loop cannot rotate the owner's log away.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable

from sessiond.errors import DaemonUnavailable

log = logging.getLogger("sessiond.server")

LOG_EVERY = 60.0
_PEERCRED = struct.Struct("3i")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process that connected ``sock``. Raises ``OSError``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return int(uid)


def refusal(owner: int, uid: int) -> DaemonUnavailable:
    """What a peer of ``uid`` is told: this daemon is not one it can use
    (the client's exit status 3, as for a daemon that cannot be reached)."""
    return DaemonUnavailable(
        f"refused: this sessiond serves uid {owner}; you are uid {uid} (each user runs "
        f"a daemon of their own, on a socket of their own)"
    )


class Refusals:
    """The log's account of refused peers: a line for a uid's first refusal
    and at most one a ``every`` seconds after it, saying how many refusals
    of that uid went unlogged in between."""

    def __init__(
        self, owner: int, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.owner = owner
        self.every = every
        self.clock = clock
        # By uid: when its last line was logged, and the refusals since.
        self._logged: dict[int, float] = {}
        self._unlogged: dict[int, int] = {}

    def note(self, uid: int) -> None:
        """Count a refusal of ``uid``; log it unless one was logged lately."""
        now = self.clock()
        last = self._logged.get(uid)
        if last is not None and now - last < self.every:
            self._unlogged[uid] = self._unlogged.get(uid, 0) + 1
            return
        self._logged[uid] = now
        unlogged = self._unlogged.pop(uid, 0)
        log.warning(
            "refused a connection from uid %d (only uid %d may connect)%s", uid, self.owner,
            f"; {unlogged} more from it since the last such line, not logged" if unlogged else "",
        )
