"""Shared mode: the operations on many sessions meet sessions the engine
holds damaged (changed outside sessiond: a key that is no hash, a hash
lacking fields or holding text for a number). An ``import`` page skips ids
whose sessions are damaged and imports the rest, counting them among the
skipped with their reason; the daemon names each in its log once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sessiond import model
from sessiond.records import plain_line
from tests.conftest import Daemon
from tests.fleet import tag
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
