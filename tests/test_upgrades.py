"""Upgrades: what earlier releases left behind, opened by today's daemon.

The samples under ``tests/golden/first_release`` and
``tests/golden/namespace_layout2.json`` were written by the real daemons of
earlier states of the repository (see ``tests/golden/README.md``), so that
these tests need no checkout of old code: a data dir of the first release
(its journal, its format 1 snapshot, its config.json that held every key),
one whose compaction a kill cut short (its leftovers beside the journal),
and a namespace of the shared engine as a daemon of protocol 2 wrote it.
Today's daemon must serve every session as the old one showed it, and go
on writing to them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessionctl import Client
from tests.conftest import Daemon, run_sessiond
from tests.fleet import Watching, redis_of
from tests.redis_servers import RedisNode

GOLDEN = Path(__file__).parent / "golden"
FIRST_RELEASE = GOLDEN / "first_release"
# What a daemon keeps reserved after its lines; the first release left about
# this much behind when it was killed (the sample holds the lines alone).
RESERVED = 1 << 20
AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}


def _put_in_place(d: Daemon, sample: Path) -> list[dict[str, Any]]:
    """Copy a data dir the first release wrote into ``d``'s paths; return
    what that daemon's ``sessionctl --json list`` showed of it."""
    d.data_dir.mkdir(mode=0o700, exist_ok=True)
    for f in sample.iterdir():
        if f.name == "config.json":
            shutil.copyfile(f, d.config)
        elif f.name != "expected.json":
            shutil.copyfile(f, d.data_dir / f.name)
    expected: list[dict[str, Any]] = json.loads((sample / "expected.json").read_text())
    return expected


def _listed(d: Daemon) -> list[dict[str, Any]]:
    r = d.ctl("--json", "list")
    assert r.returncode == 0, r.stderr
    listed: list[dict[str, Any]] = json.loads(r.stdout)
    return listed


@pytest.mark.local_only("a data dir of the first release")
def test_a_data_dir_of_the_first_release_opens_with_every_session_as_it_left_them(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    expected = _put_in_place(d, FIRST_RELEASE / "clean")
    check = run_sessiond(d, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    # Its snapshot, of format 1, is read, not passed over.
    assert "valid, 4 sessions standing for the first 4 lines" in check.stdout
    d.start()
    assert _listed(d) == expected
    assert "loaded 4 sessions from snapshot" in d.log_text()
    # Its config.json held every key of its day, each as it was.
    r = d.ctl("--json", "config")
    assert r.returncode == 0, r.stderr
    settings = json.loads(r.stdout)
    assert settings["expired_retention"] == 0 and settings["default_ttl"] == 3600
    # And it goes on: a change, a compaction in today's formats, a restart.
    assert d.ctl("set", "bob-1", "after", "upgrade").returncode == 0
    assert d.ctl("compact").returncode == 0
    d.restart()
    now = {s["id"]: s for s in _listed(d)}
    assert now["bob-1"]["meta"] == {**expected[1]["meta"], "after": "upgrade"}
    assert now["bob-1"]["version"] == expected[1]["version"] + 1
    assert [s for s in _listed(d) if s["id"] != "bob-1"] == [
        s for s in expected if s["id"] != "bob-1"
    ]


@pytest.mark.local_only("a data dir of the first release")
def test_a_compaction_the_first_release_left_half_done_loses_nothing(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Killed after its rewrite was synced, before the rename: the old
    # journal (with the zeros it kept reserved), the rewrite and the
    # snapshot's temp file beside it.
    d = make_daemon(start=False)
    expected = _put_in_place(d, FIRST_RELEASE / "mid_compaction")
    with d.journal.open("ab") as f:
        f.write(b"\0" * (RESERVED - d.journal.stat().st_size))
    d.start()
    assert _listed(d) == expected
    assert sorted(p.name for p in d.data_dir.iterdir() if "tmp" in p.name) == []


@pytest.mark.local_only("autostart on another socket, beside a data dir of the first release")
def test_a_daemon_started_on_another_socket_beside_sessions_says_they_are_elsewhere(
    make_daemon: Callable[..., Daemon], started: list[int], tmp_path: Path
) -> None:
    # The first releases' `sessionctl --socket OTHER` ran its daemon on the
    # default data dir; today's gives OTHER a data dir of its own. After an
    # upgrade the daemon started there is empty: said, not left to seem a
    # loss of every session.
    d = make_daemon(start=False)
    expected = _put_in_place(d, FIRST_RELEASE / "clean")
    other = tmp_path / "other.sock"
    r = d.ctl("--socket", str(other), "list", "--ids", env=AUTOSTART_ON)
    with Client(other, timeout=10) as c:
        started.append(c.ping().pid)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("sessionctl: warning: sessiond started on this socket with a data "
                           "dir of its own, ")
    assert f"the sessions in {d.data_dir} are the default socket's" in line
    # Said once: the next start there finds its own journal.
    assert d.ctl("--socket", str(other), "shutdown").returncode == 0
    r = d.ctl("--socket", str(other), "list", "--ids", env=AUTOSTART_ON)
    with Client(other, timeout=10) as c:
        started.append(c.ping().pid)
    assert (r.returncode, r.stderr) == (0, "")
    # And the default socket's daemon has them.
    r = d.ctl("list", "--ids", env=AUTOSTART_ON)
    with d.client(timeout=10) as c:
        started.append(c.ping().pid)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.split() == [s["id"] for s in expected]


def test_a_namespace_a_protocol_2_daemon_wrote_is_served_as_it_showed_it(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    golden = json.loads((GOLDEN / "namespace_layout2.json").read_text())
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url, namespace="upgraded", start=False)
    tag = "sd:{upgraded}:"
    with redis_of(node.url) as engine:
        for key, (kind, value), in ((k, *v.items()) for k, v in golden["keys"].items()):
            name = tag + key
            if kind == "hash":
                engine.hset(name, mapping={f: _raw(v) for f, v in value.items()})
            elif kind == "zset":
                engine.zadd(name, {member: score for member, score in value})
            elif kind == "stream":
                for entry_id, fields in value:
                    engine.xadd(name, {f: _raw(v) for f, v in fields.items()}, id=entry_id)
            else:
                raise AssertionError(f"no loader for {kind} {key}")
    d.start()
    assert _listed(d) == golden["list"]
    r = d.ctl("--json", "stats")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert (stats["total_sessions"], stats["active"], stats["expired"]) == (4, 3, 1)
    r = d.ctl("config", "default_ttl")
    assert (r.returncode, r.stdout.strip()) == (0, "7200"), r.stderr
    # A watch resumes after an event the old daemon added: the rest of its
    # events, then today's.
    events = golden["keys"]["events"]["stream"]
    after = f"{events[7][0]}/{events[7][1]['n']}"
    watching = Watching(d, after=after)
    old = watching.count(3)
    assert [(e.kind, e.sid) for e in old] == [
        (fields["k"], fields["s"]) for _, fields in events[8:11]
    ]
    assert d.ctl("set", "alice-1", "after", "upgrade").returncode == 0
    (new,) = watching.count(1)
    assert (new.kind, new.sid, new.session and new.session.version) == ("updated", "alice-1", 4)
    # A create takes the next place in the creation order the old one kept.
    assert d.ctl("create", "--id", "new-1").returncode == 0
    assert [s["id"] for s in _listed(d)] == [s["id"] for s in golden["list"]] + ["new-1"]


def _raw(value: str | dict[str, str]) -> str | bytes:
    """A value of the golden namespace as the engine held it (bytes that
    were not text are kept as hex)."""
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value
