"""``sessionctl shutdown``: stop the daemon it talks to.

A daemon that ``sessionctl`` started, or that someone runs by hand, is asked
to stop with the ``shutdown`` request: it answers, then stops as on
SIGTERM (answers the requests in flight, syncs its journal, releases its
data dir), and we wait until its process has exited, so that what follows
(``sessiond --repair``, a new daemon) finds the data dir free.

A daemon that systemd runs (it is ``sessiond.service``'s main process) is
stopped through systemd instead: a daemon that exits behind systemd's back
is started again by the socket unit at the next connection, so that stopping
only the service would stop nothing for long. ``systemctl --user stop
sessiond.socket sessiond.service`` stops both; they stay enabled, and
``sessionctl`` (which asks systemd to start the socket when the units are
installed) starts them again at its next command unless autostart is off.

No daemon answering is exit status 3: there is nothing to stop, and
``shutdown`` never starts one.
"""

from __future__ import annotations

import time

from sessionctl.client import Client
from sessionctl.handlers import CliClient, emit
from sessionctl.registry import EXIT_OK, Args, CommandFailed
from sessiond.errors import DaemonUnavailable, Unsupported
from sessiond.paths import socket_location
from sessiond.service import SERVICE, SOCKET, service_pid, systemctl

# Time for the daemon to exit once asked: it gives requests in flight up to
# 4 s, then syncs its journal.
WAIT_SECONDS = 30.0


def connect_running(where: str, verb: str) -> Client:
    """A client of the daemon on ``where``, which must be running already:
    none answering is ``DaemonUnavailable``, saying there is nothing to
    ``verb`` (``shutdown`` and ``reload`` never start one)."""
    try:
        return CliClient(where, autostart=False)
    except DaemonUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, (FileNotFoundError, ConnectionRefusedError)):
            from sessionctl.unreachable import connect_failed

            if connect_failed(where, cause) is None:
                raise DaemonUnavailable(
                    f"no sessiond answers on {where} ({cause.strerror}): there is nothing "
                    f"to {verb}"
                ) from None
        raise


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie has: only its parent
    has yet to hear of it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        # No /proc to read: the signal 0 test, which a zombie passes.
        from sessionctl.unreachable import alive

        return not alive(pid)


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    delay = 0.01
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True


def h_shutdown(args: Args) -> int:
    where = socket_location(args.socket)
    with connect_running(where, "stop") as c:
        pid = c.server_pid
        version = c.server_version
        by_systemd = service_pid() == pid
        if not by_systemd:
            try:
                c.shutdown()
            except Unsupported:
                raise CommandFailed(
                    f"sessiond {version} (pid {pid}) on {where} does not know the shutdown "
                    f"request; stop it with 'kill {pid}'"
                ) from None
    if by_systemd:
        problem = systemctl("stop", SOCKET, SERVICE)
        if problem is not None:
            raise CommandFailed(
                f"sessiond (pid {pid}) runs as the systemd user service {SERVICE}, and "
                f"stopping it failed: {problem}"
            )
    if not wait_gone(pid, WAIT_SECONDS):
        raise CommandFailed(
            f"asked sessiond (pid {pid}) on {where} to stop, and it still runs after "
            f"{WAIT_SECONDS:g}s; see its log (sessiond.log in its data dir, or "
            f"'journalctl --user -u sessiond')"
        )
    how = "systemd" if by_systemd else "request"
    emit(args, {"stopped": pid, "version": version, "socket": where, "by": how}, lambda: (
        f"stopped sessiond {version} (pid {pid}) on {where}"
        + (f" through systemd ({SOCKET} and {SERVICE} stopped)" if by_systemd else "")
    ))
    return EXIT_OK
