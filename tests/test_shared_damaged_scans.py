"""Shared mode: the operations on many sessions meet sessions the engine
holds damaged (changed outside sessiond: a key that is no hash, a hash
lacking fields or holding text for a number). ``list`` and ``cleanup`` go
on past them and say so: the daemon in its log, once a session; the CLI
with its results on stdout, one warning line on stderr, exit 0. ``export``
refuses, naming the first (an export that missed sessions would lose them
on the way to another host). An ``import`` page skips ids whose sessions
are damaged and imports the rest, counting them among the skipped with
their reason. A client of protocol 2, which would not see what a page
passed over, has it refused as before."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionctl import InternalError, SessionsDamaged
from sessiond import model
from sessiond.records import plain_line
from tests.conftest import Daemon
from tests.fleet import tag
from tests.rawwire import Raw
from tests.redis_servers import RedisNode

MakeDaemon = Callable[..., Daemon]

# How a session's key is damaged, and the words a read of it says.
DAMAGES = {
    "not-a-hash": ((("DEL",), ("SET", "junk")), "is not a hash (its key "),
    "fields-missing": ((("HDEL", "e", "v"),), "lacks the field(s) e, v every session has"),
    "version-not-a-number": ((("HSET", "v", "seven"),),
                             "holds something other than a whole number in the field(s) v"),
}


def _damage(node: RedisNode, d: Daemon, sid: str, kind: str) -> str:
    """Damage ``sid``'s key as ``kind`` says; the words that name it."""
    steps, said = DAMAGES[kind]
    for verb, *rest in steps:
        node.cli(verb, tag(d) + "s:" + sid, *rest)
    return f"session {sid} in the engine {said}"


def _three(node: RedisNode, make_daemon_on: MakeDaemon, kind: str) -> tuple[Daemon, str]:
    """A daemon whose namespace holds s1, s2 and s3 (alice's, bob's,
    alice's), s2 damaged as ``kind`` says; the words that name s2."""
    d = make_daemon_on(backend=node.url)
    for sid, user in (("s1", "alice"), ("s2", "bob"), ("s3", "alice")):
        assert d.ctl("create", "--id", sid, "--user", user).returncode == 0
    return d, _damage(node, d, "s2", kind)


def _warned(stderr: str, said: str, count: int = 1) -> None:
    """One warning line that says how many were left out and names the first."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sessionctl: warning: "), stderr
    assert f"{count} session{'s' if count > 1 else ''} left out" in lines[0], stderr
    assert said in lines[0], stderr


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_list_passes_over_a_damaged_session_and_warns_in_one_line(
    redis_single: RedisNode, make_daemon_on: MakeDaemon, kind: str,
) -> None:
    """A key of the wrong type used to make every list of the namespace
    fail, and a damaged hash every list that reached it: one session took
    listing away from the whole fleet."""
    d, said = _three(redis_single, make_daemon_on, kind)
    table = d.ctl("list")
    assert table.returncode == 0, table.stderr
    *rows, _, count = table.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["s1", "s3"], table.stdout
    assert count == "2 sessions", table.stdout
    _warned(table.stderr, said)
    listed = d.ctl("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == ["s1", "s3"]
    _warned(listed.stderr, said)
    # What a list does not show is not warned of: only the look past its
    # last row (is there more?) met s2.
    ids = d.ctl("list", "--ids", "--limit", "1")
    assert (ids.returncode, ids.stdout, ids.stderr) == (0, "s1\n", "")
    # The daemon names it in its log once, however many lists meet it.
    assert d.log_text().count(said) == 1, d.log_text()
    assert "Traceback" not in d.log_text()


def test_a_list_of_one_user_names_a_key_that_is_no_hash_whose_it_may_be(
    redis_single: RedisNode, make_daemon_on: MakeDaemon,
) -> None:
    """Whose session a string is cannot be told: left out silently, it
    could be the one the user looks for."""
    d, said = _three(redis_single, make_daemon_on, "not-a-hash")
    alice = d.ctl("list", "--user", "alice", "--ids")
    assert (alice.returncode, alice.stdout) == (0, "s1\ns3\n"), alice.stderr
    _warned(alice.stderr, said)
    # A damaged hash that still says whose it is is left out of others' lists.
    _damage(redis_single, d, "s3", "version-not-a-number")
    bob = d.ctl("list", "--user", "bob", "--ids")
    assert (bob.returncode, bob.stdout) == (0, ""), bob.stderr
    _warned(bob.stderr, said)


def test_a_page_of_damaged_sessions_ends_within_the_page_bytes_and_goes_on(
    redis_single: RedisNode, make_daemon_on: MakeDaemon,
) -> None:
    """What a page says of the sessions it passed over counts towards its
    bytes: a namespace of damaged keys is listed a page at a time, each
    named once, never in one reply past the frame limit."""
    d = make_daemon_on(backend=redis_single.url)
    many = 3000
    made = [f"d{i:05}" for i in range(many)]
    with d.client() as c:
        with c.pipeline() as p:
            for sid in made:
                p.create(id=sid, returning="ack")
        last = c.create(id="intact").id
    prefix = tag(d) + "s:"
    for start in range(0, many, 500):
        redis_single.cli("DEL", *(prefix + sid for sid in made[start:start + 500]))
        redis_single.cli("MSET", *(x for sid in made[start:start + 500]
                                   for x in (prefix + sid, "junk")))
    with d.client() as c:
        seen: list[str] = []
        pages = 0
        cursor: str | None = None
        while True:
            pages += 1
            with pytest.raises(SessionsDamaged) as caught:
                c.list_page(cursor=cursor)
            seen += caught.value.damaged
            if caught.value.sessions:
                assert [s.id for s in caught.value.sessions] == [last]
            cursor = caught.value.cursor
            if cursor is None:
                break
    assert pages > 1
    assert len(seen) == many
    assert len({line.split()[1] for line in seen}) == many  # each named once
    listed = d.ctl("list", "--ids")
    assert (listed.returncode, listed.stdout) == (0, f"{last}\n"), listed.stderr
    _warned(listed.stderr, "session d00000 in the engine is not a hash", many)


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_cleanup_removes_the_others_and_says_which_it_passed_over(
    redis_single: RedisNode, make_daemon_on: MakeDaemon, kind: str,
) -> None:
    d, said = _three(redis_single, make_daemon_on, kind)
    later = f"@{int(time.time()) + 7200}"
    dry = d.ctl("cleanup", "--before", later, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    result = json.loads(dry.stdout)
    assert result["removed_ids"] == ["s1", "s3"]
    assert len(result["damaged"]) == 1 and said in result["damaged"][0]
    _warned(dry.stderr, said)
    done = d.ctl("cleanup", "--before", later)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "removed 2 sessions, 1 remaining"
    assert "passed over 1 session the engine holds damaged" in done.stdout
    _warned(done.stderr, said)
    keys = redis_single.cli("KEYS", tag(d) + "s:*").split()
    assert keys == [tag(d) + "s:s2"]
    assert d.log_text().count(said) == 1, d.log_text()


@pytest.mark.parametrize("kind", ["not-a-hash", "version-not-a-number"])
def test_export_refuses_naming_the_damaged_session_and_writes_no_file(
    redis_single: RedisNode, make_daemon_on: MakeDaemon, tmp_path: Path, kind: str,
) -> None:
    """An export that missed a session would lose it on the way to
    another host."""
    d, said = _three(redis_single, make_daemon_on, kind)
    out = tmp_path / "sessions.jsonl"
    got = d.ctl("export", "--format", "jsonl", "--output", str(out))
    assert got.returncode == 1, got.stderr
    assert got.stdout == ""
    assert len(got.stderr.splitlines()) == 1, got.stderr
    assert got.stderr.startswith("sessionctl: error: export refused: ")
    assert said in got.stderr and f"nothing was written to {out}" in got.stderr
    assert not out.exists()
    streamed = d.ctl("export", "--format", "jsonl")
    assert streamed.returncode == 1 and said in streamed.stderr
    assert len(streamed.stderr.splitlines()) == 1, streamed.stderr


def test_the_clients_list_refuses_and_its_page_carries_the_rest(
    redis_single: RedisNode, make_daemon_on: MakeDaemon,
) -> None:
    """A program that lists never misses a session without being told: the
    page's refusal holds what it did read, to go on with."""
    d, said = _three(redis_single, make_daemon_on, "not-a-hash")
    with d.client() as c:
        with pytest.raises(InternalError, match="session s2 in the engine is not a hash"):
            c.list()
        with pytest.raises(SessionsDamaged) as caught:
            c.list_page()
        assert [s.id for s in caught.value.sessions] == ["s1", "s3"]
        assert caught.value.cursor is None
        assert len(caught.value.damaged) == 1 and said in caught.value.damaged[0]
        # In a pipeline the refusal is that request's, the others answered.
        with c.pipeline() as p:
            page = p.list_page()
            one = p.get("s1")
        assert one.result().id == "s1"
        with pytest.raises(SessionsDamaged):
            page.result()


def test_a_client_of_protocol_2_has_the_page_and_the_cleanup_refused_naming_it(
    redis_single: RedisNode, make_daemon_on: MakeDaemon,
) -> None:
    """It would not see what a page passed over: it is refused as before,
    and a cleanup says what it did all the same."""
    d, said = _three(redis_single, make_daemon_on, "fields-missing")
    with Raw(d.socket) as raw:
        assert raw.call(op="hello", id=1, version=2)["version"] == 2
        page = raw.call(op="list", id=2)
        assert (page["r"], page["code"]) == ("error", "internal"), page
        assert said in page["message"]
        cleaned = raw.call(op="cleanup", id=3, before=int(time.time() + 7200) * 1_000_000)
        assert (cleaned["r"], cleaned["code"]) == ("error", "internal"), cleaned
        assert said in cleaned["message"]
        assert "2 other sessions removed" in cleaned["message"]
    assert redis_single.cli("KEYS", tag(d) + "s:*").split() == [tag(d) + "s:s2"]


def _held_as(node: RedisNode, key: str) -> tuple[str, list[str]]:
    """``key``'s type and content, as redis-cli prints them."""
    kind = node.cli("TYPE", key).strip()
    read = ("HGETALL", key) if kind == "hash" else ("GET", key)
    return kind, sorted(node.cli(*read).splitlines())


def _held(sid: str, version: int = 1) -> model.Session:
    now = int(time.time() * 1_000_000)
    return model.Session(id=sid, user="carol", status="active", ttl=3600, meta={"k": sid},
                         created_at=now, last_access=now, expires_at=now + 3600 * 1_000_000,
                         version=version)


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_an_import_page_skips_ids_held_damaged_and_imports_the_rest(
    redis_single: RedisNode, make_daemon_on: MakeDaemon, tmp_path: Path, kind: str,
) -> None:
    """One damaged id among a page used to refuse the whole page: none of
    it was imported."""
    d, said = _three(redis_single, make_daemon_on, kind)
    before = _held_as(redis_single, tag(d) + "s:s2")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(plain_line(_held(sid, version=9))
                                for sid in ("x1", "s2", "x3", "s1")))
    got = d.ctl("import", str(source))
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0].startswith("imported 2, updated 1, skipped 1, ")
    assert f"  skipped s2: {said}" in got.stdout
    assert _held_as(redis_single, tag(d) + "s:s2") == before  # left as it was
    with d.client() as c:
        assert [c.get(sid).meta for sid in ("x1", "x3", "s1")] == [
            {"k": "x1"}, {"k": "x3"}, {"k": "s1"}]
        again = c.import_sessions([_held("s2"), _held("x4")])
    assert (again.imported, again.skipped) == (1, 1)
    assert len(again.reasons) == 1 and again.reasons[0].startswith(f"s2: {said}")
    assert d.log_text().count(said) == 1, d.log_text()


def test_a_lowered_max_lifetime_caps_the_others_and_then_names_the_damaged_one(
    redis_single: RedisNode, make_daemon_on: MakeDaemon,
) -> None:
    """The chunk of sessions a damaged one was read with used to be left
    uncapped, however often the command was run again."""
    d, said = _three(redis_single, make_daemon_on, "version-not-a-number")
    got = d.ctl("config", "max_lifetime", "60")
    assert got.returncode == 1, got.stderr
    assert len(got.stderr.splitlines()) == 1, got.stderr
    assert "max_lifetime 60 is in force, but the existing sessions were not all" in got.stderr
    assert said in got.stderr
    for sid in ("s1", "s3"):
        created, deadline = (int(v) for v in redis_single.cli(
            "HMGET", tag(d) + "s:" + sid, "c", "e").split())
        assert deadline <= created + 60_000_000, sid
