"""Expiry: the deadline queue on its own, then the daemon's timer and the
lifetime rules end to end, with short TTLs and no client touching sessions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessiond.deadlines import PRUNE_SLACK, DeadlineQueue
from sessiond.errors import ReadOnly
from sessiond.model import US, iso, now_us
from tests.conftest import Daemon, wait_until
from tests.fleet import engine_state

# -- the queue -----------------------------------------------------------------


def always(sid: str, deadline: int) -> bool:
    return True


def test_pop_due_yields_entries_due_by_now_earliest_first() -> None:
    q = DeadlineQueue()
    for deadline, sid in [(30, "c"), (10, "a"), (20, "b"), (40, "d")]:
        q.push(deadline, sid)
    assert list(q.pop_due(30)) == [(10, "a"), (20, "b"), (30, "c")]
    assert q.peek() == 40 and len(q) == 1
    assert list(q.pop_due(39)) == []


def test_pop_due_with_a_limit_leaves_the_rest_queued() -> None:
    q = DeadlineQueue()
    for i in range(10):
        q.push(i, f"s{i}")
    assert [sid for _, sid in q.pop_due(100, limit=3)] == ["s0", "s1", "s2"]
    assert q.peek() == 3 and len(q) == 7


def test_pop_due_pops_only_what_the_caller_takes() -> None:
    q = DeadlineQueue()
    for i in range(5):
        q.push(i, f"s{i}")
    due = q.pop_due(100)
    assert next(due) == (0, "s0")
    del due
    assert len(q) == 4


def test_peek_of_an_empty_queue_is_none() -> None:
    q = DeadlineQueue()
    assert q.peek() is None and list(q.pop_due(10**18)) == []


def test_drop_stale_head_discards_stale_entries_until_a_live_one() -> None:
    q = DeadlineQueue()
    for deadline, sid in [(1, "gone"), (2, "moved"), (3, "live"), (4, "gone2")]:
        q.push(deadline, sid)
    q.drop_stale_head(lambda sid, d: sid.startswith("live"))
    assert q.peek() == 3 and len(q) == 2


def test_count_due_before_skips_stale_and_later_entries() -> None:
    q = DeadlineQueue()
    for deadline, sid in [(5, "a"), (7, "stale"), (9, "b"), (11, "c"), (9, "b")]:
        q.push(deadline, sid)
    live = lambda sid, d: sid != "stale"  # noqa: E731
    assert q.count_due_before(10, live) == 2  # a, and b once though queued twice
    assert q.count_due_before(4, live) == 0
    assert q.count_due_before(100, live) == 3


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)), max_size=80),
    stale=st.sets(st.integers(0, 30)),
    pops=st.integers(0, 20),
    limit=st.integers(-1, 101),
)
def test_count_due_before_agrees_with_a_full_count(
    entries: list[tuple[int, int]], stale: set[int], pops: int, limit: int
) -> None:
    q = DeadlineQueue()
    for deadline, n in entries:
        q.push(deadline, f"s{n}")
    popped = list(q.pop_due(pops))
    left = sorted(entries)[len(popped):]

    def live(sid: str, deadline: int) -> bool:
        return int(sid[1:]) not in stale

    expected = {(d, f"s{n}") for d, n in left if d <= limit and n not in stale}
    assert q.count_due_before(limit, live) == len(expected)


def test_count_due_before_visits_only_the_due_part_of_the_heap() -> None:
    q = DeadlineQueue()
    for i in range(100_000):
        q.push(1_000 + i, f"later{i}")
    for i in range(10):
        q.push(i, f"soon{i}")
    visited: list[str] = []

    def live(sid: str, deadline: int) -> bool:
        visited.append(sid)
        return True

    assert q.count_due_before(999, live) == 10
    assert len(visited) == 10


def test_prune_keeps_each_live_entry_once() -> None:
    q = DeadlineQueue()
    q.push(5, "a")
    q.push(5, "a")
    q.push(6, "stale")
    q.push(7, "b")
    q.prune(lambda sid, d: sid != "stale")
    assert len(q) == 2 and list(q.pop_due(10)) == [(5, "a"), (7, "b")]


def test_needs_prune_once_stale_entries_outnumber_live_ones_by_the_slack() -> None:
    q = DeadlineQueue()
    live = 100
    for i in range(2 * live + PRUNE_SLACK):
        q.push(i, f"s{i}")
    assert not q.needs_prune(live)
    q.push(0, "one-more")
    assert q.needs_prune(live)


def test_entries_added_in_bulk_wait_unordered_until_one_is_due() -> None:
    q = DeadlineQueue()
    q.push(50, "heaped")
    q.add_many([(30, "c"), (10, "a"), (20, "b")])
    assert len(q) == 4 and q.peek() == 10
    assert list(q.pop_due(9)) == [] and q._waiting, "nothing due: no heapify yet"
    assert q.count_due_before(9, always) == 0 and q._waiting
    assert q.count_due_before(25, always) == 2
    assert list(q.pop_due(100)) == [(10, "a"), (20, "b"), (30, "c"), (50, "heaped")]


def test_a_prune_takes_in_the_entries_waiting() -> None:
    q = DeadlineQueue()
    q.add_many([(5, "a"), (5, "a"), (6, "stale")])
    q.prune(lambda sid, d: sid != "stale")
    assert len(q) == 1 and list(q.pop_due(10)) == [(5, "a")]


# -- the daemon's timer ------------------------------------------------------------


def journal_records(d: Daemon) -> list[dict[str, Any]]:
    if not d.journal.exists():
        return []
    return [json.loads(line) for line in d.journal_bytes().decode().splitlines() if line.strip()]


def lines_for(d: Daemon, sid: str) -> list[dict[str, Any]]:
    return [r for r in journal_records(d) if r["id"] == sid]


def expired_line(d: Daemon, sid: str) -> dict[str, Any] | None:
    """The session as the engine holds it, once it is expired there (read
    behind the daemon's back: a read through it would expire it lazily)."""
    record = engine_state(d).get(sid)
    return record if record is not None and record["status"] == "expired" else None


def ctl_json(d: Daemon, *args: str) -> Any:
    done = d.ctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_session_expires_with_no_client_touching_it(daemon: Daemon) -> None:
    sid = ctl_json(daemon, "create", "--ttl", "1")["id"]
    # Only the journal is watched: a get or a list would expire it lazily.
    line = wait_until(lambda: expired_line(daemon, sid), 15, "the timer to expire the session")
    assert line["expired_at"] == line["expires_at"]
    assert line["version"] == 2
    with daemon.client() as c:
        stats = c.stats()
        got = c.get(sid)
    assert (stats.expiries_done, stats.expired, stats.active) == (1, 1, 0)
    # How late the timer was: never early, and well within a loaded machine's margin.
    assert 0 <= stats.expiry_lag_p99_ms <= stats.expiry_lag_max_ms < 10_000
    assert got.status == "expired" and got.version == 2


def test_many_sessions_due_together_all_expire(daemon: Daemon) -> None:
    with daemon.client() as c, c.pipeline() as p:
        queued: Any = p  # its methods return Pending answers, not sessions
        made = [queued.create(ttl=1) for _ in range(300)]
    ids = {m.result().id for m in made}

    def all_expired() -> bool:
        return {sid for sid, r in engine_state(daemon).items() if r["status"] == "expired"} == ids

    wait_until(all_expired, 15, "every session to expire")
    with daemon.client() as c:
        assert c.stats().expiries_done == 300


def test_stats_show_sessions_due_in_the_next_minute(daemon: Daemon) -> None:
    with daemon.client() as c:
        for ttl in (30, 45, 59):
            c.create(ttl=ttl)
        c.create(ttl=3600)
        gone = c.create(ttl=30)
        c.delete(gone.id)
        moved = c.create(ttl=30)
        c.refresh(moved.id, ttl=600)
    stats = ctl_json(daemon, "stats")
    assert (stats["due_next_minute"], stats["active"], stats["expiries_done"]) == (3, 5, 0)
    assert stats["expiry_lag_max_ms"] == stats["expiry_lag_p99_ms"] == 0


def test_expiry_survives_a_restart(daemon: Daemon) -> None:
    with daemon.client() as c:
        done = c.create(ttl=1).id
        pending = c.create(ttl=2).id
        keep = c.create(ttl=3600).id
    wait_until(lambda: expired_line(daemon, done), 15, "the timer to expire the session")
    with daemon.client() as c:
        before = c.get(done)
    daemon.restart()
    with daemon.client() as c:
        assert c.get(done) == before and before.status == "expired"
    # Expired once, not again at start: one change since its creation.
    assert engine_state(daemon)[done]["version"] == 2
    # A deadline that passed (or passes) across the restart is still kept.
    wait_until(lambda: expired_line(daemon, pending), 15, "the other session to expire")
    with daemon.client() as c:
        late = c.get(pending)
        assert c.get(keep).status == "active"
    assert late.status == "expired" and late.expired_at == late.expires_at


def write_journal(d: Daemon, *records: dict[str, Any]) -> None:
    d.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.journal.write_text("".join(json.dumps(r) + "\n" for r in records))


def legacy_record(sid: str, expires_at: int, ttl: int = 60) -> dict[str, Any]:
    created = expires_at - ttl * US
    return {
        "type": "session", "id": sid, "user": "alice", "status": "active", "ttl": ttl,
        "meta": {"k": "v"}, "created_at": iso(created), "last_access": iso(created),
        "expires_at": iso(expires_at),
    }


@pytest.mark.local_only("a journal written before the daemon starts")
def test_sessions_past_due_at_start_come_back_expired_before_the_socket_opens(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    now = now_us()
    write_journal(
        d,
        legacy_record("recent", now - 5 * US),
        legacy_record("long-ago", now - 8 * 86400 * US),
        legacy_record("future", now + 3600 * US),
    )
    d.start()
    # Nothing has asked the daemon anything yet beyond a ping: whatever the
    # journal holds now was written before it answered.
    recent = expired_line(d, "recent")
    assert recent is not None and recent["expired_at"] == recent["expires_at"]
    # Expired more than expired_retention (7 days) ago: purged as well.
    assert [r["type"] for r in lines_for(d, "long-ago")] == ["session", "session", "delete"]
    assert [r["status"] for r in lines_for(d, "future")] == ["active"]
    with d.client() as c:
        assert c.get("recent").status == "expired"
        assert c.get("future").status == "active"
        stats = c.stats()
    assert (stats.total_sessions, stats.expiries_done, stats.purges_done) == (2, 2, 1)


# -- lifetime rules through the CLI ------------------------------------------------


def test_refresh_of_an_expired_session_is_refused_unless_revived(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.create(ttl=600).id
        c.expire(sid)
    size = len(daemon.journal_bytes())
    refused = daemon.ctl("refresh", sid)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "expired" in refused.stderr and "revive" in refused.stderr
    assert len(daemon.journal_bytes()) == size
    revived = ctl_json(daemon, "refresh", sid, "--revive", "--ttl", "60")
    assert (revived["status"], revived["ttl"], revived["expired_at"]) == ("active", 60, None)
    assert revived["version"] == 3


def test_get_touch_slides_the_deadline(daemon: Daemon) -> None:
    with daemon.client() as c:
        made = c.create(ttl=600)
    touched = ctl_json(daemon, "get", made.id, "--touch")
    assert touched["version"] == made.version + 1
    assert touched["expires_at"] > iso(made.expires_at_us)
    assert touched["last_access"] > iso(made.last_access_us)


def test_max_lifetime_caps_refresh_and_applies_live(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.set_config("max_lifetime", 120)
        s = c.create(ttl=60)
        refreshed = c.refresh(s.id, ttl=86400)
    assert refreshed.expires_at_us == s.created_at_us + 120 * US


@pytest.mark.local_only("a journal that refuses the timer's writes")
def test_expiries_the_journal_refuses_are_reverted_and_retried_without_spinning(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always", env={"SESSIOND_FAILPOINT": "fsync-error"}, start=False)
    # The session exists before the daemon starts, so the first write the
    # daemon attempts (and sees fail) is the timer's expiry.
    write_journal(d, legacy_record("due", now_us() + 3 * US, ttl=3600))
    d.start()
    wait_until(lambda: "could not persist" in d.log_text(), 20, "the expiry to be refused")
    wait_until(lambda: d.log_text().count("could not persist") >= 2, 10, "a retry")
    # Retried about once a second, not in a loop that starves everything else.
    assert d.log_text().count("could not persist") <= 5
    with d.client() as c:
        stats = c.stats()
        assert stats.read_only is not None
        # Reverted: still active in memory, and no expiry counted.
        assert (stats.active, stats.expired, stats.expiries_done) == (1, 0, 0)
        # A read still reports the rule (past its deadline is expired); the
        # lazy expiry behind it cannot be persisted, so it is reverted too.
        assert c.get("due").status == "expired"
        with pytest.raises(ReadOnly):
            c.create(user="new")
        stats = c.stats()
        assert (stats.active, stats.expired, stats.expiries_done) == (1, 0, 0)
    assert [r.get("status") for r in journal_records(d)] == ["active"]
