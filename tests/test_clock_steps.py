"""Steps of the wall clock while the daemon runs (NTP, a resumed laptop, a
restored VM), made for real inside the daemon's process with the test-only
``SESSIOND_CLOCK_OFFSET_FILE`` (sessiond.failpoints.offset_clock): the
machine's clock is left alone.

Deadlines are wall-clock moments (they are persisted and shown): after a
forward step what fell due expires at once, at its deadline; after a
backward step nothing expires early, and a session's own stamps never go
back (its ``last_access`` never falls before its ``created_at`` or an
earlier ``last_access``)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sessiond.model import US
from tests.conftest import Daemon, wait_until
from tests.fleet import engine_state

pytestmark = pytest.mark.local_only(
    "shared mode runs on the engine's clock (tests/test_shared_clock.py)"
)
HOUR = 3600


def clocked(make_daemon: Any, tmp_path: Path) -> tuple[Daemon, Path]:
    offset = tmp_path / "clock-offset"
    d = make_daemon(env={"SESSIOND_CLOCK_OFFSET_FILE": str(offset)})
    assert isinstance(d, Daemon)
    return d, offset


def step(offset: Path, seconds: float) -> None:
    """Set the clock's offset from the real one (a new file each time: its
    inode changes, so a reader sees it even within one mtime tick)."""
    tmp = offset.with_suffix(".tmp")
    tmp.write_text(f"{seconds}\n")
    os.replace(tmp, offset)


def ctl_json(d: Daemon, *args: str) -> Any:
    done = d.ctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def expired_line(d: Daemon, sid: str) -> dict[str, Any] | None:
    record = engine_state(d).get(sid)
    return record if record is not None and record["status"] == "expired" else None


def test_a_forward_step_expires_what_fell_due_at_once_at_its_deadline(
    make_daemon: Any, tmp_path: Path
) -> None:
    d, offset = clocked(make_daemon, tmp_path)
    sid = ctl_json(d, "create", "--ttl", "1h")["id"]
    kept = ctl_json(d, "create", "--ttl", "3h")["id"]
    step(offset, 2 * HOUR)
    # The timer, not a read: only the journal is watched.
    line = wait_until(lambda: expired_line(d, sid), 15, "the timer to expire the session")
    assert line["expired_at"] == line["expires_at"]
    assert expired_line(d, kept) is None


def test_a_backward_step_expires_nothing_early(make_daemon: Any, tmp_path: Path) -> None:
    d, offset = clocked(make_daemon, tmp_path)
    step(offset, -HOUR)
    sid = ctl_json(d, "create", "--ttl", "30m")["id"]
    with d.client() as c:
        assert c.get(sid).status == "active"
    step(offset, 0)
    # Back on the real clock its deadline (half an hour after the stepped
    # back moment) has passed: it expires, at that deadline.
    line = wait_until(lambda: expired_line(d, sid), 15, "the timer to expire the session")
    assert line["expired_at"] == line["expires_at"]


def test_a_backward_step_never_moves_a_sessions_stamps_back(
    make_daemon: Any, tmp_path: Path
) -> None:
    d, offset = clocked(make_daemon, tmp_path)
    with d.client() as c:
        s = c.create(ttl=HOUR)
        step(offset, -HOUR)
        touched = c.get(s.id, touch=True)
        assert touched.last_access_us >= s.last_access_us >= s.created_at_us
        changed = c.set(s.id, "k", "v")
        assert changed.version == touched.version + 1
        assert changed.last_access_us >= touched.last_access_us
        refreshed = c.refresh(s.id, ttl=60)
        assert refreshed.last_access_us >= changed.last_access_us
        expired = c.expire(s.id)
        assert expired.expired_at_us is not None
        assert expired.expired_at_us >= expired.last_access_us >= expired.created_at_us


def stepped_now(seconds: float) -> int:
    return time.time_ns() // 1000 + round(seconds * US)


def test_a_deadline_slides_from_the_clock_not_from_a_stamp_ahead_of_it(
    make_daemon: Any, tmp_path: Path
) -> None:
    """A session stamped while the clock was an hour ahead does not outlive
    its ttl by that hour once the clock is set right: a touch or a refresh
    gives it now + ttl."""
    d, offset = clocked(make_daemon, tmp_path)
    step(offset, HOUR)
    with d.client() as c:
        s = c.create(ttl=600)
        step(offset, 0)
        lo = stepped_now(0)
        touched = c.get(s.id, touch=True)
        refreshed = c.refresh(s.id, ttl=60)
        hi = stepped_now(0)
    assert touched.last_access_us == refreshed.last_access_us == s.last_access_us
    assert lo + 600 * US <= touched.expires_at_us <= hi + 600 * US
    assert lo + 60 * US <= refreshed.expires_at_us <= hi + 60 * US


# The end of 9999: the last moment a journal line can carry.
LAST = "9999-12-31T23:59:59.999999Z"


def test_a_clock_near_the_end_of_9999_keeps_deadlines_readable(
    make_daemon: Any, tmp_path: Path
) -> None:
    d, offset = clocked(make_daemon, tmp_path)
    late = datetime(9999, 12, 1, tzinfo=UTC).timestamp()
    step(offset, late - time.time())
    sid = ctl_json(d, "create", "--ttl", "36500d")["id"]
    assert ctl_json(d, "get", sid)["expires_at"] == LAST
    # What the journal holds is read again at the next start.
    d.restart()
    got = ctl_json(d, "get", sid)
    assert (got["status"], got["expires_at"]) == ("active", LAST)


def test_refreshing_a_session_near_the_end_of_9999_keeps_its_deadline_readable(
    make_daemon: Any, tmp_path: Path
) -> None:
    d, offset = clocked(make_daemon, tmp_path)
    late = datetime(9999, 12, 31, 12, tzinfo=UTC).timestamp()
    step(offset, late - time.time())
    sid = ctl_json(d, "create", "--ttl", "1h")["id"]
    refreshed = ctl_json(d, "refresh", sid, "--ttl", "1d")
    assert refreshed["expires_at"] == LAST
    d.restart()
    got = ctl_json(d, "get", sid)
    assert (got["version"], got["expires_at"]) == (2, LAST)


def test_a_forward_step_is_not_counted_as_the_timers_lateness(
    make_daemon: Any, tmp_path: Path
) -> None:
    d, offset = clocked(make_daemon, tmp_path)
    sid = ctl_json(d, "create", "--ttl", "1h")["id"]
    step(offset, 2 * HOUR)
    wait_until(lambda: expired_line(d, sid), 15, "the timer to expire the session")
    stats = ctl_json(d, "stats")
    assert stats["expiries_done"] == 1
    # The timer looks at least every second; an hour is the clock's step.
    assert 0 <= stats["expiry_lag_p99_ms"] <= stats["expiry_lag_max_ms"] < 60_000
