"""The two systemd protocols a service needs, without a dependency:
sd_notify (a datagram to ``$NOTIFY_SOCKET``) and socket activation
(``$LISTEN_FDS``/``$LISTEN_PID``, descriptors from 3)."""

from __future__ import annotations

import os
import socket

LISTEN_FDS_START = 3


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=...``) if systemd listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), if asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def listen_fds() -> list[int]:
    """Descriptors passed by socket activation, meant for this process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
