"""A descriptor kept in reserve, to answer a client when there are none.

When every descriptor the open files limit allows is in use by something
other than connections (the limit lowered under a running daemon with
``prlimit``, or the system's table full), ``accept()`` fails and the
connection stays in the listen backlog: its client hears nothing until its
own timeout, and is told only that the daemon did not answer. libev and
nginx keep one descriptor open for that moment: closed, it lets one
connection be accepted, told why in one line, and closed, and it is opened
again. ``connection_room`` (``sessiond.server``) keeps connections from
using up the limit themselves; this covers what it cannot see.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from sessiond.diskio import describe

log = logging.getLogger("sessiond.server")


class SpareDescriptor:
    """One descriptor (``/dev/null``, read-only) held for ``turn_away``."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.take()

    def take(self) -> bool:
        """Hold the spare again, if it is not held; whether it is now."""
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                # Out of descriptors, most likely: the next turn_away tries
                # again, and until then accept() backs off as before.
                log.debug("cannot hold a spare descriptor: %s", describe(exc))
        return self.fd is not None

    def release(self) -> None:
        """Close it for good (the daemon stops)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def turn_away(
        self, listener: socket.socket, answer: Callable[[socket.socket], bytes]
    ) -> bool | None:
        """With the spare closed, accept one connection waiting on
        ``listener`` (non-blocking), send it ``answer(connection)`` (one
        frame, which an empty socket buffer takes whole) and close it; then
        hold the spare again. Returns ``True`` when one was answered,
        ``None`` when none was waiting (accept(2) fails for want of a
        descriptor before it looks at the backlog: the caller waits for
        one to arrive), ``False`` when the spare could not do it (the
        caller backs off, as without one)."""
        if not self.take():
            return False
        assert self.fd is not None
        os.close(self.fd)
        self.fd = None
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            self.take()
            return None
        except OSError as exc:
            log.debug("accept with the spare descriptor closed failed: %s", describe(exc))
            self.take()
            return False
        try:
            conn.setblocking(False)
            conn.send(answer(conn))
        except OSError:
            pass  # gone already: it hears nothing either way
        finally:
            conn.close()
        self.take()
        return True
