"""Shared mode: what is in the engine, changed behind the daemons' backs,
never ends a daemon. A key of ours holding another type, an entry of the
stream no sessiond added, a score that is no time, a lease that would never
run out: each background task (the expiry timer, the stream reader, the
settings' reading) says so once, goes on at its usual pace and says when
it works again; a request gets one line with the engine's own words; a
start is refused in one line naming the key, not with a trace."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from sessiond.errors import InvalidRequest
from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, figures, tag
from tests.redis_servers import RedisNode

Fleet = tuple[RedisNode, Daemon, Daemon]


@pytest.fixture
def fleet(make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon]) -> Fleet:
    """Two daemons of one namespace on an engine of the test's own."""
    node = make_redis(unix=True)
    a = make_daemon_on(backend=node.url)
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    return node, a, b


def _alive(*daemons: Daemon) -> None:
    for d in daemons:
        assert d.proc is not None and d.proc.poll() is None, d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()


def _cpu_seconds(d: Daemon) -> float:
    """The CPU time ``d`` has used so far (user and system)."""
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_while_paused(*daemons: Daemon, seconds: float = 3.0) -> None:
    """The daemons do not spin on what they cannot do: they try again at
    their usual pace (about once a second each task)."""
    before = [_cpu_seconds(d) for d in daemons]
    time.sleep(seconds)  # the window CPU time is measured over, not a wait for anything
    used = [_cpu_seconds(d) - b for d, b in zip(daemons, before, strict=True)]
    assert all(u < seconds * 0.25 for u in used), f"CPU seconds in {seconds}s: {used}"


def _expired(node: RedisNode, d: Daemon, sid: str) -> bool:
    """Read from the engine, not through a daemon (whose read past the
    deadline would expire it itself)."""
    return node.cli("HGET", tag(d) + "s:" + sid, "x").strip() != ""


def _setting(d: Daemon, key: str) -> object:
    with d.client() as c:
        return c.config(key)[key]


def _said(text: str, *daemons: Daemon) -> int:
    return sum(d.log_text().count(text) for d in daemons)


def _replaced_by_a_string(
    node: RedisNode, key: str, kind: str, said: str, *daemons: Daemon
) -> None:
    """``key`` (of the namespace, holding a ``kind``) made a string: every
    daemon says ``said`` once, naming the key and both types, and goes on,
    idle, without a trace."""
    node.cli("DEL", key)
    node.cli("SET", key, "junk")
    wait_until(lambda: all(said in d.log_text() for d in daemons), 10,
               f"every daemon to say {key} cannot be read")
    assert all(f"{key} holds a string where sessiond keeps a {kind}" in d.log_text()
               for d in daemons)
    _alive(*daemons)
    _idle_while_paused(*daemons)
    assert _said(said, *daemons) == len(daemons)


@pytest.mark.parametrize(("key", "damage", "held"), [
    ("due", ("SET", "junk"), "a string where sessiond keeps a zset"),
    ("lease", ("HSET", "x", "y"), "a hash where sessiond keeps a string"),
], ids=["due-index-a-string", "lease-a-hash"])
def test_a_key_of_the_wrong_type_pauses_expiry_in_one_line_and_it_resumes_once_repaired(
    fleet: Fleet, key: str, damage: tuple[str, ...], held: str,
) -> None:
    node, a, b = fleet
    sid = a.ctl("create", "--ttl", "1").stdout.strip()
    deadline = node.cli("HGET", tag(a) + "s:" + sid, "e").strip()
    wrong = tag(a) + key
    node.cli("DEL", wrong)
    node.cli(damage[0], wrong, *damage[1:])
    # The index is read by the lease's holder; the lease by every daemon.
    meet = 1 if key == "due" else 2
    said = f"expiry paused: the shared engine {a.engine.backend} answered an error: WRONGTYPE"
    wait_until(lambda: _said(said, a, b) == meet, 10, "expiry to be said to be paused")
    assert _said(f"{wrong} holds {held}", a, b) == meet
    _alive(a, b)
    _idle_while_paused(a, b)
    assert not _expired(node, a, sid)
    # Said once, not at every turn of the timer.
    assert _said("expiry paused", a, b) == meet
    node.cli("DEL", wrong)
    if key == "due":
        node.cli("ZADD", wrong, deadline, sid)
    wait_until(lambda: _expired(node, a, sid), 10, "the session to expire once repaired")
    wait_until(lambda: _said("expiry resumed", a, b) == meet, 10, "expiry to be said resumed")
    _alive(a, b)


def test_a_stream_of_the_wrong_type_is_said_once_and_heard_again_once_repaired(
    fleet: Fleet,
) -> None:
    node, a, b = fleet
    events = tag(a) + "events"
    _replaced_by_a_string(node, events, "stream", "events of other daemons not heard: ", a, b)
    # A watch cannot start on it: refused in one line, the connection goes on.
    w = a.ctl("watch", timeout=30)
    assert w.returncode == 1
    assert w.stderr.startswith("sessionctl: error: ") and len(w.stderr.splitlines()) == 1
    assert "WRONGTYPE" in w.stderr and events in w.stderr
    node.cli("DEL", events)
    wait_until(lambda: _said("events of other daemons heard again", a, b) == 2, 10,
               "both to hear the stream again")
    # And they do: a's change, heard by b's watch.
    watching = Watching(b)
    watching.started(b)
    sid = a.ctl("create").stdout.strip()
    watching.until(lambda e: e.kind == "created" and e.sid == sid)
    _alive(a, b)


def test_a_config_key_of_the_wrong_type_keeps_the_settings_in_force_and_refuses_a_start(
    fleet: Fleet, make_daemon_on: Callable[..., Daemon],
) -> None:
    node, a, b = fleet
    assert a.ctl("config", "default_ttl", "600").returncode == 0
    wait_until(lambda: _setting(b, "default_ttl") == 600, 5, "b to follow the setting")
    config = tag(a) + "config"
    said = "settings not reloaded, those in force kept: "
    _replaced_by_a_string(node, config, "hash", said, a, b)
    # Requests go on, on the settings in force.
    made = b.ctl("create", "--json")
    assert made.returncode == 0 and '"ttl": 600' in made.stdout, made
    # A request that meets it: the engine's words, in one line.
    changed = a.ctl("config", "default_ttl", "700")
    assert changed.returncode == 1
    assert changed.stdout == ""
    assert len(changed.stderr.splitlines()) == 1
    assert "WRONGTYPE" in changed.stderr and config in changed.stderr
    assert "ResponseError" not in changed.stderr
    # A daemon that starts now: one line naming the key, not a trace.
    c = make_daemon_on(backend=node.url, namespace=a.namespace, start=False)
    c.start(wait=False)
    assert c.proc is not None
    assert c.proc.wait(30) == 1, c.log_text()
    assert "Traceback" not in c.log_text()
    assert f"{config} holds a string where sessiond keeps a hash" in c.log_text()
    # Repaired: read again, and said.
    node.cli("DEL", config)
    wait_until(lambda: _said("the namespace's settings are readable again", a, b) == 2, 10,
               "both to read the settings again")
    _alive(a, b)


def test_a_counters_key_of_the_wrong_type_refuses_a_start_in_one_line_naming_it(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url, start=False)
    counters = tag(d) + "counters"
    node.cli("SET", counters, "junk")
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1, d.log_text()
    log = d.log_text()
    assert "Traceback" not in log
    assert f"{counters} holds a string where sessiond keeps a hash" in log, log
    assert not d.socket.exists()


def test_entries_no_sessiond_added_to_the_stream_are_passed_over_and_said_once(
    fleet: Fleet,
) -> None:
    node, a, b = fleet
    events = tag(a) + "events"
    watching = Watching(b)
    watching.started(b)
    first = a.ctl("create").stdout.strip()
    watching.until(lambda e: e.sid == first)
    node.cli("XADD", events, "*", "foo", "bar")
    node.cli("XADD", events, "*", "foo", "baz")
    node.cli("XADD", events, "*", "n", "x", "k", "k", "s", "s", "a", "1", "u", "u", "r", "")
    # A watch that starts now, behind entries no sessiond added.
    late = Watching(a)
    late.started(a)
    second = a.ctl("create").stdout.strip()
    for w in (watching, late):
        seen = w.until(lambda e: e.sid == second)
        assert [e.kind for e in seen] == ["created"], seen  # nothing lagged, nothing odd
    for d in (a, b):
        wait_until(lambda d=d: "holds entries no sessiond added" in d.log_text(), 10,
                   "the foreign entries to be said")
    # Once for each thing wrong (two entries lack fields, one holds odd values).
    for d in (a, b):
        assert d.log_text().count("holds entries no sessiond added") == 2, d.log_text()
        assert "lacks the field(s) n, k, s, a, u, r every event has" in d.log_text()
        assert "do not hold an event's values" in d.log_text()
    # The readers go on: b hears a's settings through the stream.
    assert a.ctl("config", "default_ttl", "777").returncode == 0
    wait_until(lambda: _setting(b, "default_ttl") == 777, 5, "b to follow the setting")
    _alive(a, b)


def test_an_index_score_of_infinity_is_set_aside_and_the_rest_expire(fleet: Fleet) -> None:
    node, a, b = fleet
    due = tag(a) + "due"
    unending = a.ctl("create", "--ttl", "3600").stdout.strip()
    node.cli("ZADD", due, "+inf", unending)
    short = a.ctl("create", "--ttl", "1").stdout.strip()
    wait_until(lambda: _expired(node, a, short), 10, "the short session to expire")
    wait_until(lambda: node.cli("ZSCORE", due, unending).strip() == "", 10,
               "the entry of score +inf to be set aside")
    assert _said(f"session {unending} has the score +inf in the engine's index {due}", a, b) \
        == 1
    _alive(a, b)
    # The session itself is untouched, and a touch puts it back on the timer.
    assert not _expired(node, a, unending)
    assert a.ctl("get", "--touch", unending).returncode == 0
    assert node.cli("ZSCORE", due, unending).strip() not in ("", "inf")


@pytest.mark.parametrize("ttl", [None, "3600000"], ids=["no-ttl", "an-hour"])
def test_a_foreign_lease_that_would_not_run_out_is_cut_and_expiry_resumes(
    fleet: Fleet, ttl: str | None,
) -> None:
    node, a, b = fleet
    lease = tag(a) + "lease"
    wait_until(lambda: figures(a).expiry_lease or figures(b).expiry_lease, 10,
               "a daemon to hold the lease")
    node.cli("SET", lease, "deadhost:1:abcd", *(["PX", ttl] if ttl else []))
    sid = a.ctl("create", "--ttl", "1").stdout.strip()
    # The lease runs out within its own length (5 s) of being cut.
    wait_until(lambda: _expired(node, a, sid), 20, "the session to expire")
    said = "the expiry lease of 'deadhost:1:abcd'"
    assert _said(said, a, b) == 1, a.log_text() + b.log_text()
    # How long it had left (an hour, less the moments before it was seen).
    assert _said("had no end: cut to 5s" if ttl is None else "s left: cut to 5s", a, b) == 1
    _alive(a, b)


def test_a_watch_cursor_past_what_the_engine_keeps_is_refused_as_invalid(
    fleet: Fleet,
) -> None:
    _, a, _ = fleet
    with a.client() as c:
        for cursor in ("99999999999999999999999-0/1", "1-99999999999999999999999/1",
                       "1-0/99999999999999999999999", "\u00b2-0/1"):
            with pytest.raises(InvalidRequest, match="invalid watch cursor"):
                next(c.watch(after=cursor))
        assert c.stats().watchers == 0
    _alive(a)


def test_a_namespace_setting_this_sessiond_does_not_know_is_said_and_left_out_at_start(
    fleet: Fleet,
) -> None:
    node, a, _ = fleet
    node.cli("HSET", tag(a) + "config", "bogus_key", "1", "default_ttl", "777")
    assert a.restart() is a
    _alive(a)
    assert _setting(a, "default_ttl") == 777
    assert a.log_text().count("bogus_key") == 1
    assert "does not know" in a.log_text()


@pytest.mark.parametrize("index", ["due", "purge"])
def test_an_index_score_of_minus_infinity_is_set_aside_in_one_turn_and_said_once(
    redis_single: RedisNode, make_daemon_on: Callable[..., Daemon], index: str,
) -> None:
    """Such an entry comes first in every look at what is due: it used to
    be read again at every turn of the timer, never leaving the index while
    its hash's own deadline was ahead (a batch of them kept the timer
    busy for good)."""
    node = redis_single
    d = make_daemon_on(backend=node.url)
    entries = tag(d) + index
    sids = [d.ctl("create", "--ttl", "3600").stdout.strip() for _ in range(3)]
    for sid in sids:
        if index == "purge":
            assert d.ctl("expire", sid).returncode == 0
        node.cli("ZADD", entries, "-inf", sid)
    short = d.ctl("create", "--ttl", "1").stdout.strip()
    wait_until(lambda: _expired(node, d, short), 10, "the short session to expire")
    # The turn that expired it read them, and set them aside.
    assert [node.cli("ZSCORE", entries, sid).strip() for sid in sids] == ["", "", ""]
    for sid in sids:
        assert _said(f"session {sid} has the score -inf in the engine's index {entries}, "
                     "which is no time", d) == 1, d.log_text()
    _alive(d)
    # The sessions themselves are untouched.
    with d.client() as c:
        assert [c.get(sid).status for sid in sids] == (
            ["expired"] * 3 if index == "purge" else ["active"] * 3)
