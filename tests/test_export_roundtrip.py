"""What ``export`` writes, ``import`` reads back whole: every field of every
session (meta of any JSON value msgpack carries: unicode, NUL, integers to
2^64-1 and down to -2^63, floats such as 0.1, 1e308 and -0.0, nesting,
empty strings), stamps to the microsecond, versions, expiry and creation
order; from a daemon on one engine into a fresh one on another and back.
And the CSV export, for people: quoted as RFC 4180 says, values as they
are. Through the real CLI against real daemons.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessiond.model import US, Session, now_us
from tests.conftest import Daemon, Engine, stored

META: dict[str, Any] = {
    "unicode": "héllo wörld ☃ 日本語 e\u0301", "emoji": "🎉👨‍👩‍👧", "nul": "a\x00b",
    "empty": "", "beyond 2^53": 2**53 + 1, "2^63-1": 2**63 - 1,
    "-2^63": -(2**63), "2^64-1": 2**64 - 1, "0.1": 0.1, "1e308": 1e308, "-0.0": -0.0,
    "subnormal": 5e-324, "nested": {"a": [1, [2, [3, {"b": None}]]], "": True},
    "list": [], "object": {}, "escape-looking": "\\ud800 \\u0000", "csv": 'a"b,c\nd',
}


def fill(d: Daemon) -> None:
    """Active sessions, one updated, and one expired (imported so)."""
    now = now_us()
    with d.client() as c:
        for i in range(4):
            c.create(id=f"s-{i}", user=f'=u{i},"x"', ttl=100 + i, meta=META)
        c.set("s-2", "again", "x")
        c.import_sessions([Session(
            id="gone", user="old", status="expired", ttl=60, meta={"k": -0.0},
            created_at=now - 7200 * US + 1, last_access=now - 3600 * US + 2,
            expires_at=now - 3540 * US + 3, expired_at=now - 3000 * US + 4, version=7,
        )])


def moved(source: Daemon, target: Daemon, fmt: str, path: Path) -> None:
    r = source.ctl("export", "--format", fmt, "--output", str(path))
    assert r.returncode == 0, r.stderr
    r = target.ctl("import", "--json", str(path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["skipped"] == 0 and out["unreadable"] == 0, out


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert list(after) == list(before)  # creation order
    for sid, s in before.items():
        t = after[sid]
        for name in s.__struct_fields__:
            assert getattr(t, name) == getattr(s, name), (sid, name)
        # -0.0 == 0.0 and 1 == 1.0: the JSON text tells them apart.
        assert json.dumps(t.meta) == json.dumps(s.meta), sid


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_an_export_imported_into_a_fresh_daemon_gives_every_field_back(
    make_daemon: Callable[..., Daemon], tmp_path: Path, fmt: str
) -> None:
    a, b = make_daemon(), make_daemon()
    fill(a)
    moved(a, b, fmt, tmp_path / f"out.{fmt}")
    assert_same(stored(a), stored(b))


@pytest.mark.local_only
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_sessions_moved_to_a_shared_daemon_and_back_are_unchanged(
    make_daemon: Callable[..., Daemon], redis_single: Any, tmp_path: Path, fmt: str
) -> None:
    local = make_daemon()
    shared = make_daemon(backend=redis_single.url, namespace=f"roundtrip-{fmt}")
    back = make_daemon()
    fill(local)
    moved(local, shared, fmt, tmp_path / f"there.{fmt}")
    moved(shared, back, fmt, tmp_path / f"back.{fmt}")
    before = stored(local)
    assert_same(before, stored(shared))
    assert_same(before, stored(back))


@pytest.mark.local_only
def test_the_csv_export_quotes_commas_and_quotes_and_keeps_values_as_they_are(
    make_daemon: Callable[..., Daemon], engine: Engine
) -> None:
    d = make_daemon()
    with d.client() as c:
        c.create(id="f1", user='=HYPERLINK("http://x","a"),b')
        c.create(id="f2", user="+1 @x -2")
    r = d.ctl("export", "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["id", "user", "status", "ttl", "created_at", "last_access",
                       "expires_at"]
    assert [(row[0], row[1]) for row in rows[1:]] == [
        ("f1", '=HYPERLINK("http://x","a"),b'), ("f2", "+1 @x -2")]
    assert '"=HYPERLINK(""http://x"",""a""),b"' in r.stdout
