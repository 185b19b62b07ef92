"""Shared mode after the engine lost or refused something: daemons start
again on a namespace whose keys were flushed while they ran, reads go on
while the engine refuses writes, a ``max_lifetime`` whose scan failed is
finished by setting it again, and a session's key of another type is
refused by name.

Each test runs a Redis of its own (to flush, fill or damage it)."""

from __future__ import annotations

import json
from collections.abc import Callable

from sessiond.errors import ReadOnly
from sessiond.model import US
from tests.conftest import Daemon, wait_until
from tests.fleet import fails, figures, tag
from tests.redis_servers import RedisNode


def _engine_now(node: RedisNode) -> int:
    seconds, micros = node.cli("TIME").split()
    return int(seconds) * US + int(micros)


def test_a_daemon_starts_on_a_namespace_flushed_while_daemons_ran(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """The running daemon's commits put the sequence number back in the
    counters, not the layout's mark: that is no namespace of the first
    layout (whose order is a sorted set), and a daemon started after must
    serve it."""
    node = make_redis(unix=True)
    a = make_daemon_on(backend=node.url)
    counters = tag(a) + "counters"
    with a.client() as c:
        c.create()
        node.flush()
        kept = c.create().id
    assert node.cli("HEXISTS", counters, "seq").strip() == "1"
    assert node.cli("HEXISTS", counters, "layout").strip() == "0"
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    assert "layout 1" not in b.log_text()
    assert node.cli("HGET", counters, "layout").strip() == "2"
    with b.client() as c:
        assert [s.id for s in c.list()] == [kept]
        made = c.create().id
    with a.client() as c:
        assert [s.id for s in c.list()] == [kept, made]


def test_reads_go_on_while_the_engine_refuses_writes_and_answer_expired_past_the_deadline(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """As in local mode with a read-only journal: a read of a session past
    its deadline answers it expired without persisting the expiry, which
    the lease holder makes once the engine takes writes again."""
    node = make_redis(extra=("--maxmemory-policy", "noeviction"))
    d = make_daemon_on(backend=node.url)
    key = tag(d) + "s:"
    with d.client() as c:
        lasting = c.create(ttl=3600, meta={"k": "v"}).id
        passing = c.create(ttl=5).id
    # Below what it uses (noeviction): every write is refused.
    used = int(node.cli("INFO", "memory").split("used_memory:")[1].split()[0])
    node.cli("CONFIG", "SET", "maxmemory", str(used // 2))
    assert node.cli("HEXISTS", key + passing, "x").strip() == "0"  # not expired in time
    deadline = int(node.cli("HGET", key + passing, "e"))
    wait_until(lambda: _engine_now(node) > deadline, 20, "the session's deadline to pass")

    got = d.ctl("get", passing, "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["status"] == "expired"
    with d.client() as c:
        assert c.get(passing).status == "expired"
        assert c.get(lasting).meta == {"k": "v"}
        listed = {s.id: s.status for s in c.list()}
        assert listed == {lasting: "active", passing: "expired"}
        assert isinstance(fails(lambda: c.set(lasting, "k", "w")), ReadOnly)
        assert isinstance(fails(lambda: c.get(passing, touch=True)), ReadOnly)
    exported = d.ctl("export", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    assert {json.loads(line)["id"] for line in exported.stdout.splitlines()} == {
        lasting, passing}
    # Nothing was persisted, and stats says why.
    assert node.cli("HEXISTS", key + passing, "x").strip() == "0"
    assert node.cli("HGET", key + lasting, "m").strip() == '{"k":"v"}'
    refusing = figures(d).read_only
    assert refusing is not None and "refuses writes" in refusing, refusing
    shown = d.ctl("stats")
    assert "read only" in shown.stdout and "refuses writes" in shown.stdout, shown.stdout
    assert d.proc is not None and d.proc.poll() is None

    node.cli("CONFIG", "SET", "maxmemory", "0")
    with d.client() as c:
        assert c.set(lasting, "k", "w").version == 2
    assert figures(d).read_only is None
    wait_until(lambda: node.cli("HEXISTS", key + passing, "x").strip() == "1", 20,
               "the lease holder to expire the session once writes are taken")


def test_max_lifetime_set_again_caps_the_sessions_a_failed_scan_left(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    with d.client() as c:
        damaged = c.create(ttl=3600).id
        intact = c.create(ttl=3600).id
    node.cli("HDEL", tag(d) + "s:" + damaged, "t")

    failed = d.ctl("config", "max_lifetime", "60")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith("sessionctl: error: ") and failed.stderr.count("\n") == 1
    assert "max_lifetime 60 is in force" in failed.stderr, failed.stderr
    assert f"session {damaged}" in failed.stderr
    assert "run the command again" in failed.stderr
    shown = d.ctl("config", "max_lifetime")
    assert shown.returncode == 0 and shown.stdout.strip() in ("60", "1m"), shown.stdout
    with d.client() as c:
        s = c.get(intact)
        # Capped all the same: the scan went on past the damaged one.
        assert s.expires_at_us - s.created_at_us <= 60 * US

    node.cli("HSET", tag(d) + "s:" + damaged, "t", "3600")
    again = d.ctl("config", "max_lifetime", "60")
    assert again.returncode == 0, again.stderr
    with d.client() as c:
        for sid in (intact, damaged):
            s = c.get(sid)
            assert s.expires_at_us - s.created_at_us <= 60 * US, sid


def test_a_session_key_holding_a_string_is_refused_by_name_and_serving_goes_on(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    with d.client() as c:
        junk, intact = c.create().id, c.create().id
    node.cli("SET", tag(d) + "s:" + junk, "junk")
    for command in (("get", junk), ("set", junk, "k", "v"), ("delete", junk)):
        r = d.ctl(*command)
        assert r.returncode == 1, (command, r.stderr)
        assert r.stdout == ""
        assert r.stderr.startswith("sessionctl: error: ") and r.stderr.count("\n") == 1
        assert f"session {junk} in the engine is not a hash" in r.stderr, r.stderr
        assert "holds a string" in r.stderr and "changed outside sessiond" in r.stderr
        assert "closing the connection" not in r.stderr
    assert node.cli("GET", tag(d) + "s:" + junk).strip() == "junk"
    assert d.ctl("get", intact).returncode == 0
    assert d.proc is not None and d.proc.poll() is None
    assert "Traceback" not in d.log_text()
