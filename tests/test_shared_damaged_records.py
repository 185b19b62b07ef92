"""Shared mode: keys of a namespace changed outside sessiond (by hand, by
another program). A session hash that no longer makes a record (its meta
not a JSON object, its version not written as sessiond writes it) is
refused by name on a read and set aside by the expiry timer, never breaking
the protocol or a daemon of the fleet; so is an entry of the indexes of
deadlines that makes no record (a hash deleted or of another type, an id
that is not text); a count or key the commit script would fail on refuses
the whole request before anything is written; and a bug in a turn of the
expiry timer is logged and the timer goes on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from sessiond.errors import InternalError
from tests.conftest import FAILPOINT, Daemon, wait_until
from tests.fleet import tag
from tests.redis_servers import RedisNode


def _alive(*daemons: Daemon) -> bool:
    return all(d.proc is not None and d.proc.poll() is None for d in daemons)


def _refused_by_name(got: subprocess.CompletedProcess[str], sid: str, said: str) -> None:
    """A ``sessionctl`` run refused as any damaged hash is: one line naming
    the session and what is wrong, exit 1, nothing on stdout."""
    assert got.returncode == 1, (got.returncode, got.stderr)
    assert got.stdout == ""
    assert f"session {sid} in the engine {said}" in got.stderr, got.stderr
    assert "changed outside sessiond" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr


@pytest.mark.parametrize(("meta", "said"), [
    ("{bad", "holds a meta (field m) that is not JSON"),
    ("[1]", "holds a meta (field m) that is JSON but not an object (list)"),
    ('"text"', "holds a meta (field m) that is JSON but not an object (str)"),
], ids=["not-json", "a-list", "a-string"])
def test_a_meta_that_is_not_a_json_object_is_refused_by_name_and_the_protocol_holds(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    meta: str, said: str,
) -> None:
    """A list for a meta used to reach the client in the reply, which then
    took the daemon for something other than sessiond."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    damaged = d.ctl("create", "--meta", "role=admin").stdout.strip()
    intact = d.ctl("create").stdout.strip()
    node.cli("HSET", tag(d) + "s:" + damaged, "m", meta)
    _refused_by_name(d.ctl("get", damaged), damaged, said)
    _refused_by_name(d.ctl("set", damaged, "k", "v"), damaged, said)
    listed = d.ctl("list")
    assert "not sessiond" not in listed.stderr
    # Listed without it, and said (tests/test_shared_damaged_scans.py).
    assert listed.returncode == 0 and f"session {damaged} in the engine {said}" in listed.stderr
    assert intact in listed.stdout and damaged not in listed.stdout
    # The connection that was refused goes on serving: the reply kept the
    # protocol's shape.
    with d.client() as c:
        refusal = re.escape(f"session {damaged} in the engine {said}")
        with pytest.raises(InternalError, match=refusal):
            c.get(damaged)
        assert c.get(intact).id == intact
    assert _alive(d)


@pytest.mark.parametrize("version", ["01", " 1", "+1", "1_0", "-0"],
                         ids=["leading-zero", "space", "plus", "underscore", "minus-zero"])
@pytest.mark.parametrize("field", ["v", "q"])
def test_a_number_int_takes_but_sessiond_never_writes_is_refused_by_name(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    version: str, field: str,
) -> None:
    """The commit compares the version as text: such a version used to make
    every write of the session fail as "kept changing under this request";
    and it removes the place in the creation order (q) by its text, so such
    a place would have been left behind."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    sid = d.ctl("create").stdout.strip()
    node.cli("HSET", tag(d) + "s:" + sid, field, version)
    said = ("holds a number written otherwise than sessiond writes it (a leading zero, a "
            f"sign, a space or an underscore) in the field(s) {field}")
    _refused_by_name(d.ctl("get", sid), sid, said)
    _refused_by_name(d.ctl("set", sid, "k", "v"), sid, said)
    assert _alive(d)


def test_a_session_with_a_damaged_meta_is_set_aside_when_due_and_the_fleet_runs_on(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """Its expiry's event decodes the meta: it used to raise out of the
    lease holder's timer, ending the daemon, then the next holder, and so on
    through the fleet."""
    node = make_redis(unix=True)
    a = make_daemon_on(backend=node.url)
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    key = tag(a) + "s:"
    with a.client() as c:
        damaged = c.create(ttl=1, meta={"role": "admin"}).id
        node.cli("HSET", key + damaged, "m", "{bad")
        short = c.create(ttl=1).id
    wait_until(lambda: node.cli("HGET", key + short, "x").strip() != "", 15,
               "the timer to expire the session after the damaged one")
    assert node.cli("ZSCORE", tag(a) + "due", damaged).strip() == ""
    assert _alive(a, b), a.log_text() + b.log_text()
    logs = a.log_text() + b.log_text()
    assert f"session {damaged} in the engine holds a meta (field m) that is not JSON" in logs
    assert "Traceback" not in logs
    # Repaired, it reads and expires again.
    node.cli("HSET", key + damaged, "m", '{"role":"admin"}')
    with b.client() as c:
        assert c.get(damaged).status == "expired"


def _evalsha_calls(node: RedisNode) -> int:
    for line in node.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


# Scripts the expiry timer runs at most, from a session's creation to
# two seconds after it was set aside: a lease renewal and a look at what is
# due about every second. A spin makes thousands a second.
SCRIPTS_MOST = 60


@pytest.mark.parametrize("version", ["01", "+1"])
def test_the_expiry_timer_does_not_spin_on_a_version_written_otherwise(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    version: str,
) -> None:
    """Its expiry used to be refused at every commit and looked at again at
    once: the lease holder ran tens of thousands of scripts a second."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    due = tag(d) + "due"
    first = _evalsha_calls(node)

    def scripts() -> int:
        made = _evalsha_calls(node) - first
        assert made < SCRIPTS_MOST, f"the engine ran {made} scripts: the timer spins"
        return made

    with d.client() as c:
        sid = c.create(ttl=1).id
    node.cli("HSET", tag(d) + "s:" + sid, "v", version)
    wait_until(lambda: scripts() >= 0 and node.cli("ZSCORE", due, sid).strip() == "", 15,
               "the timer to set the session aside once due")
    assert "holds a number written otherwise than sessiond writes it" in d.log_text()
    # And it stays quiet after: what is measured here is a rate over a while.
    settled = time.monotonic()
    while time.monotonic() - settled < 2.0:
        scripts()
        time.sleep(0.1)
    assert _alive(d)


def _namespace_state(node: RedisNode, d: Daemon) -> dict[str, tuple[str, str]]:
    """Every key of ``d``'s namespace but the lease (which the timer keeps
    extending): its type and content, as redis-cli prints them."""
    state = {}
    for key in node.cli("KEYS", tag(d) + "*").split():
        if key == tag(d) + "lease":
            continue
        kind = node.cli("TYPE", key).strip()
        read = {
            "hash": ("HGETALL", key), "zset": ("ZRANGE", key, "0", "-1", "WITHSCORES"),
            "stream": ("XLEN", key), "string": ("GET", key),
        }[kind]
        lines = node.cli(*read).splitlines()
        state[key] = (kind, "\n".join(sorted(lines) if kind == "hash" else lines))
    return state


@pytest.mark.parametrize(("damage", "said", "request_"), [
    (("HSET", "counters", "total", "abc"), "counters holds something other than a whole "
     "number in the field total", ("create", "--id", "s2")),
    (("HSET", "counters", "seq", "1.5"), "counters holds something other than a whole "
     "number in the field seq", ("create", "--id", "s2")),
    (("HSET", "users", "alice", "abc"), "users holds something other than a whole "
     "number in the field alice", ("create", "--id", "s2", "--user", "alice")),
    (("HSET", "users", "alice", "abc"), "users holds something other than a whole "
     "number in the field alice", ("delete", "s1")),
    (("SET", "o:0", "junk"), "o:0 is a string, not a hash", ("create", "--id", "s2")),
], ids=["counter", "seq", "user-count-create", "user-count-delete", "order-bucket"])
def test_a_key_the_commit_would_fail_on_refuses_the_whole_request_with_nothing_written(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    damage: tuple[str, ...], said: str, request_: tuple[str, ...],
) -> None:
    """The engine keeps what a script wrote before a command of it failed:
    a create used to leave its session and event behind without its count
    or sequence number (the next create then took the same number and the
    first dropped out of list and export), all reported as an internal
    error."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    assert d.ctl("create", "--id", "s1", "--user", "alice").returncode == 0
    verb, name, *rest = damage
    if verb == "SET":
        node.cli("DEL", tag(d) + name)
    node.cli(verb, tag(d) + name, *rest)
    before = _namespace_state(node, d)
    got = d.ctl(*request_)
    assert got.returncode == 1, got.stderr
    assert got.stdout == ""
    assert f"the engine's key {tag(d)}{said}: it was changed outside sessiond; " \
        "nothing of this request was written" in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    assert _namespace_state(node, d) == before
    assert _alive(d)


def test_a_create_refused_for_a_damaged_counter_goes_through_once_it_is_repaired(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    counters = tag(d) + "counters"
    assert d.ctl("create", "--id", "s1").returncode == 0
    node.cli("HSET", counters, "total", "abc")
    assert d.ctl("create", "--id", "s2").returncode == 1
    node.cli("HSET", counters, "total", "1")
    assert d.ctl("create", "--id", "s2").returncode == 0
    assert d.ctl("create", "--id", "s3").returncode == 0
    assert node.cli("HGET", counters, "seq").strip() == "3"
    assert node.cli("HGET", counters, "total").strip() == "3"
    listed = d.ctl("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == ["s1", "s2", "s3"]


@pytest.mark.parametrize(("change", "said"), [
    (("HDEL", "e", "v"), "lacks the field(s) e, v every session has"),
    (("HDEL", "u"), "lacks the field(s) u every session has"),
    (("HSET", "v", "seven"), "holds something other than a whole number in the field(s) v"),
    (("HSET", "e", "1.5e15"), "holds something other than a whole number in the field(s) e"),
], ids=["fields-missing", "user-missing", "version-not-a-number",
        "deadline-not-a-whole-number"])
def test_a_session_hash_changed_outside_sessiond_is_refused_by_name_and_serving_goes_on(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    change: tuple[str, ...], said: str,
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    damaged, intact = d.ctl("create").stdout.strip(), d.ctl("create").stdout.strip()
    verb, *rest = change
    node.cli(verb, tag(d) + "s:" + damaged, *rest)
    got = d.ctl("get", damaged)
    assert got.returncode == 1
    assert got.stdout == ""
    assert f"session {damaged} in the engine {said}" in got.stderr
    assert "changed outside sessiond" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    # Nothing else is touched: the other session reads, the daemon runs.
    assert d.ctl("get", intact).returncode == 0
    assert d.proc is not None and d.proc.poll() is None


def test_requests_sent_together_with_one_on_a_damaged_session_are_answered_each_on_its_own(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """A pipeline (or several clients at once) reads its sessions in one
    round trip; one damaged session among them refuses only the requests
    on it."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    with d.client() as c:
        damaged, intact = c.create().id, c.create().id
        node.cli("HSET", tag(d) + "s:" + damaged, "v", "seven")
        with c.pipeline() as p:
            before = p.get(intact)
            refused = p.get(damaged)
            changed = p.set(intact, "k", "v")
            after = p.get(intact)
        assert before.result().version == 1
        with pytest.raises(InternalError, match=f"session {damaged} in the engine holds"):
            refused.result()
        assert changed.result().meta == {"k": "v"}
        assert after.result().version == 2
    assert _alive(d)


def test_sessions_damaged_or_deleted_outside_sessiond_are_set_aside_and_the_rest_expire(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """Left in the index of deadlines, each would come first in every look
    at what is due; a hash that makes no record used to stop the lease
    holder's timer (and, not a number, end the daemon: then the next
    holder's, one after the other)."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    due = tag(d) + "due"
    with d.client() as c:
        damaged, deleted = c.create(ttl=3600).id, c.create(ttl=3600).id
        node.cli("HSET", tag(d) + "s:" + damaged, "v", "seven")
        node.cli("DEL", tag(d) + "s:" + deleted)
        # Both fall due now (the index is the timer's only guide), ahead
        # of a session with a short ttl that must still expire on time.
        node.cli("ZADD", due, "1", damaged, "1", deleted)
        short = c.create(ttl=1).id
    # Read from the engine, not through the daemon: a read past the deadline
    # would expire it itself.
    wait_until(lambda: node.cli("HGET", tag(d) + "s:" + short, "x").strip() != "", 10,
               "the timer to expire the session behind the damaged ones")
    assert node.cli("ZSCORE", due, damaged).strip() == ""
    assert node.cli("ZSCORE", due, deleted).strip() == ""
    log = d.log_text()
    assert f"session {damaged} in the engine holds something other than a whole number " \
        "in the field(s) v" in log
    assert f"session {deleted} is in the engine's index of deadlines but its hash is gone" in log
    assert log.count(f"session {damaged} in the engine") == 1  # said once, not every turn
    assert d.proc is not None and d.proc.poll() is None
    # Repaired and touched, it is back on the timer.
    node.cli("HSET", tag(d) + "s:" + damaged, "v", "1")
    with d.client() as c:
        c.get(damaged, touch=True)
    assert node.cli("ZSCORE", due, damaged).strip() != ""


def test_entries_no_record_can_come_of_are_set_aside_whatever_is_wrong_with_them(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """A number past 64 bits (which no reply or event could carry), a key
    that is no hash, an id that is not text: each falls due ahead of a
    session that must still expire on time, and none ends the daemon."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    due = tag(d) + "due"
    with d.client() as c:
        huge, stringly = c.create(ttl=3600).id, c.create(ttl=3600).id
        node.cli("HSET", tag(d) + "s:" + huge, "v", str(10**25))
        node.cli("DEL", tag(d) + "s:" + stringly)
        node.cli("SET", tag(d) + "s:" + stringly, "junk")
        not_text = os.fsdecode(b"\xff\xfe")
        node.cli("ZADD", due, "1", huge, "1", stringly, "1", not_text)
        short = c.create(ttl=1).id
        got = d.ctl("get", huge)
        assert got.returncode == 1 and len(got.stderr.strip().splitlines()) == 1
        assert f"session {huge} in the engine holds a number past 64 bits in the field(s) v" \
            in got.stderr
    wait_until(lambda: node.cli("HGET", tag(d) + "s:" + short, "x").strip() != "", 10,
               "the timer to expire the session behind the broken entries")
    assert node.cli("ZCARD", due).strip() == "0"
    log = d.log_text()
    assert f"session {huge} in the engine holds a number past 64 bits" in log
    assert f"session {stringly} in the engine is not a hash" in log
    assert "in the engine has an id that is not UTF-8 text" in log
    assert d.proc is not None and d.proc.poll() is None


def test_a_bug_in_a_turn_of_the_expiry_timer_is_logged_once_and_expiry_goes_on(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """Were it to end the daemon, the lease and the same bug would pass to
    the next daemon of the namespace, and end it too."""
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url, env={FAILPOINT: "expiry-bug:3"})
    with d.client() as c:
        short = c.create(ttl=1).id
    wait_until(lambda: node.cli("HGET", tag(d) + "s:" + short, "x").strip() != "", 15,
               "the timer to expire the session once the failing turns are past")
    log = d.log_text()
    assert log.count("expiry paused by an internal error (a bug)") == 1
    assert "RuntimeError: injected by failpoint expiry-bug" in log
    assert "expiry resumed" in log
    assert d.proc is not None and d.proc.poll() is None


def test_a_hash_lacking_only_its_user_is_damaged_not_a_free_id(
    redis_single: RedisNode, make_daemon_on: Callable[..., Daemon],
) -> None:
    """It used to read as no session at all: ``get`` said not found, ``list``
    left it out without a word, and a ``create`` of its id was refused by
    every commit (which finds its version) for two seconds, then said the
    session "kept changing"."""
    d = make_daemon_on(backend=redis_single.url)
    assert d.ctl("create", "--id", "s1").returncode == 0
    redis_single.cli("HDEL", tag(d) + "s:s1", "u")
    said = "session s1 in the engine lacks the field(s) u every session has"
    _refused_by_name(d.ctl("create", "--id", "s1"), "s1", "lacks the field(s) u")
    listed = d.ctl("list", "--ids")
    assert (listed.returncode, listed.stdout) == (0, ""), listed.stderr
    assert said in listed.stderr
    assert _alive(d)
