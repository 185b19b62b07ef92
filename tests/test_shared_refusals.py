"""Shared mode with an engine that refuses writes: out of memory, a
read-only replica, a failed save (MISCONF). Each is ``read_only`` (exit 1)
with the engine's reason, reads are still answered, and nothing was
changed. An engine that may evict keys to make room is refused at start.

Each test runs a Redis of its own and reconfigures it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sessiond.errors import ReadOnly
from tests.conftest import Daemon, wait_until
from tests.fleet import fails
from tests.redis_servers import RedisNode


def _refused(d: Daemon, sid: str, reason: str) -> None:
    """A write through the CLI and the client is refused with ``reason``;
    the session is unchanged and still read."""
    r = d.ctl("set", sid, "k", "refused")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("sessionctl: error: ") and r.stderr.count("\n") == 1
    assert "refuses writes" in r.stderr and reason in r.stderr, r.stderr
    assert "@user_script" not in r.stderr  # where in our script: nothing for people
    assert r.stdout == ""
    with d.client() as c:
        exc = fails(lambda: c.create())
        assert isinstance(exc, ReadOnly) and reason in str(exc)
        assert isinstance(fails(lambda: c.refresh(sid)), ReadOnly)
        s = c.get(sid)
        assert s.meta == {"k": "before"} and s.version == 2


def test_an_engine_out_of_memory_refuses_writes_with_its_reason(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(extra=("--maxmemory-policy", "noeviction"))
    d = make_daemon_on(backend=node.url)
    with d.client() as c:
        sid = c.create().id
        c.set(sid, "k", "before")
    # Below what it uses (noeviction): every write is refused, whatever its size.
    used = int(node.cli("INFO", "memory").split("used_memory:")[1].split()[0])
    node.cli("CONFIG", "SET", "maxmemory", str(used // 2))
    _refused(d, sid, "used memory > 'maxmemory'")
    node.cli("CONFIG", "SET", "maxmemory", "0")
    with d.client() as c:
        assert c.set(sid, "k", "after").version == 3


def test_a_read_only_replica_refuses_writes_with_its_reason(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    master = make_redis(extra=("--repl-diskless-sync-delay", "0"))
    replica = make_redis(extra=("--replicaof", "127.0.0.1", str(master.port)))
    on_master = make_daemon_on(backend=master.url)
    with on_master.client() as c:
        sid = c.create().id
        c.set(sid, "k", "before")
    wait_until(lambda: "master_link_status:up" in replica.cli("INFO", "replication"), 15,
               "the replica to follow its master")
    on_replica = make_daemon_on(backend=replica.url, namespace=on_master.namespace)
    with on_replica.client() as c:
        wait_until(lambda: c.get(sid).version == 2, 10, "the session to be replicated")
    _refused(on_replica, sid, "read only replica")


def test_an_engine_that_cannot_save_refuses_writes_with_its_reason(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    data = tmp_path / "redis-data"
    data.mkdir()
    node = make_redis(extra=("--dir", str(data)))
    d = make_daemon_on(backend=node.url)
    with d.client() as c:
        sid = c.create().id
        c.set(sid, "k", "before")
    # A save that fails (its directory is gone) with a save point set: the
    # engine stops taking writes (stop-writes-on-bgsave-error).
    shutil.rmtree(data)
    node.cli("CONFIG", "SET", "save", "3600 1")
    node.cli("BGSAVE")
    wait_until(lambda: "rdb_last_bgsave_status:err" in node.cli("INFO", "persistence"), 15,
               "the save to fail")
    _refused(d, sid, "MISCONF")
    assert "Traceback" not in d.log_text()
    # Else the engine refuses to stop, its last save failing too.
    node.cli("CONFIG", "SET", "save", "")


def test_an_engine_that_may_evict_sessions_is_refused_at_start(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(extra=("--maxmemory-policy", "allkeys-lru"))
    d = make_daemon_on(backend=node.url, start=False)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1
    log = d.log_text()
    assert "maxmemory-policy allkeys-lru" in log and "noeviction" in log
    assert f"127.0.0.1:{node.port}" in log
    assert "Traceback" not in log
    assert not d.socket.exists()
