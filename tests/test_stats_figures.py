"""``sessionctl stats`` counts what happened, after operations whose outcome
is known: sessions by status, users, the average ttl, what falls due in the
next minute, expiries and purges done since the start, connections and
watchers. Through the real ``sessionctl`` against a real daemon."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Daemon, wait_until
from tests.test_watch import CtlWatch


def stats(d: Daemon) -> dict[str, Any]:
    done = d.ctl("stats", "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def created(d: Daemon, user: str, ttl: int) -> str:
    done = d.ctl("create", "--user", user, "--ttl", str(ttl))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


FIGURES = ("total_sessions", "active", "expired", "unique_users", "average_ttl_seconds",
           "due_next_minute", "expiries_done", "purges_done")


def figures(d: Daemon) -> dict[str, Any]:
    st = stats(d)
    return {key: st[key] for key in FIGURES}


def test_stats_count_what_known_operations_did(daemon: Daemon) -> None:
    a = created(daemon, "alice", 30)
    # Deadlines far from the minute's edge, and one (dave's) well inside
    # it: a loaded machine may take seconds between the steps.
    created(daemon, "alice", 600)
    created(daemon, "bob", 3000)
    gone = created(daemon, "carol", 3600)
    assert daemon.ctl("delete", gone).returncode == 0
    assert daemon.ctl("expire", a).returncode == 0
    assert figures(daemon) == {
        "total_sessions": 3, "active": 2, "expired": 1, "unique_users": 2,
        "average_ttl_seconds": 1210.0, "due_next_minute": 0, "expiries_done": 1,
        "purges_done": 0,
    }
    assert daemon.ctl("cleanup").returncode == 0
    created(daemon, "dave", 45)
    assert figures(daemon) == {
        "total_sessions": 3, "active": 3, "expired": 0, "unique_users": 3,
        "average_ttl_seconds": 1215.0, "due_next_minute": 1, "expiries_done": 1,
        "purges_done": 1,
    }


def test_stats_count_connections_and_watchers(daemon: Daemon) -> None:
    st = stats(daemon)
    assert (st["connections"], st["watchers"]) == (1, 0)  # the stats command's own
    watch = CtlWatch(daemon)
    try:
        wait_until(lambda: stats(daemon)["watchers"] == 1, 15, "the watch to be counted")
        # The watch's connection and the stats command's: the one the watch
        # command opened first is not left idle beside its watch.
        assert stats(daemon)["connections"] == 2
    finally:
        watch.interrupt()
    wait_until(lambda: stats(daemon)["watchers"] == 0, 15, "the watch to be gone")
    assert stats(daemon)["connections"] == 1
