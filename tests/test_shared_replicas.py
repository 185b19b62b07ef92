"""Shared mode: the ``replicas`` setting, Redis's ``WAIT``. A change is
acknowledged once that many replicas of the engine have it; when they do
not within ``replicas_timeout``, the request fails as of unknown outcome
(exit 3): the primary has the change, and a failover now could lose it.
Local mode has no replicas: the settings are refused there, at start and
live, rather than taken and ignored.

Each test runs a Redis of its own, and a replica of it."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from sessiond.errors import OutcomeUnknown
from tests.conftest import Daemon, wait_until
from tests.fleet import fails, tag
from tests.redis_servers import RedisNode


def _primary_and_replica(
    make_redis: Callable[..., RedisNode],
) -> tuple[RedisNode, RedisNode]:
    primary = make_redis(extra=("--repl-diskless-sync-delay", "0"))
    replica = make_redis(extra=("--replicaof", "127.0.0.1", str(primary.port)))
    wait_until(lambda: "connected_slaves:1" in primary.cli("INFO", "replication"), 15,
               "the replica to follow its primary")
    return primary, replica


def test_a_change_is_acknowledged_once_the_replicas_asked_for_have_it(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    primary, replica = _primary_and_replica(make_redis)
    d = make_daemon_on(backend=primary.url)
    r = d.ctl("config", "replicas", "1")
    assert r.returncode == 0, r.stderr
    # In seconds, as the other timeouts: a duration is taken too.
    r = d.ctl("config", "replicas_timeout", "3s", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["replicas_timeout"] == 3, r.stderr
    with d.client() as c:
        s = c.create(meta={"k": "v"})
        # Replication is asynchronous; WAIT made the reply wait for it.
        key = tag(d) + "s:" + s.id
        assert replica.cli("HGET", key, "v").strip() == "1"
        c.set(s.id, "k", "w")
        assert replica.cli("HGET", key, "v").strip() == "2"
        # The engine forgot its scripts (a restart without them): loaded
        # again and the write sent again, waiting for the replica still.
        primary.cli("SCRIPT", "FLUSH")
        c.set(s.id, "k", "x")
        assert replica.cli("HGET", key, "v").strip() == "3"


def test_a_change_the_replicas_do_not_get_in_time_fails_as_of_unknown_outcome(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    primary, replica = _primary_and_replica(make_redis)
    d = make_daemon_on(backend=primary.url)
    with d.client() as c:
        sid = c.create().id
    assert d.ctl("config", "replicas_timeout", "0.2").returncode == 0
    assert d.ctl("config", "replicas", "1").returncode == 0
    replica.pause()
    try:
        r = d.ctl("set", sid, "k", "unsure")
        assert r.returncode == 3, r.stderr
        assert r.stderr.startswith("sessionctl: error: ") and r.stderr.count("\n") == 1
        assert "only 0 of the 1 replicas" in r.stderr and "0.2s" in r.stderr, r.stderr
        assert "failover" in r.stderr
        with d.client() as c:
            assert isinstance(fails(lambda: c.set(sid, "k", "again")), OutcomeUnknown)
    finally:
        replica.resume()
    with d.client() as c:
        # The primary made them: the outcome was unknown, not a refusal.
        assert c.get(sid).meta == {"k": "again"}
        # Without the setting, nothing waits for the replica.
        replica.pause()
        try:
            assert d.ctl("config", "replicas", "0").returncode == 0
            assert c.set(sid, "k", "unwaited").version == 4
        finally:
            replica.resume()


@pytest.mark.local_only("about the local mode's refusal of a setting of shared mode")
def test_the_replicas_setting_is_refused_in_local_mode_live_and_at_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    r = d.ctl("config", "replicas", "1")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("sessionctl: error: ") and r.stderr.count("\n") == 1
    assert "replicas is a setting of shared mode" in r.stderr, r.stderr
    assert not d.config.exists() or "replicas" not in json.loads(d.config.read_text())
    # Its default is harmless, and what stays in force.
    assert d.ctl("config", "replicas", "0").returncode == 0
    shown = d.ctl("config", "replicas", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["replicas"] == 0, shown.stdout
    # A reload of a file that sets it changes nothing, the other keys included.
    said = d.log_text().count("replicas is a setting of shared mode")
    d.config.write_text(json.dumps({"replicas": 1, "default_ttl": 200}))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: d.log_text().count("replicas is a setting of shared mode") > said, 10,
               "the reload's refusal in the log")
    assert d.ctl("config", "default_ttl").stdout == "3600\n"
    assert d.ctl("config", "replicas").stdout == "0\n"
    late = make_daemon(env={"SESSIOND_REPLICAS": "2"}, start=False)
    late.start(wait=False)
    assert late.proc is not None
    assert late.proc.wait(30) != 0
    log = late.log_text()
    assert "replicas is a setting of shared mode" in log and "Traceback" not in log
