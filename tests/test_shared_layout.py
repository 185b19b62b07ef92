"""Shared mode: how a namespace's keys are laid out in the engine. The
creation order is kept in small hashes of 128 (``sd:{NS}:o:<n>``), which a
list walks in order, across buckets that removals emptied; a namespace
written in the first layout (a sorted set) is refused at start, by name."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.conftest import Daemon, wait_until
from tests.fleet import tag
from tests.redis_servers import RedisNode


def test_the_creation_order_is_in_buckets_a_list_pages_through_even_emptied_ones(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    tag = "sd:{" + d.namespace + "}:"
    with d.client() as c:
        with c.pipeline() as p:
            made = [p.create(ttl=3600) for _ in range(300)]
        sids = [m.result().id for m in made]
        assert node.cli("TYPE", tag + "o:1").strip() == "hash"
        assert node.cli("HLEN", tag + "o:1").strip() == "128"
        assert node.cli("EXISTS", tag + "order").strip() == "0"
        # The first bucket and a half emptied, and a hole in the last.
        with c.pipeline() as p:
            for sid in sids[:200] + sids[250:260]:
                p.delete(sid)
        assert node.cli("EXISTS", tag + "o:0").strip() == "0"
        kept = sids[200:250] + sids[260:]
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = c.list_page(limit=7, cursor=cursor)
            seen += [s.id for s in page]
            if cursor is None:
                break
        assert seen == kept
        assert [s.id for s in c.list()] == kept


def test_a_namespace_in_the_first_layout_is_refused_at_start_naming_it(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    namespace = "written-by-layout-1"
    node.cli("ZADD", "sd:{" + namespace + "}:order", "1", "0" * 32)
    d = make_daemon_on(backend=node.url, namespace=namespace, start=False)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1, d.log_text()
    log = d.log_text()
    assert "Traceback" not in log
    assert f"namespace {namespace}" in log and "layout 1" in log, log
    assert "export" in log and "import" in log
    assert not d.socket.exists()


@pytest.mark.parametrize(("change", "said"), [
    (("HDEL", "e", "v"), "lacks the field(s) e, v every session has"),
    (("HSET", "v", "seven"), "holds something other than a whole number in the field(s) v"),
    (("HSET", "e", "1.5e15"), "holds something other than a whole number in the field(s) e"),
], ids=["fields-missing", "version-not-a-number", "deadline-not-a-whole-number"])
def test_a_session_hash_changed_outside_sessiond_is_refused_by_name_and_serving_goes_on(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    change: tuple[str, ...], said: str,
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    damaged, intact = d.ctl("create").stdout.strip(), d.ctl("create").stdout.strip()
    verb, *rest = change
    node.cli(verb, tag(d) + "s:" + damaged, *rest)
    got = d.ctl("get", damaged)
    assert got.returncode == 1
    assert got.stdout == ""
    assert f"session {damaged} in the engine {said}" in got.stderr
    assert "changed outside sessiond" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    # Nothing else is touched: the other session reads, the daemon runs.
    assert d.ctl("get", intact).returncode == 0
    assert d.proc is not None and d.proc.poll() is None


def test_sessions_damaged_or_deleted_outside_sessiond_are_set_aside_and_the_rest_expire(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """Left in the index of deadlines, each would come first in every look
    at what is due; a hash that makes no record used to stop the lease
    holder's timer (and, not a number, end the daemon: then the next
    holder's, one after the other)."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    due = tag(d) + "due"
    with d.client() as c:
        damaged, deleted = c.create(ttl=3600).id, c.create(ttl=3600).id
        node.cli("HSET", tag(d) + "s:" + damaged, "v", "seven")
        node.cli("DEL", tag(d) + "s:" + deleted)
        # Both fall due now (the index is the timer's only guide), ahead
        # of a session with a short ttl that must still expire on time.
        node.cli("ZADD", due, "1", damaged, "1", deleted)
        short = c.create(ttl=1).id
    # Read from the engine, not through the daemon: a read past the deadline
    # would expire it itself.
    wait_until(lambda: node.cli("HGET", tag(d) + "s:" + short, "x").strip() != "", 10,
               "the timer to expire the session behind the damaged ones")
    assert node.cli("ZSCORE", due, damaged).strip() == ""
    assert node.cli("ZSCORE", due, deleted).strip() == ""
    log = d.log_text()
    assert f"session {damaged} in the engine holds something other than a whole number " \
        "in the field(s) v" in log
    assert f"session {deleted} is in the engine's index of deadlines but its hash is gone" in log
    assert log.count(f"session {damaged} in the engine") == 1  # said once, not every turn
    assert d.proc is not None and d.proc.poll() is None
    # Repaired and touched, it is back on the timer.
    node.cli("HSET", tag(d) + "s:" + damaged, "v", "1")
    with d.client() as c:
        c.get(damaged, touch=True)
    assert node.cli("ZSCORE", due, damaged).strip() != ""


def test_entries_no_record_can_come_of_are_set_aside_whatever_is_wrong_with_them(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """A number past 64 bits (which no reply or event could carry), a key
    that is no hash, an id that is not text: each falls due ahead of a
    session that must still expire on time, and none ends the daemon."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    due = tag(d) + "due"
    with d.client() as c:
        huge, stringly = c.create(ttl=3600).id, c.create(ttl=3600).id
        node.cli("HSET", tag(d) + "s:" + huge, "v", str(10**25))
        node.cli("DEL", tag(d) + "s:" + stringly)
        node.cli("SET", tag(d) + "s:" + stringly, "junk")
        not_text = os.fsdecode(b"\xff\xfe")
        node.cli("ZADD", due, "1", huge, "1", stringly, "1", not_text)
        short = c.create(ttl=1).id
        got = d.ctl("get", huge)
        assert got.returncode == 1 and len(got.stderr.strip().splitlines()) == 1
        assert f"session {huge} in the engine holds a number past 64 bits in the field(s) v" \
            in got.stderr
    wait_until(lambda: node.cli("HGET", tag(d) + "s:" + short, "x").strip() != "", 10,
               "the timer to expire the session behind the broken entries")
    assert node.cli("ZCARD", due).strip() == "0"
    log = d.log_text()
    assert f"session {huge} in the engine holds a number past 64 bits" in log
    assert f"session {stringly} in the engine is not a hash" in log
    assert "in the engine has an id that is not UTF-8 text" in log
    assert d.proc is not None and d.proc.poll() is None
