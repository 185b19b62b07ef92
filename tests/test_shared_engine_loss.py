"""Shared mode when the engine loses writes it acknowledged, as Redis may
by design: a restart from an older save (``appendonly no``, an RDB
restored from a backup), the last second under ``appendfsync everysec``,
a failover to a replica that had not got the last writes. The loss is the
engine's; the daemons must not make it worse: they say so in their log
once they see it, serve what the engine holds now without a restart, and
a watch that saw lost events is ended rather than left waiting.

Each test runs a Redis of its own (tests/redis_servers.py), without
persistence but the saves it asks for: a restart then comes back with
what the last ``SAVE`` held, the tail after it lost; or a primary and its
replica, or a Cluster whose replica takes over without the last writes."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from sessiond.errors import Conflict
from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, create, fails, get_json, tag
from tests.redis_servers import RedisClusterServers, RedisNode
from tests.test_watch import CtlWatch, watchers

WENT_BACK = "went back in time"


def _last_event(node: RedisNode, d: Daemon) -> str:
    with redis.Redis(host="127.0.0.1", port=node.port) as r:
        ((entry_id, _),) = r.xrevrange(tag(d) + "events", count=1)
    return str(entry_id.decode())


def _heard_up_to(node: RedisNode, d: Daemon, timeout: float = 20) -> None:
    """Wait until ``d``'s own reader of the stream reads after its last
    event (the engine's MONITOR shows the read): it has heard them all."""
    stream, last = tag(d) + "events", _last_event(node, d)
    deadline = time.monotonic() + timeout
    with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=timeout) as r:
        with r.monitor() as m:
            while time.monotonic() < deadline:
                said = m.next_command()["command"]
                if said.startswith("XREAD") and said.endswith(f"{stream} {last}"):
                    return
    raise AssertionError(f"the daemon's reader did not read after {last} in {timeout}s")


def _ahead() -> str:
    """A stream id ten minutes ahead of the clock."""
    return f"{int(time.time() * 1000) + 600_000}-0"


def _added(r: Any, d: Daemon, sid: str, number: int, entry_id: str = "*") -> None:
    """An event of ``d``'s namespace as another daemon adds it (without its
    session: a watcher shows it all the same)."""
    r.xadd(tag(d) + "events", {"n": number, "k": "updated", "s": sid, "a": 0,
                               "u": "anonymous", "r": b"", "o": "elsewhere"}, id=entry_id)


def _changes_after_the_save(node: RedisNode, d: Daemon, sid: str) -> None:
    """The engine saves; then two acknowledged changes of ``sid`` that the
    save lacks, whose events ``d`` has heard (``_lose_the_tail`` loses them)."""
    node.cli("SAVE")
    for value in ("lost", "lost too"):
        assert d.ctl("set", sid, "k", value).returncode == 0
    _heard_up_to(node, d)


def _lose_the_tail(node: RedisNode) -> None:
    """The engine dies and comes back with what its last save held."""
    node.kill()
    node.start()


def test_a_daemon_says_in_its_log_that_the_engine_lost_acknowledged_changes(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    sid = create(d)
    _changes_after_the_save(node, d, sid)
    _lose_the_tail(node)
    wait_until(lambda: WENT_BACK in d.log_text(), 20, "the daemon to say the engine went back")
    said = [line for line in d.log_text().splitlines() if WENT_BACK in line]
    assert len(said) == 1 and "ERROR" in said[0], said
    assert "count of events is 1, after event 3 this daemon heard" in said[0], said
    assert node.address in said[0] and "replicas" in said[0], said
    # Served as the engine holds it now, without a restart.
    assert get_json(d, sid)["version"] == 1
    r = d.ctl("set", sid, "k", "after")
    assert r.returncode == 0, r.stderr
    assert get_json(d, sid)["meta"] == {"k": "after"}
    assert "Traceback" not in d.log_text()


def test_a_daemon_says_so_when_the_count_of_events_came_back_past_the_loss_first(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    a = make_daemon_on(backend=node.url)
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    sid = create(a)
    _changes_after_the_save(node, a, sid)
    assert a.proc is not None
    # a sees nothing of the engine while it comes back and b writes more
    # than was lost: the count alone would not tell.
    a.proc.send_signal(signal.SIGSTOP)
    try:
        _lose_the_tail(node)
        wait_until(lambda: b.ctl("get", sid).returncode == 0, 20, "b to be served again")
        for n in range(4):
            assert b.ctl("set", sid, "n", str(n)).returncode == 0
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: WENT_BACK in a.log_text(), 20, "a to say the engine went back")
    said = [line for line in a.log_text().splitlines() if WENT_BACK in line]
    assert len(said) == 1, said
    assert "numbered again from 2 after event 3 this daemon heard" in said[0], said
    assert get_json(a, sid)["version"] == 5


def test_a_watch_resumed_after_a_lost_event_is_ended_even_once_the_count_passed_it(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    w = Watching(d)
    w.started(d)
    sid = create(d)
    node.cli("SAVE")
    assert d.ctl("set", sid, "k", "lost").returncode == 0
    lost = w.until(lambda e: e.kind == "updated")[-1]
    assert lost.cursor is not None and lost.cursor.endswith("/2")
    _lose_the_tail(node)
    wait_until(lambda: d.ctl("get", sid).returncode == 0, 20, "the daemon to be served again")
    # More events than were lost: the count passes the cursor's number.
    after = [create(d) for _ in range(2)]
    resumed = Watching(d, after=lost.cursor)
    error = resumed.ended(15)
    assert isinstance(error, Conflict) and "lost the namespace's events" in str(error), error
    assert not [e for e in resumed.nothing_more() if e.sid in after]


def test_a_watch_resumed_after_a_lost_event_of_a_clock_ahead_is_ended_not_left_waiting(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    sid = create(d)
    node.cli("SAVE")
    # The lost event as a primary whose clock was ten minutes ahead of its
    # replica's added it: the replica, promoted, numbers its next events
    # on from the last it had, with ids behind the lost one's.
    ahead = _ahead()
    with redis.Redis(host="127.0.0.1", port=node.port) as r:
        _added(r, d, sid, 2, ahead)
        r.hincrby(tag(d) + "counters", "events", 1)
    cursor = f"{ahead}/2"
    # Before the loss, a watch resumes there.
    before = Watching(d, after=cursor)
    before.started(d)
    _lose_the_tail(node)
    wait_until(lambda: d.ctl("get", sid).returncode == 0, 20, "the daemon to be served again")
    after = [create(d) for _ in range(2)]
    resumed = Watching(d, after=cursor)
    error = resumed.ended(15)
    assert isinstance(error, Conflict) and "lost the namespace's events" in str(error), error
    assert "is not in the namespace's stream" in str(error), error
    assert not [e for e in resumed.nothing_more() if e.sid in after]
    # A watch from now hears the new events.
    fresh = Watching(d)
    fresh.started(d)
    last = create(d)
    fresh.until(lambda e: e.kind == "created" and e.sid == last)


def _failover_behind(node: RedisNode, d: Daemon, sid: str, heard: Callable[[], Any]) -> None:
    """An event added by a primary whose clock is ten minutes ahead, heard
    (``heard`` waits for it), then lost by a failover to a replica that
    had only what came before it, and took two more events before the
    daemon read again: their ids behind the one it heard."""
    events, counters = tag(d) + "events", tag(d) + "counters"
    with redis.Redis(host="127.0.0.1", port=node.port) as r:
        saved = {key: r.dump(key) for key in (events, counters)}
        with r.pipeline(transaction=True) as lost:
            _added(lost, d, sid, 2, _ahead())
            lost.hincrby(counters, "events", 1)
            lost.execute()
        heard()
        with r.pipeline(transaction=True) as failover:
            for key, value in saved.items():
                failover.restore(key, 0, value, replace=True)
            for number in (2, 3):
                _added(failover, d, sid, number)
            failover.hset(counters, "events", 3)
            failover.execute()


def test_a_watch_is_ended_when_the_new_events_ids_are_behind_the_last_it_saw(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    w = Watching(d)
    w.started(d)
    sid = create(d)
    w.until(lambda e: e.kind == "created" and e.sid == sid)
    _failover_behind(node, d, sid, lambda: w.until(
        lambda e: e.cursor is not None and e.cursor.endswith("/2")))
    # Not left waiting, past events it would never be shown, for as long
    # as the clocks differ.
    error = w.ended(15)
    assert isinstance(error, Conflict) and "lost the namespace's events" in str(error), error
    assert "none after event 2 this watch saw is after it" in str(error), error
    fresh = Watching(d)
    fresh.started(d)
    last = create(d)
    fresh.until(lambda e: e.kind == "created" and e.sid == last)


def test_a_daemon_says_so_when_the_new_events_ids_are_behind_the_last_it_heard(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    a = make_daemon_on(backend=node.url)
    sid = create(a)
    _failover_behind(node, a, sid, lambda: _heard_up_to(node, a))
    wait_until(lambda: WENT_BACK in a.log_text(), 20, "a to say the engine went back")
    said = [line for line in a.log_text().splitlines() if WENT_BACK in line]
    assert len(said) == 1 and "none after event 2 this daemon heard" in said[0], said
    assert "Traceback" not in a.log_text()


def _hash(node: RedisNode, d: Daemon, sid: str) -> dict[str, str]:
    """A session's hash as the engine holds it, read behind the daemon's
    back (no read of it expires anything)."""
    with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as r:
        return dict(r.hgetall(tag(d) + "s:" + sid))


def test_an_expiry_the_engine_lost_is_made_again_once_at_the_deadline(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    sid = create(d, "--ttl", "1")
    node.cli("SAVE")
    wait_until(lambda: "x" in _hash(node, d, sid), 20, "the timer to expire the session")
    first = _hash(node, d, sid)
    assert first["x"] == first["e"]
    _lose_the_tail(node)
    assert "x" not in _hash(node, d, sid), "the save held the session active"
    # The timer finds it due again (nothing tells it of the loss but its
    # look at the deadlines), without a restart: expired at its deadline.
    wait_until(lambda: "x" in _hash(node, d, sid), 20, "the timer to expire it again")
    again = _hash(node, d, sid)
    assert again["x"] == again["e"] == first["e"] and again["v"] == first["v"]
    assert node.cli("HGET", tag(d) + "counters", "expiries").strip() == "1"
    # Once: one event of its expiry in what the engine holds, and nothing
    # more made of it.
    assert get_json(d, sid)["version"] == int(first["v"])
    with redis.Redis(host="127.0.0.1", port=node.port) as r:
        kinds = [fields[b"k"] for _, fields in r.xrange(tag(d) + "events")
                 if fields[b"s"] == sid.encode()]
    assert kinds == [b"created", b"expired"], kinds


def _wait_for_setting(d: Daemon, key: str, value: str) -> None:
    wait_until(lambda: d.ctl("config", key).stdout == value + "\n", 20,
               f"{key} {value} in force")


def test_a_setting_the_engine_lost_is_no_longer_in_force_on_any_daemon(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    a = make_daemon_on(backend=node.url)
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    node.cli("SAVE")
    assert a.ctl("config", "default_ttl", "100").returncode == 0
    wait_until(lambda: b.ctl("config", "default_ttl").stdout == "100\n", 20,
               "b to have the setting")
    _lose_the_tail(node)
    # The daemons follow the engine: what a daemon started now would read.
    for d in (a, b):
        _wait_for_setting(d, "default_ttl", "3600")
    assert get_json(a, create(a))["ttl"] == 3600


def test_changes_acknowledged_under_the_replicas_setting_survive_the_replicas_promotion(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    primary = make_redis(extra=("--repl-diskless-sync-delay", "0"))
    replica = make_redis(extra=("--replicaof", "127.0.0.1", str(primary.port)))
    wait_until(lambda: "connected_slaves:1" in primary.cli("INFO", "replication"), 15,
               "the replica to follow its primary")
    d = make_daemon_on(backend=primary.url)
    assert d.ctl("config", "replicas_timeout", "3").returncode == 0
    assert d.ctl("config", "replicas", "1").returncode == 0
    sid = create(d)
    made = [create(d) for _ in range(3)]
    for n in range(3):
        assert d.ctl("set", sid, "n", str(n)).returncode == 0
    # The primary dies the moment the last change is acknowledged, and its
    # replica is promoted: every acknowledged change is there.
    primary.kill()
    replica.cli("REPLICAOF", "NO", "ONE")
    e = make_daemon_on(backend=replica.url, namespace=d.namespace)
    assert get_json(e, sid)["version"] == 4 and get_json(e, sid)["meta"] == {"n": "2"}
    assert all(get_json(e, m)["version"] == 1 for m in made)
    # The new primary has no replica yet: a change is made, but not
    # acknowledged as the setting asks, until it is lowered.
    assert e.ctl("config", "replicas_timeout", "0.2").returncode == 3
    _wait_for_setting(e, "replicas_timeout", "0.2")
    r = e.ctl("set", sid, "n", "alone")
    assert r.returncode == 3 and "only 0 of the 1 replicas" in r.stderr, r.stderr
    assert get_json(e, sid)["meta"] == {"n": "alone"}
    # Lowered, the setting is acknowledged under its new count: the way on.
    r = e.ctl("config", "replicas", "0")
    assert r.returncode == 0, r.stderr
    assert e.ctl("set", sid, "n", "acknowledged").returncode == 0


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Cluster of this test's own: three masters, a replica each."""
    made = RedisClusterServers(tmp_path_factory.mktemp("own-cluster"), replicas=1)
    made.start()
    yield made
    made.stop()


def _namespace_on(cluster: RedisClusterServers, master: RedisNode) -> str:
    for n in range(10_000):
        if cluster.master_of("sd:{" + f"lost{n}" + "}:counters") is master:
            return f"lost{n}"
    raise AssertionError("no namespace found on that master")


def test_a_takeover_by_a_replica_that_lacked_the_last_changes_is_served_as_it_holds(
    cluster: RedisClusterServers, make_daemon_on: Callable[..., Daemon],
) -> None:
    master = cluster.nodes[0]
    namespace = _namespace_on(cluster, master)
    replica = cluster.replica_of(master)
    d = make_daemon_on(backend=cluster.url, namespace=namespace)
    w = Watching(d)
    w.started(d)
    r = d.ctl("create", "--id", "s1")
    assert r.returncode == 0, r.stderr
    assert master.cli("WAIT", "1", "10000").strip() == "1"
    # The replica falls behind; the master acknowledges two changes it
    # never gets, then stops answering, and the replica takes over.
    replica.pause()
    try:
        # Past what the sockets hold, the master drops the replica that
        # does not read (its output buffer over the limit): what follows
        # never reaches it.
        master.cli("CONFIG", "SET", "client-output-buffer-limit", "replica 1mb 1mb 0")
        with redis.Redis(host="127.0.0.1", port=master.port) as r:
            r.set("{" + namespace + "}filler", b"x" * (32 << 20))
        wait_until(lambda: "connected_slaves:0" in master.cli("INFO", "replication"), 20,
                   "the master to drop its replica")
        assert d.ctl("set", "s1", "k", "lost").returncode == 0
        assert d.ctl("create", "--id", "s2").returncode == 0
        w.until(lambda e: e.kind == "created" and e.sid == "s2")
        master.pause()
    finally:
        replica.resume()
    try:
        assert replica.cli("CLUSTER", "FAILOVER", "TAKEOVER").strip() == "OK"
        wait_until(lambda: "role:master" in replica.cli("INFO", "replication"), 20,
                   "the replica to take over")
    finally:
        master.resume()
    # The daemon follows the slot and serves what the new master holds;
    # the watch that saw the lost events is ended, saying why.
    wait_until(lambda: d.ctl("get", "s1").returncode == 0, 40, "the daemon to follow the slot")
    assert get_json(d, "s1")["version"] == 1 and get_json(d, "s1")["meta"] == {}
    assert d.ctl("get", "s2").returncode == 1
    error = w.ended(20)
    assert isinstance(error, Conflict) and "lost the namespace's events" in str(error), error
    r = d.ctl("set", "s1", "k", "after")
    assert r.returncode == 0, r.stderr
    assert get_json(d, "s1")["version"] == 2


def test_a_list_resumed_past_what_the_engine_kept_fails_rather_than_end_short(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    kept = [create(d) for _ in range(3)]
    node.cli("SAVE")
    lost = [create(d) for _ in range(3)]
    with d.client() as c:
        page, cursor = c.list_page(limit=5)
        assert [s.id for s in page] == kept + lost[:2] and cursor == "5"
    _lose_the_tail(node)
    wait_until(lambda: d.ctl("get", kept[0]).returncode == 0, 20, "the daemon to be served again")
    # Made after the loss, in a place the cursor passed: the next page
    # would be empty, and the list seem complete without it.
    made = create(d)
    with d.client() as c:
        error = fails(lambda: c.list_page(limit=5, cursor=cursor))
        assert isinstance(error, Conflict), repr(error)
        assert "the list cursor 5 is past the namespace's last session (4)" in str(error)
        assert "list again from the start" in str(error)
        page, cursor = c.list_page(limit=5)
        assert [s.id for s in page] == [*kept, made] and cursor is None


def test_sessionctl_watch_waiting_for_an_engine_that_comes_back_without_its_events_ends(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    sid = create(d)
    node.cli("SAVE")
    with CtlWatch(d, "--json") as w:
        wait_until(lambda: watchers(d) == 1, 15, "the watch to start")
        assert d.ctl("set", sid, "k", "lost").returncode == 0
        w.lines.until(lambda line: json.loads(line)["event"] == "updated")
        _lose_the_tail(node)
        wait_until(lambda: d.ctl("get", sid).returncode == 0, 20, "the daemon to be served again")
        for _ in range(3):
            assert d.ctl("set", sid, "k", "after").returncode == 0
        # Resumed after the lost event, it is told, and ends: not left
        # waiting for events it would be shown out of their order.
        status, err = w.ended()
    assert status == 1, err
    assert "lost the namespace's events" in err and "watch from now" in err, err
    assert err.strip().splitlines()[-1].startswith("sessionctl: error: "), err


def test_a_change_is_held_to_the_replicas_setting_it_was_sent_under(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    primary = make_redis(extra=("--repl-diskless-sync-delay", "0"))
    replica = make_redis(extra=("--replicaof", "127.0.0.1", str(primary.port)))
    wait_until(lambda: "connected_slaves:1" in primary.cli("INFO", "replication"), 15,
               "the replica to follow its primary")
    a = make_daemon_on(backend=primary.url)
    b = make_daemon_on(backend=primary.url, namespace=a.namespace)
    sid = create(a)
    # Long enough for what happens while the replica is paused, on a
    # loaded machine.
    assert a.ctl("config", "replicas_timeout", "20").returncode == 0
    assert a.ctl("config", "replicas", "1").returncode == 0
    _wait_for_setting(b, "replicas", "1")
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    replica.pause()
    try:
        # a's change waits for the replica; meanwhile b raises the setting,
        # which a puts in force for the changes after it.
        setting = threading.Thread(target=lambda: results.setdefault(
            "set", a.ctl("set", sid, "k", "v")))
        setting.start()
        wait_until(lambda: "cmd=wait" in primary.cli("CLIENT", "LIST"), 20,
                   "a's change to wait for the replica")
        raising = threading.Thread(target=lambda: results.setdefault(
            "config", b.ctl("config", "replicas", "2")))
        raising.start()
        _wait_for_setting(a, "replicas", "2")
    finally:
        replica.resume()
    setting.join(30)
    raising.join(30)
    # Both had the one replica they were sent asking for.
    assert results["set"].returncode == 0, results["set"].stderr
    assert results["config"].returncode == 0, results["config"].stderr
    assert get_json(a, sid)["meta"] == {"k": "v"}


def _read_after(node: RedisNode, d: Daemon, entry_id: str, times: int, timeout: float = 20) -> None:
    """Wait until the engine was asked ``times`` times to read ``d``'s
    stream after ``entry_id`` (MONITOR shows the reads)."""
    stream = tag(d) + "events"
    seen = 0
    deadline = time.monotonic() + timeout
    with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=timeout) as r:
        with r.monitor() as m:
            while seen < times and time.monotonic() < deadline:
                said = m.next_command()["command"]
                seen += said.startswith("XREAD") and said.endswith(f"{stream} {entry_id}")
    assert seen >= times, f"{seen} reads after {entry_id} in {timeout}s"


def test_a_stream_deleted_by_hand_is_no_loss_to_a_daemon_started_on_it_nor_to_a_watch(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    for _ in range(2):
        create(d)
    # The events went, their count stayed: no change was lost.
    node.cli("DEL", tag(d) + "events")
    d.restart()
    w = Watching(d)
    w.started(d)
    # Its reader and the watch read on, several times each, from the
    # stream's (empty) start.
    _read_after(node, d, "0-0", 4)
    made = create(d)
    seen = w.until(lambda e: e.sid == made)
    assert [e.kind for e in seen] == ["lagged", "created"] and seen[0].dropped == 2, seen
    assert w.error is None
    assert WENT_BACK not in d.log_text(), d.log_text()


def test_counters_deleted_by_hand_are_said_once_not_at_every_read(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    create(d)
    last = _last_event(node, d)
    _heard_up_to(node, d)
    node.cli("DEL", tag(d) + "counters")
    wait_until(lambda: WENT_BACK in d.log_text(), 20, "the daemon to say the count went back")
    _read_after(node, d, last, 4)
    said = [line for line in d.log_text().splitlines() if WENT_BACK in line]
    assert len(said) == 1, said
