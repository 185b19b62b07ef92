"""Retention: expired sessions stay visible until ``cleanup`` or until
``expired_retention`` seconds have passed, when the daemon purges them itself
and says so in the journal."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sessiond.errors import InvalidRequest, SessionNotFound
from tests.conftest import Daemon, wait_until
from tests.fleet import engine_state


def started(make_daemon: Callable[..., Daemon], **settings: Any) -> Daemon:
    """A daemon with ``settings`` in force (set as a user would: through
    ``config``, which every engine takes)."""
    d = make_daemon()
    with d.client() as c:
        for key, value in settings.items():
            c.set_config(key, value)
    return d


def journal_lines(d: Daemon, sid: str) -> list[tuple[str, str | None]]:
    """(type, status) of every journal line about ``sid``, in order."""
    out = []
    for line in d.journal_bytes().decode().splitlines():
        record = json.loads(line)
        if record["id"] == sid:
            out.append((record["type"], record.get("status")))
    return out


def purged(d: Daemon, sid: str) -> bool:
    """Gone from the engine (read behind the daemon's back, which a read
    through it would not be)."""
    return sid not in engine_state(d)


def expired(d: Daemon, sid: str) -> bool:
    record = engine_state(d).get(sid)
    return record is not None and record["status"] == "expired"


def test_expired_sessions_are_purged_after_retention(make_daemon: Callable[..., Daemon]) -> None:
    d = started(make_daemon, expired_retention=1)
    with d.client() as c:
        sid = c.create(ttl=1).id
    # Nothing touches the session: the timer expires it, then purges it.
    wait_until(lambda: purged(d, sid), 15, "the session to be purged")
    if not d.engine.shared:
        assert journal_lines(d, sid) == [
            ("session", "active"), ("session", "expired"), ("delete", None)
        ]
    with d.client() as c:
        with pytest.raises(SessionNotFound):
            c.get(sid)
        stats = c.stats()
    assert (stats.total_sessions, stats.expiries_done, stats.purges_done) == (0, 1, 1)
    d.restart()
    got = d.ctl("get", sid)
    assert got.returncode == 1 and "not found" in got.stderr


def test_a_session_expired_by_hand_is_purged_after_retention(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = started(make_daemon, expired_retention=1)
    with d.client() as c:
        # A far deadline keeps the timer asleep; the expiry must wake it.
        c.create(ttl=86400)
        sid = c.create(ttl=86400).id
        c.expire(sid)
        assert c.get(sid).status == "expired"
    wait_until(lambda: purged(d, sid), 15, "the expired session to be purged")
    with d.client() as c:
        assert c.stats().total_sessions == 1


def test_retention_zero_keeps_expired_sessions_until_cleanup(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = started(make_daemon, expired_retention=0)
    with d.client() as c:
        first = c.create(ttl=1).id
    wait_until(lambda: expired(d, first), 15, "first expiry")
    with d.client() as c:
        second = c.create(ttl=1).id
    # A whole TTL later the first expired session is still there.
    wait_until(lambda: expired(d, second), 15, "second expiry")
    assert not purged(d, first)
    with d.client() as c:
        assert c.get(first).status == "expired"
        assert c.stats().purges_done == 0
    dry = d.ctl("cleanup", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["removed_ids"] == [first, second]
    assert not purged(d, first)
    done = d.ctl("cleanup", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_count"] == 2
    assert purged(d, first) and purged(d, second)
    with d.client() as c:
        assert c.stats().total_sessions == 0


def test_shortening_retention_live_purges_what_has_waited_long_enough(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.create(ttl=600).id
        c.expire(sid)
    changed = daemon.ctl("config", "expired_retention", "1")
    assert changed.returncode == 0, changed.stderr
    wait_until(lambda: purged(daemon, sid), 15, "the session to be purged")
    if not daemon.engine.shared:
        assert json.loads(daemon.config.read_text())["expired_retention"] == 1


def test_an_invalid_retention_is_refused_and_changes_nothing(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.create(ttl=600).id
        c.expire(sid)
        for bad in (-1, "soon", 1.5, None):
            with pytest.raises(InvalidRequest, match="expired_retention"):
                c.set_config("expired_retention", bad)
    refused = daemon.ctl("config", "expired_retention", "-1")
    assert refused.returncode == 2 and "expired_retention" in refused.stderr
    assert not daemon.config.exists()
    with daemon.client() as c:
        assert c.config("expired_retention") == {"expired_retention": 7 * 86400}
        assert c.get(sid).status == "expired"
