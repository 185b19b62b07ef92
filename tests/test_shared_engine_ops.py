"""Shared mode under what an engine's operators do to it while daemons
serve: connections killed (CLIENT KILL), the engine at its maxclients,
its keys flushed (FLUSHALL: the events and their count with them), its
maxmemory-policy changed to one that evicts. The daemon keeps running;
a request the engine cannot take fails in one line (exit 3); a watch
rides over a killed connection, and is ended, saying why, when the
engine lost the events it would have had to show; an evicting policy is
said in the log.

Each test runs a Redis of its own (tests/redis_servers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis

from sessiond.errors import Conflict
from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, create, fails, get_json, stats
from tests.redis_servers import RedisNode


def _alive(d: Daemon) -> bool:
    return d.proc is not None and d.proc.poll() is None


def test_an_engine_at_its_maxclients_fails_requests_in_one_line_and_the_daemon_lives(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    sid = create(d)
    with redis.Redis(host="127.0.0.1", port=node.port) as admin:
        # This connection the only one the engine takes: the daemon's are
        # closed, and every new one is refused ("max number of clients").
        admin.config_set("maxclients", 1)
        admin.client_kill_filter(_type="normal", skipme=True)
        try:
            for args in (("get", sid), ("set", sid, "k", "v"), ("create",)):
                r = d.ctl(*args)
                assert r.returncode == 3, (args, r.stdout, r.stderr)
                assert r.stderr.startswith("sessionctl: error: the shared engine "), r.stderr
                assert r.stderr.count("\n") == 1, r.stderr
                assert _alive(d), d.log_text()
        finally:
            admin.config_set("maxclients", 10000)
    wait_until(lambda: d.ctl("get", sid).returncode == 0, 15, "the daemon to be served again")
    assert get_json(d, sid)["version"] == 1
    assert _alive(d) and "Traceback" not in d.log_text(), d.log_text()


def test_a_watch_and_requests_go_on_when_the_engine_kills_the_daemons_connections(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    sid = create(d)
    w = Watching(d)
    w.started(d)
    # The watch's blocked read among them.
    assert int(node.cli("CLIENT", "KILL", "TYPE", "normal").strip()) >= 2
    r = d.ctl("set", sid, "k", "v")
    assert r.returncode == 0, r.stderr
    w.until(lambda e: e.kind == "updated" and e.sid == sid)
    assert w.error is None


def test_a_watch_is_ended_saying_why_when_the_engine_loses_its_events(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    a = make_daemon_on(backend=node.url)
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    w = Watching(b)
    w.started(b)
    first = create(a)
    seen = w.until(lambda e: e.kind == "created" and e.sid == first)[-1]
    assert seen.cursor is not None
    node.flush()
    # The sessions went with the events, without an event each: a watch
    # that went on would never show that they are gone.
    after = [create(a) for _ in range(3)]
    error = w.ended(15)
    assert isinstance(error, Conflict), repr(error)
    assert "lost the namespace's events" in str(error), error
    assert not [e for e in w.nothing_more() if e.sid in after]
    # Resumed from before the loss: refused alike, rather than pass over
    # what it cannot tell.
    resumed = Watching(b, after=seen.cursor)
    error = resumed.ended(15)
    assert isinstance(error, Conflict) and "lost the namespace's events" in str(error), error
    # From now, it watches.
    fresh = Watching(b)
    fresh.started(b)
    last = create(a)
    fresh.until(lambda e: e.kind == "created" and e.sid == last)
    assert _alive(a) and _alive(b)


def test_an_evicting_policy_set_on_the_engine_after_the_start_is_said_in_the_log(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    d = make_daemon_on(backend=node.url)
    node.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    wait_until(lambda: "now runs with maxmemory-policy allkeys-lru" in d.log_text(), 30,
               "the daemon to say that the engine may evict sessions")
    node.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    wait_until(lambda: "runs with maxmemory-policy noeviction again" in d.log_text(), 30,
               "the daemon to say that it no longer may")
    assert _alive(d)


def test_a_user_the_engines_acl_refuses_is_told_so_in_one_line(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis()
    for user, lacks in (("noinfo", "-info"), ("noread", "-xread")):
        node.cli("ACL", "SETUSER", user, "on", ">pw-" + user, "~sd:*", "+@all", lacks)
    # Refused at start (the engine is found with INFO): exit 1, one line
    # saying so, not that it cannot be reached.
    d = make_daemon_on(backend=f"redis://noinfo:pw-noinfo@127.0.0.1:{node.port}", start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1, d.log_text()
    said = [line for line in d.log_text().splitlines() if "ERROR" in line]
    assert len(said) == 1 and "Traceback" not in d.log_text(), d.log_text()
    assert "ACL refuses this daemon's user" in said[0] and "'info'" in said[0], said
    assert "cannot be reached" not in said[0] and "pw-noinfo" not in said[0], said
    # A command refused while it runs: what needs it fails in one line, the
    # daemon goes on.
    d = make_daemon_on(backend=f"redis://noread:pw-noread@127.0.0.1:{node.port}")
    sid = create(d)
    with d.client() as c:
        error = fails(lambda: next(iter(c.watch())))
    assert "'xread'" in str(error) and "+@all on the keys ~sd:*" in str(error), error
    assert get_json(d, sid)["version"] == 1
    assert _alive(d)


def test_stats_shows_the_engines_persistence_as_it_is_changed_on_the_server(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(appendonly=True)
    d = make_daemon_on(backend=node.url)
    assert stats(d)["fsync"] == "engine: appendfsync everysec"
    node.cli("CONFIG", "SET", "appendonly", "no")
    wait_until(lambda: stats(d)["fsync"] == "engine: appendfsync none (appendonly no)", 30,
               "stats to say that the engine no longer persists the sessions")
    node.cli("CONFIG", "SET", "appendonly", "yes")
    node.cli("CONFIG", "SET", "appendfsync", "always")
    wait_until(lambda: stats(d)["fsync"] == "engine: appendfsync always", 30,
               "stats to show the engine's appendfsync")


def test_a_failover_behind_the_engines_name_is_followed_by_the_next_change(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    # A managed engine's endpoint: a name the provider moves to the new
    # primary at a failover (here a socket path, a symlink it moves).
    old_path, new_path = tmp_path / "old.sock", tmp_path / "new.sock"
    old = make_redis(extra=("--unixsocket", str(old_path), "--unixsocketperm", "600"))
    new = make_redis(extra=("--unixsocket", str(new_path), "--unixsocketperm", "600"))
    endpoint = tmp_path / "engine.sock"
    endpoint.symlink_to(old_path)
    d = make_daemon_on(backend=f"unix://{endpoint}")
    assert create(d)
    # The old primary made a replica of the new one, the name moved; the
    # daemon's connections still reach the old one, which refuses writes.
    old.cli("REPLICAOF", "127.0.0.1", str(new.port))
    moving = tmp_path / "moving.sock"
    moving.symlink_to(new_path)
    moving.replace(endpoint)
    r = d.ctl("create", "--id", "after")
    assert r.returncode == 0, r.stderr
    assert new.cli("EXISTS", "sd:{" + d.namespace + "}:s:after").strip() == "1"
    assert not stats(d)["read_only"]
