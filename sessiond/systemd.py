"""The two systemd protocols a service needs, without a dependency:
sd_notify (a datagram to ``$NOTIFY_SOCKET``) and socket activation
(``$LISTEN_FDS``/``$LISTEN_PID``, descriptors from 3)."""

from __future__ import annotations

import fcntl
import logging
import os
import socket

from sessiond.errors import SessionError

log = logging.getLogger("sessiond")

LISTEN_FDS_START = 3


class ActivationError(SessionError):
    """systemd passed something the daemon cannot use."""

    code = "start"


def notify_address() -> str | bytes | None:
    """Where ``notify`` sends, or None when no service manager listens.

    ``@name`` is an abstract socket; other schemes (``vsock:``) are not
    supported and raise, because the manager would wait for READY=1 forever."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    raise ActivationError(f"NOTIFY_SOCKET={address!r} is not a Unix socket path")


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=...``) if systemd listens.

    A failed send is logged, not raised: the manager missing one status line
    is no reason to stop serving sessions."""
    address = notify_address()
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("cannot notify systemd on %s (%s): %s",
                        os.environ.get("NOTIFY_SOCKET"), exc.strerror or exc,
                        message.replace("\n", " "))
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), if asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        raise ActivationError(f"WATCHDOG_USEC={usec!r} is not a whole number") from None
    if value <= 0:
        raise ActivationError(f"WATCHDOG_USEC={usec!r} is not positive")
    return value / 2_000_000


def listen_fds() -> list[int]:
    """Descriptors passed by socket activation, meant for this process.

    They arrive without close-on-exec (systemd cannot set it for us); set it,
    as ``sd_listen_fds`` does, so they do not leak into anything we run."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    text = os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    try:
        count = int(text)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={text!r} is not a whole number") from None
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError as exc:
            raise ActivationError(f"LISTEN_FDS={count} but fd {fd} is not open") from exc
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return fds


def adopt_listener(fds: list[int]) -> socket.socket:
    """The one listening Unix stream socket systemd passed, checked."""
    if len(fds) != 1:
        raise ActivationError(
            f"systemd passed {len(fds)} sockets; sessiond.socket must have exactly one "
            f"ListenStream="
        )
    try:
        sock = socket.socket(fileno=fds[0])
    except OSError as exc:
        raise ActivationError(
            f"fd {fds[0]}, passed by systemd, is not a socket ({exc.strerror})"
        ) from exc
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ActivationError(
            f"the socket systemd passed (fd {fds[0]}) is not a Unix stream socket; "
            f"sessiond.socket must use ListenStream= with a path"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ActivationError(f"the socket systemd passed (fd {fds[0]}) is not listening")
    return sock
