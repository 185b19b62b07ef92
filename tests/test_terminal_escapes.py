"""What a session holds cannot drive the terminal of whoever lists it.

Human output escapes control characters, ANSI sequences and bidi marks
C-style, as systemctl and ls do (``\\n``, ``\\x1b``, ``\\u202e``), in every
field that shows session data and in error lines that quote it; ``--json``
is unchanged. All through the real ``sessionctl`` against a real daemon.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionctl import Client
from sessiond.model import Session
from tests.conftest import Daemon, wait_until
from tests.test_watch import CtlWatch, watchers

# Clears the screen, turns the text red, starts a fake table row, and
# reverses what follows it.
USER = "mallory\x1b[2J\x1b[31m\nfake-row\u202eevil"
USER_SHOWN = "mallory\\x1b[2J\\x1b[31m\\nfake-row\\u202eevil"
# A key with a C1 CSI and a bidi isolate, a value with everything else (and
# a backslash, which shows doubled so that no value can fake an escape).
KEY = "note\x9b\u2066"
KEY_SHOWN = "note\\x9b\\u2066"
VALUE = "one\ntwo\tthree\r\x1b]0;pwned\x07\x7f\u200fC:\\dir\x00"
VALUE_SHOWN = "one\\ntwo\\tthree\\r\\x1b]0;pwned\\a\\x7f\\u200fC:\\\\dir\\x00"
# Anything here but the newlines that end lines means a raw byte got out.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def assert_clean(text: str) -> None:
    found = RAW.search(text)
    assert found is None, f"raw {found.group()!r} in {text!r}"


def import_hostile(c: Client, sid: str) -> str:
    """A session whose user and meta hold what a terminal obeys. create and
    set refuse C0 controls in users and keys; an import takes existing data
    as it is, so that is how such a user still arrives."""
    now = time.time_ns() // 1000
    session = Session(
        id=sid, user=USER, status="active", ttl=3600,
        meta={KEY: VALUE, "plain": "ok"}, created_at=now, last_access=now,
        expires_at=now + 3600 * 1_000_000,
    )
    assert c.import_page([session]).imported == 1
    return sid


@pytest.fixture
def hostile(daemon: Daemon) -> Iterator[str]:
    with daemon.client() as c:
        yield import_hostile(c, "hostile1")


def test_get_escapes_the_user_and_meta(daemon: Daemon, hostile: str) -> None:
    r = daemon.ctl("get", hostile)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    lines = r.stdout.splitlines()
    # id, user, status, ttl, created, last access, expires, version, 2 meta
    assert len(lines) == 10, r.stdout
    assert re.fullmatch(r"user +" + re.escape(USER_SHOWN), lines[1]), lines[1]
    assert re.fullmatch(rf"meta\.{re.escape(KEY_SHOWN)} +{re.escape(VALUE_SHOWN)}", lines[8])
    assert re.fullmatch(r"meta\.plain +ok", lines[9])


def test_get_json_is_unchanged(daemon: Daemon, hostile: str) -> None:
    r = daemon.ctl("get", hostile, "--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data["user"] == USER and data["meta"] == {KEY: VALUE, "plain": "ok"}


def test_list_keeps_one_row_per_session_with_escaped_cells(
    daemon: Daemon, hostile: str
) -> None:
    with daemon.client() as c:
        plain = c.create(user="alice").id
    r = daemon.ctl("list")
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and lines[-1] == "2 sessions", r.stdout  # header, 2 rows, blank
    row = next(line for line in lines if line.startswith(hostile))
    assert f"  {USER_SHOWN}  " in row
    assert row.endswith(f"{KEY_SHOWN}={VALUE_SHOWN}, plain=ok")
    assert next(line for line in lines if line.startswith(plain))
    # Columns line up: the escaped user is the width of its column.
    header = lines[0]
    assert header.index("STATUS") == row.index("active")
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert {s["user"] for s in listed} == {USER, "alice"}


def test_watch_prints_one_escaped_line_per_event(daemon: Daemon) -> None:
    w = CtlWatch(daemon)
    try:
        wait_until(lambda: watchers(daemon) == 1, 15, "the watch to start")
        with daemon.client() as c:
            sid = import_hostile(c, "hostile2")
            c.set(sid, "k", "v")
        got = w.lines.until(lambda line: f" updated {sid}" in line)
        assert [line.split(" ", 1)[1] for line in got] == [
            f"created {sid} user={USER_SHOWN}",
            f"updated {sid} user={USER_SHOWN}",
        ]
        for line in got:
            assert_clean(line)
    finally:
        status, err = w.interrupt()
    assert status == 0, err


def test_import_report_escapes_what_the_file_holds(daemon: Daemon, tmp_path: Path) -> None:
    bad_id = "evil\x1b[2J\nid"
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps({
        "type": "session", "id": bad_id, "user": "u", "status": "active", "ttl": 60,
        "meta": {}, "created_at": "2026-11-24T09:13:42Z", "last_access": "2026-11-24T09:13:42Z",
        "expires_at": "2099-01-01T00:00:00Z",
    }) + "\n")
    r = daemon.ctl("import", str(path))
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("imported 0, updated 0, skipped 1")
    assert "evil\\x1b[2J\\nid" in lines[1]


def test_an_error_line_quoting_a_value_stays_one_clean_line(
    daemon: Daemon, tmp_path: Path
) -> None:
    sock = tmp_path / "no\x1b[2J\nsuch.sock"
    r = daemon.ctl("ping", "--socket", str(sock))
    assert r.returncode == 3
    assert_clean(r.stderr)
    assert len(r.stderr.splitlines()) == 1
    assert "no\\x1b[2J\\nsuch.sock" in r.stderr


def test_the_export_summary_escapes_the_path_it_names(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "out\x1b[2J\n.json"
    r = daemon.ctl("export", "--output", str(target))
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert r.stdout == f"exported 0 sessions to {tmp_path}/out\\x1b[2J\\n.json\n"
    assert json.loads(target.read_text()) == []


def test_list_aligns_columns_by_the_width_a_terminal_gives_wide_and_combining_characters(
    daemon: Daemon,
) -> None:
    """A wide character (CJK, an emoji) takes two columns and a combining
    accent none: padded by code points, the columns after them would
    shift."""
    users = ["\U0001f44d\U0001f44d", "\u65e5\u672c\u8a9e", "e\u0301clair", "ascii"]
    with daemon.client() as c:
        for user in users:
            c.create(user=user)
    r = daemon.ctl("list")
    assert r.returncode == 0, r.stderr

    def width(text: str) -> int:
        return sum(
            0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) == "W" else 1
            for ch in text
        )

    lines = r.stdout.splitlines()
    header = lines[0]
    status_at = width(header[: header.index("STATUS")])
    rows = [line for line in lines[1:] if "active" in line]
    assert len(rows) == len(users)
    for row in rows:
        assert width(row[: row.index("active")]) == status_at, row
