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
from sessiond.errors import BackendUnavailable, Busy, DaemonUnavailable
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


def reconnect(args: Args, where: str, lost: Exception) -> Client:
    """A client on ``where`` once a daemon answers there again, within
    ``--reconnect-timeout``; else ``DaemonUnavailable``. Starts no daemon."""
    patience = args.reconnect_timeout
    deadline = time.monotonic() + patience
    delay = FIRST_DELAY
    while True:
        try:
            return CliClient(where, autostart=False)
        except LOST as exc:
            last = exc
        left = deadline - time.monotonic()
        if left <= 0:
            raise DaemonUnavailable(
                f"watch: lost the connection to sessiond on {where} ({lost}), and no daemon "
                f"answered there again within {patience}s ({last}); giving up"
            ) from None
        # The last try is at the deadline itself: the whole patience is given.
        time.sleep(min(delay, left))
        delay = min(delay * 2, MAX_DELAY)


def _engine_away(
    args: Args, where: str, exc: BackendUnavailable, asked: float,
    away_until: float | None, delay: float,
) -> tuple[float, float]:
    """Wait before asking for the watch again while the engine is away;
    the deadline and the next delay. Raises ``BackendUnavailable`` once
    ``--reconnect-timeout`` has passed since the engine was found away."""
    now = time.monotonic()
    if away_until is None or now - asked > ANSWERED_AFTER:
        away_until, delay = now + args.reconnect_timeout, FIRST_DELAY
        sys.stderr.write(
            f"sessionctl: watch: {exc}; asking sessiond on {where} again for up to "
            f"{args.reconnect_timeout:g}s, to resume after the last event shown\n"
        )
        sys.stderr.flush()
    left = away_until - now
    if left <= 0:
        raise BackendUnavailable(
            f"watch: the engine did not come back within {args.reconnect_timeout:g}s "
            f"({exc}); giving up"
        ) from None
    time.sleep(min(delay, left))
    return away_until, min(delay * 2, MAX_DELAY)


def h_watch(c: Client, args: Args) -> int:
    where = str(c.path)
    client = c
    # The cursor of the last event shown: a shared daemon's events carry
    # one, and a watch that comes back resumes after it (nothing missed
    # that the engine still keeps); a local daemon's do not.
    cursor: str | None = None
    # While the engine of a shared daemon is away: when to give up, and the
    # next wait between asks.
    away_until: float | None = None
    delay = FIRST_DELAY
    try:
        while True:
            client._release()  # the watch has a connection of its own
            asked = time.monotonic()
            try:
                for ev in client.watch(user=args.user, after=cursor):
                    away_until = None
                    show(ev, args.json, args.full)
                    if ev.cursor is not None:
                        cursor = ev.cursor
                return EXIT_OK
            except BackendUnavailable as exc:
                if args.no_reconnect or cursor is None:
                    raise
                away_until, delay = _engine_away(args, where, exc, asked, away_until, delay)
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
                f"{client.server_pid}) after losing the connection ({lost}); {missed}\n"
            )
            sys.stderr.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if client is not c:
            client.close()
