"""Shared mode: timed expiry happens exactly once per session however many
daemons run, at the deadline, by whichever daemon holds the namespace's
lease; the lease passes on when its holder dies or stops."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, figures, hosts
from tests.redis_servers import RedisNode

SHARED = pytest.mark.shared_only("timed expiry by a fleet of daemons under one lease")

SESSIONS = 30  # across three daemons


def _holders(daemons: list[Daemon]) -> list[Daemon]:
    return [d for d in daemons if figures(d).expiry_lease]


@SHARED
def test_sessions_due_across_three_daemons_expire_once_each_at_their_deadline(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemons = hosts(make_daemon, 3)
    a = daemons[0]
    watch = Watching(daemons[1])
    watch.started(daemons[1])
    sids: list[str] = []
    for i, d in enumerate(daemons):
        with d.client() as c, c.pipeline() as p:
            made = [p.create(ttl=1 + n % 2) for n in range(i, SESSIONS, 3)]
        sids += [m.result().id for m in made]

    def done() -> int:
        return figures(a).expiries_done

    # Meanwhile the other daemons read every session over and over: a read
    # past the deadline expires the session itself (lazy expiry), racing the
    # lease holder's timer; still one expiry each.
    stop = threading.Event()
    errors: list[BaseException] = []

    def read(d: Daemon) -> None:
        try:
            with d.client() as c:
                while not stop.is_set():
                    with c.pipeline() as p:
                        for sid in sids:
                            p.get(sid)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(d,)) for d in daemons]
    for t in readers:
        t.start()
    try:
        wait_until(lambda: done() >= SESSIONS, 20, "every session to expire")
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert not errors, errors
    # A last one, due after them all: once it has expired, whatever a second
    # expiry of the others would have made has been counted and streamed.
    with daemons[2].client() as c:
        last = c.create(ttl=1).id
    wait_until(lambda: done() >= SESSIONS + 1, 20, "the last to expire")

    expired = [e.sid for e in watch.until(lambda e: e.kind == "expired" and e.sid == last)
               if e.kind == "expired"]
    assert sorted(expired) == sorted(sids + [last])
    assert watch.nothing_more() == []
    assert [figures(d).expiries_done for d in daemons] == [SESSIONS + 1] * 3
    with daemons[0].client() as c:
        for s in c.list():
            assert s.status == "expired"
            assert s.expired_at == s.expires_at, s
            assert s.version == 2
    assert len(_holders(daemons)) == 1


def test_the_lease_passes_on_within_seconds_when_its_holder_is_killed(
    make_daemon_on: Callable[..., Daemon], redis_single: RedisNode,
) -> None:
    # Once, on one node: the lease is one key of the namespace's slot, the
    # same on a Cluster, and its life is the slowest wait of these tests.
    a = make_daemon_on(backend=redis_single.url)
    daemons = [a] + [make_daemon_on(backend=redis_single.url, namespace=a.namespace)
                     for _ in range(2)]
    holder = wait_until(lambda: _holders(daemons), 10, "a daemon to hold the lease")[0]
    holder.kill()
    rest = [d for d in daemons if d is not holder]
    with rest[0].client() as c:
        sid = c.create(ttl=1).id

    # The lease lives 5 s after its holder last extended it.
    new = wait_until(lambda: _holders(rest), 10, "another daemon to take the lease")
    assert len(new) == 1
    with rest[1].client() as c:
        wait_until(lambda: c.get(sid).status == "expired", 10, "the expiry")
        s = c.get(sid)
    assert s.expired_at == s.expires_at
    assert figures(rest[0]).expiries_done == 1


@SHARED
def test_a_holder_that_stops_cleanly_hands_the_lease_over_at_once(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    holder = wait_until(lambda: _holders([a, b]), 10, "a daemon to hold the lease")[0]
    other = b if holder is a else a
    assert holder.stop() == 0
    # Well before the 5 s the lease would take to run out: it was given up.
    wait_until(lambda: figures(other).expiry_lease, 3.5, "the other daemon to take the lease")
