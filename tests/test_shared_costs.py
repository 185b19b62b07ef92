"""Shared mode: what a request costs the engine, counted by the engine
(``INFO commandstats``, which counts the commands a script runs too).

Speed itself is the bench's (scripts/bench.py); these pin the round trips
and commands behind it, which do not depend on how loaded the machine is:
a daemon's own writes do not each send its stream reader back to the
engine, and a write is one HSET (or HDEL) a record, not one a field.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import Daemon, wait_until
from tests.fleet import figures
from tests.redis_servers import RedisNode

WRITES = 200
EXPIRING = 400


def _calls(node: RedisNode) -> dict[str, int]:
    """Calls of each command so far, by name."""
    out: dict[str, int] = {}
    for line in node.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.removeprefix("cmdstat_").partition(":")
            fields = dict(f.split("=", 1) for f in rest.strip().split(","))
            out[name] = int(fields["calls"])
    return out


def _grown(before: dict[str, int], after: dict[str, int], *names: str) -> int:
    return sum(after.get(n, 0) - before.get(n, 0) for n in names)


def _cost_of_sets(node: RedisNode, d: Daemon, *names: str) -> int:
    """Calls of the commands ``names`` that ``node`` counted while ``d``
    made WRITES sets on one session."""
    with d.client() as c:
        sid = c.create(ttl=3600).id
        before = _calls(node)
        for i in range(WRITES):
            c.set(sid, "k", str(i))
        after = _calls(node)
    return _grown(before, after, *names)


def test_a_daemons_own_writes_do_not_each_cost_its_stream_reader_a_round_trip(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    xreads = _cost_of_sets(node, d, "xread")
    # One read of the stream a write was the old cost; the reader now takes
    # what gathered in a short pause, in one read.
    assert xreads < WRITES / 4, f"{xreads} XREADs for {WRITES} writes"


def test_a_write_is_one_hset_a_record_not_one_a_field(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    with d.client() as c:
        sids = [c.create(ttl=3600, meta={"n": 0}).id for _ in range(20)]
        before = _calls(node)
        for sid in sids:
            c.set(sid, "k", "v")
        for sid in sids:
            c.unset(sid, "k")
        creating = _calls(node)
        for _ in range(20):
            c.create(ttl=3600)
        after = _calls(node)
    writes = _grown(before, creating, "hset", "hdel")
    assert writes <= 2 * len(sids), f"{writes} HSET/HDEL for {2 * len(sids)} writes"
    creates = _grown(creating, after, "hset", "hdel")
    # The record's, and at most one for its place in the creation order.
    assert creates <= 2 * 20, f"{creates} HSET/HDEL for 20 creates"


def test_a_daemon_without_the_expiry_lease_does_not_ask_for_it_on_every_write(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    a = make_daemon_on(backend=node.url)
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    wait_until(lambda: figures(a).expiry_lease != figures(b).expiry_lease, 10,
               "one daemon to hold the lease")
    other = b if figures(a).expiry_lease else a
    # The lease is a GET (then SET or PEXPIRE) in its script: asked for
    # about once a second, not once a write.
    tries = _cost_of_sets(node, other, "get")
    assert tries < WRITES / 4, f"{tries} looks at the lease for {WRITES} writes"


def test_a_batch_of_creates_moves_each_counter_once_not_once_a_session(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    with d.client() as c:
        c.create(ttl=3600)
        before = _calls(node)
        with c.pipeline() as p:
            made = [p.create(ttl=3600, user=f"u{i % 3}") for i in range(100)]
        assert len({m.result().id for m in made}) == 100
        after = _calls(node)
        st = c.stats()
    # total, active, ttl_sum, seq, events and three users: a handful a
    # script, however many sessions it creates (six a session was the cost).
    moves = _grown(before, after, "hincrby")
    assert moves < 100, f"{moves} HINCRBY for 100 creates"
    assert st.total_sessions == 101 and st.active == 101 and st.unique_users == 4


def test_the_lease_holder_asks_for_its_lease_about_once_a_second_not_once_a_turn(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    # Sessions created one after another fall due one after another: the
    # holder's timer turns many times while they expire, and a look at the
    # lease on every turn would make each expiry that much later.
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    wait_until(lambda: figures(d).expiry_lease, 10, "the daemon to hold the lease")
    before = _calls(node)
    started = time.monotonic()
    # On a loaded machine the timer may wake late and expire many at once,
    # turning only a few times: again, until it has turned often enough
    # for once a turn and once a second to differ.
    for rounds in range(1, 6):
        with d.client() as c:
            for _ in range(EXPIRING):
                c.create(ttl=1)
        expected = rounds * EXPIRING
        wait_until(lambda: figures(d).expiries_done >= expected, 30,  # noqa: B023
                   "every session to expire")
        turns = _grown(before, _calls(node), "zrange") // 2  # two ZRANGEs a turn
        if turns > 10:
            break
    seconds = time.monotonic() - started
    after = _calls(node)
    turns = _grown(before, after, "zrange") // 2
    tries = _grown(before, after, "get")
    assert turns > 10, f"the timer turned {turns} times for {rounds * EXPIRING} expiries"
    assert tries <= seconds + 2, f"{tries} looks at the lease in {seconds:.1f}s ({turns} turns)"
