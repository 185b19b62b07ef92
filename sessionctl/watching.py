"""``sessionctl watch``: events as they happen, across daemon restarts.

A daemon that stops (``sessionctl shutdown``, ``systemctl --user restart``,
an upgrade, a crash that systemd restarts) ends its watchers' connections.
``watch`` then waits for a daemon to answer on the same socket again, with
a backoff, for up to ``--reconnect-timeout`` (60 s by default), and goes on
watching; it says so in one line on stderr, since the events in between
were missed. It never starts a daemon to reconnect to: one stopped on
purpose (to run ``sessiond --repair``, say) must stay stopped. Past the
timeout, or at once with ``--no-reconnect``, it ends with exit status 3.
A shared daemon whose engine goes away (a restart, a failover) ends its
watches too, in the engine's words: a watch that has shown an event (and
so holds its cursor) asks again with the same backoff and patience, and
resumes after the last event shown once the engine is back, nothing
missed that the engine keeps. One that has shown none, or ``--no-reconnect``,
ends there with exit status 3, as does a watch refused at its start.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sessionctl import render
from sessionctl.client import Client
from sessionctl.handlers import CliClient, plural
from sessionctl.registry import EXIT_OK, Args, out
from sessionctl.results import Event
from sessiond.errors import (
    BackendUnavailable,
    Busy,
    ConnectionLost,
    DaemonUnavailable,
    SessionError,
)
from sessiond.model import iso

# What a lost connection looks like, and what a daemon on its way up or
# down answers: worth trying again.
LOST = (DaemonUnavailable, Busy)
FIRST_DELAY = 0.05
MAX_DELAY = 1.0
# A watch that ran this long before the engine was found away had been
# answered (a request to an engine away fails within about two seconds):
# a new outage, given the whole patience again.
ANSWERED_AFTER = 5.0


def show(ev: Event, as_json: bool, full: bool = False) -> None:
    if as_json:
        data: dict[str, Any] = {"event": ev.kind, "id": ev.sid, "at": iso(ev.at_us)}
        if ev.session is not None:
            data["session"] = render.session_dict(ev.session)
        if ev.kind == "lagged":
            data["dropped"] = ev.dropped
        out(render.to_json(data, indent=0).replace("\n", ""))
    elif ev.kind == "lagged":
        out(f"{iso(ev.at_us)} lagged, {plural(ev.dropped, 'event')} dropped")
    elif ev.kind != "watching":
        user = f" user={render.escape(ev.session.user)}" if ev.session else ""
        head = f"{iso(ev.at_us)} {ev.kind} {render.escape(str(ev.sid))}"
        # Asked at each event: a terminal may be resized during a watch. The
        # user is cut to fit, never the id (ids are ASCII: len is width).
        columns = render.screen_columns(full)
        if columns is not None:
            user = render.clip(user, max(columns - len(head), render.MIN_FITTED))
        out(head + user)
    sys.stdout.flush()


class Patience:
    """Asking again, with a growing delay, for up to ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._delay = FIRST_DELAY

    def wait(self, giving_up: SessionError) -> None:
        """Sleep until the next ask; raises ``giving_up`` once the time is
        up. The last ask is at the deadline itself: the whole time is given."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise giving_up from None
        time.sleep(min(self._delay, left))
        self._delay = min(self._delay * 2, MAX_DELAY)


def _why(lost: Exception) -> str:
    """What happened to a watch's connection: not what a lost request's
    error adds about its outcome, which means nothing to a watch."""
    return lost.why if isinstance(lost, ConnectionLost) else str(lost)


def reconnect(args: Args, where: str, lost: Exception) -> Client:
    """A client on ``where`` once a daemon answers there again, within
    ``--reconnect-timeout``; else ``DaemonUnavailable``. Starts no daemon."""
    patience = Patience(args.reconnect_timeout)
    while True:
        try:
            return CliClient(where, autostart=False)
        except LOST as exc:
            last = exc
        patience.wait(DaemonUnavailable(
            f"watch: lost the connection to sessiond on {where} ({_why(lost)}), and no daemon "
            f"answered there again within {patience.seconds}s ({last}); giving up"
        ))


def _engine_away(
    args: Args, where: str, exc: BackendUnavailable, asked: float, away: Patience | None
) -> Patience:
    """Wait before asking for the watch again while the engine is away (a
    new ``Patience`` when the watch had been answered since the last);
    raises ``BackendUnavailable`` once ``--reconnect-timeout`` has passed
    since the engine was found away."""
    if away is None or time.monotonic() - asked > ANSWERED_AFTER:
        away = Patience(args.reconnect_timeout)
        sys.stderr.write(
            f"sessionctl: watch: {exc}; asking sessiond on {where} again for up to "
            f"{args.reconnect_timeout:g}s, to resume after the last event shown\n"
        )
        sys.stderr.flush()
    away.wait(BackendUnavailable(
        f"watch: the engine did not come back within {args.reconnect_timeout:g}s "
        f"({exc}); giving up"
    ))
    return away


def h_watch(c: Client, args: Args) -> int:
    where = str(c.path)
    client = c
    # The cursor of the last event shown: a shared daemon's events carry
    # one, and a watch that comes back resumes after it (nothing missed
    # that the engine still keeps); a local daemon's do not.
    cursor: str | None = None
    # How long to ask again while the engine of a shared daemon is away.
    away: Patience | None = None
    try:
        while True:
            client._release()  # the watch has a connection of its own
            asked = time.monotonic()
            try:
                for ev in client.watch(user=args.user, after=cursor):
                    away = None
                    show(ev, args.json, args.full)
                    if ev.cursor is not None:
                        cursor = ev.cursor
                return EXIT_OK
            except BackendUnavailable as exc:
                if args.no_reconnect or cursor is None:
                    raise
                away = _engine_away(args, where, exc, asked, away)
                continue
            except LOST as exc:
                if args.no_reconnect:
                    raise
                lost = exc
            if client is not c:
                client.close()
            client = c  # until a daemon answers again
            client = reconnect(args, where, lost)
            missed = ("resuming after the last event shown" if cursor is not None
                      else "events in between were missed")
            sys.stderr.write(
                f"sessionctl: watch: reconnected to sessiond on {where} (pid "
                f"{client.server_pid}) after losing the connection ({_why(lost)}); {missed}\n"
            )
            sys.stderr.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if client is not c:
            client.close()
