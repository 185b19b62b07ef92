"""Shared mode: events are a stream in the engine. A watch on any daemon
of a namespace sees every event of it, in order per session, once; a
watch resumed at an event's cursor (``Client.watch(after=...)``) gets
exactly what it missed, even through a restart of its daemon; one that
fell behind what the stream keeps (``event_retention``) is told how many
it missed with a ``lagged`` event."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from sessiond.errors import DaemonUnavailable, InvalidRequest
from sessiond.protocol import Event
from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, engine_of, hosts, tag

pytestmark = pytest.mark.shared_only("the namespace's stream of events, read by a fleet")


def _writes(d: Daemon, sids: list[str], n: int, rounds: int) -> None:
    with d.client() as c:
        for i in range(rounds):
            for sid in sids:
                c.set(sid, f"w{n}", str(i))


def test_every_watch_of_the_namespace_sees_every_event_once_in_order(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b, c = hosts(make_daemon, 3)
    watches = [Watching(d) for d in (a, b, c)]
    for w, d in zip(watches, (a, b, c), strict=True):
        w.started(d)
    with a.client() as client:
        sids = [client.create().id for _ in range(4)]
    writers = [threading.Thread(target=_writes, args=(d, sids, n, 10))
               for n, d in enumerate((a, b, b, c))]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    with c.client() as client:
        end = client.create(meta={"end": "1"}).id

    seen = [w.until(lambda e: e.sid == end) for w in watches]
    # One order for the whole namespace: the same on every daemon.
    assert [[(e.kind, e.sid, e.cursor) for e in s] for s in seen[1:]] == [
        [(e.kind, e.sid, e.cursor) for e in seen[0]]] * 2
    events = seen[0]
    assert len(events) == 4 + 4 * 4 * 10 + 1
    for sid in sids:
        versions = [e.session.version for e in events if e.sid == sid and e.session]
        assert versions == list(range(1, 4 * 10 + 2)), sid
    assert all(w.nothing_more() == [] for w in watches)


def _cursor_after(events: list[Event], count: int) -> str:
    cursor = events[count - 1].cursor
    assert cursor is not None
    return cursor


def test_a_watch_resumed_at_a_cursor_after_its_daemon_restarted_gets_what_it_missed(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    first = Watching(a)
    first.started(a)
    whole = Watching(b)
    whole.started(b)
    with b.client() as c:
        sid = c.create().id
        c.set(sid, "k", "1")
    before = first.count(2)
    cursor = _cursor_after(before, 2)

    a.stop()
    wait_until(lambda: first.error is not None, 10, "the watch to end with its daemon")
    assert isinstance(first.error, DaemonUnavailable)
    with b.client() as c:
        c.set(sid, "k", "2")
        other = c.create(user="bob").id
        c.delete(sid)
    a.start()
    with b.client() as c:
        c.set(other, "after", "restart")

    resumed = Watching(a, after=cursor)
    got = resumed.count(4)
    expected = whole.count(6)[2:]
    assert [(e.kind, e.sid, e.cursor) for e in got] == [
        (e.kind, e.sid, e.cursor) for e in expected]
    assert [e.kind for e in got] == ["updated", "created", "deleted", "updated"]
    assert resumed.nothing_more() == []


def test_a_watch_resumed_at_a_cursor_filters_by_user_too(
    make_daemon: Callable[..., Daemon],
) -> None:
    a = make_daemon()
    w = Watching(a)
    w.started(a)
    with a.client() as c:
        c.create(user="ann")
    cursor = _cursor_after(w.count(1), 1)
    with a.client() as c:
        bob = c.create(user="bob").id
        c.create(user="ann")
        c.set(bob, "k", "v")
    resumed = Watching(a, user="bob", after=cursor)
    assert [(e.kind, e.sid) for e in resumed.count(2)] == [("created", bob), ("updated", bob)]


def test_a_watch_behind_the_stream_s_retention_is_told_how_many_it_missed(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    assert b.ctl("config", "event_retention", "10").returncode == 0
    w = Watching(a)
    w.started(a)
    with a.client() as c:
        sid = c.create().id
    cursor = _cursor_after(w.count(1), 1)
    # The engine trims a stream by whole blocks of entries (a hundred by
    # default): enough events that some blocks go.
    total = 400
    with a.client() as c:
        for i in range(0, total, 100):
            with c.pipeline() as p:
                for j in range(i, i + 100):
                    p.set(sid, "n", str(j))
    with engine_of(a) as r:
        kept = r.xlen(tag(a) + "events")
    assert kept < total, "the stream kept every event: nothing to lag behind"

    resumed = Watching(b, after=cursor)
    events = resumed.until(lambda e: e.session is not None and e.session.meta["n"] == "399")
    lagged, rest = events[0], events[1:]
    assert lagged.kind == "lagged"
    assert lagged.dropped == total - kept
    assert lagged.dropped + len(rest) == total
    assert [e.session.meta["n"] for e in rest if e.session] == [
        str(j) for j in range(total - len(rest), total)]


def test_a_watch_from_a_cursor_that_is_not_an_event_s_is_refused(
    make_daemon: Callable[..., Daemon],
) -> None:
    a = make_daemon()
    with a.client() as c:
        with pytest.raises(InvalidRequest, match="cursor"):
            next(c.watch(after="not-a-cursor"))
        assert c.ping().pid == a.proc.pid  # type: ignore[union-attr]
        assert c.stats().watchers == 0
    assert "Traceback" not in a.log_text()
