"""Shared mode when the engine loses writes it acknowledged, as Redis may
by design: a restart from an older save (``appendonly no``, an RDB
restored from a backup), the last second under ``appendfsync everysec``,
a failover to a replica that had not got the last writes. The loss is the
engine's; the daemons must not make it worse: they say so in their log
once they see it, serve what the engine holds now without a restart, and
a watch that saw lost events is ended rather than left waiting.

Each test runs a Redis of its own (tests/redis_servers.py), without
persistence but the saves it asks for: a restart then comes back with
what the last ``SAVE`` held, the tail after it lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import redis

from tests.conftest import Daemon, wait_until
from tests.fleet import create, get_json, tag
from tests.redis_servers import RedisNode

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
    node.cli("SAVE")
    for value in ("lost", "lost too"):
        assert d.ctl("set", sid, "k", value).returncode == 0
    _heard_up_to(node, d)
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
    node.cli("SAVE")
    for value in ("lost", "lost too"):
        assert a.ctl("set", sid, "k", value).returncode == 0
    _heard_up_to(node, a)
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
