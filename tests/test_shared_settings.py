"""Shared mode: the settings are the namespace's, kept in the engine. A
``config`` change on one daemon is in force on every other within about a
second; what the engine itself decides (how it persists) is refused,
naming the engine's own setting; ``compact`` has nothing to do and says
so; SIGHUP reads the namespace's settings again."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import SESSIOND, Daemon, wait_until
from tests.fleet import engine_of, hosts, tag
from tests.redis_servers import RedisNode

SHARED = pytest.mark.shared_only("the namespace's settings, kept in the engine")


def _setting(d: Daemon, key: str) -> object:
    with d.client() as c:
        return c.config(key)[key]


@SHARED
def test_a_setting_changed_on_one_host_is_in_force_on_another_within_a_second(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    r = a.ctl("config", "default_ttl", "4321")
    assert r.returncode == 0, r.stderr
    # A second, with room for a loaded machine.
    wait_until(lambda: _setting(b, "default_ttl") == 4321, 3, "b to adopt default_ttl")
    with b.client() as c:
        assert c.create().ttl == 4321
        _, sources = c.config_sources("default_ttl")
    assert sources == {"default_ttl": "namespace"}
    # A daemon that starts later finds it too.
    late = make_daemon(namespace=a.namespace)
    assert _setting(late, "default_ttl") == 4321


@SHARED
def test_a_setting_written_in_the_engine_without_its_event_is_adopted_too(
    make_daemon: Callable[..., Daemon],
) -> None:
    # The event of a change can be missed (trimmed, a reconnection): the
    # daemons also read the settings every second.
    a = make_daemon()
    with engine_of(a) as r:
        r.hset(tag(a) + "config", "default_ttl", "777")
    wait_until(lambda: _setting(a, "default_ttl") == 777, 4, "a to adopt default_ttl")


@pytest.mark.parametrize("key, engine_setting", [
    ("fsync", "appendfsync"),
    ("compact_growth_percent", "auto-aof-rewrite-percentage"),
])
def test_config_of_what_the_engine_persists_by_is_refused_naming_its_setting(
    make_daemon_on: Callable[..., Daemon], redis_single: RedisNode, key: str,
    engine_setting: str,
) -> None:
    # Once: refused before anything reaches the engine.
    a = make_daemon_on(backend=redis_single.url)
    value = "always" if key == "fsync" else "50"
    before = _setting(a, key)
    r = a.ctl("config", key, value)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("sessionctl: error: ") and r.stderr.count("\n") == 1
    assert engine_setting in r.stderr
    assert _setting(a, key) == before
    with engine_of(a) as client:
        assert not client.hexists(tag(a) + "config", key)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_daemon_told_an_fsync_policy_refuses_to_start_naming_appendfsync(
    make_daemon_on: Callable[..., Daemon], redis_single: RedisNode, how: str,
) -> None:
    # Once: refused before the engine is reached.
    d = make_daemon_on(backend=redis_single.url, start=False)
    args = [SESSIOND, *d.engine_args]
    env = d.env
    if how == "flag":
        args += ["--fsync", "always"]
    else:
        env["SESSIOND_FSYNC"] = "always"
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1
    assert "appendfsync" in r.stderr
    assert ("--fsync" if how == "flag" else "SESSIOND_FSYNC") in r.stderr
    assert "Traceback" not in r.stderr
    assert not d.socket.exists()


@SHARED
def test_compact_succeeds_and_says_the_engine_persists_the_sessions(
    make_daemon: Callable[..., Daemon],
) -> None:
    a = make_daemon()
    with a.client() as c:
        c.create()
    human = a.ctl("compact")
    assert human.returncode == 0, human.stderr
    assert "persists the sessions itself" in human.stdout
    assert "appendonly" in human.stdout
    assert human.stderr == ""
    data = json.loads(a.ctl("compact", "--json").stdout)
    assert "persists the sessions itself" in data["note"]
    assert data["sessions"] == 1


@SHARED
def test_sighup_reads_the_namespace_s_settings_again(
    make_daemon: Callable[..., Daemon],
) -> None:
    a = make_daemon()
    assert a.proc is not None
    with engine_of(a) as r:
        r.hset(tag(a) + "config", "default_ttl", "888")
        a.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: reloaded" in a.log_text(), 5, "the reload to be logged")
        assert _setting(a, "default_ttl") == 888
        # A bad value in the engine: said, and the settings in force kept.
        r.hset(tag(a) + "config", "default_ttl", '"soon"')
        a.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: config not reloaded" in a.log_text(), 5,
                   "the refusal to be logged")
        assert "default_ttl" in a.log_text().split("SIGHUP: config not reloaded")[1]
        assert _setting(a, "default_ttl") == 888
        with a.client() as c:
            assert c.create().ttl == 888
        r.hset(tag(a) + "config", "default_ttl", "999")
    wait_until(lambda: _setting(a, "default_ttl") == 999, 4, "the good value to be adopted")


@SHARED
def test_a_namespace_setting_no_daemon_can_read_is_said_and_stops_none_of_them(
    make_daemon: Callable[..., Daemon],
) -> None:
    # A key of a newer sessiond, or a value written in the engine by hand:
    # every daemon of the namespace reads it on the next change's event.
    a, b = hosts(make_daemon)
    with engine_of(a) as r:
        r.hset(tag(a) + "config", "future_key", "1")
        assert a.ctl("config", "default_ttl", "600").returncode == 0
        for d in (a, b):
            wait_until(lambda d=d: "future_key" in d.log_text(), 5, "the refusal to be said")
            assert d.ctl("ping").returncode == 0
            assert d.proc is not None and d.proc.poll() is None
            assert "Traceback" not in d.log_text()
        r.hdel(tag(a) + "config", "future_key")
        assert b.ctl("config", "default_ttl", "700").returncode == 0
    for d in (a, b):
        wait_until(lambda d=d: _setting(d, "default_ttl") == 700, 4, "the change to be adopted")
        # Said once, not at every reading of the settings.
        assert d.log_text().count("future_key") == 1
