"""Migration from the legacy tool: the daemon's one-time import of
``~/.session`` on first start, and ``sessionctl import`` of a legacy
``data.jsonl``, a JSON export or a JSONL export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessionctl import Session
from sessiond.model import US, iso, now_us
from tests.conftest import BIN, FAILPOINT, Daemon, wait_until

pytestmark = pytest.mark.local_only("the one-time import of the legacy files into a local journal")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "script.sh"
SESSIONS = 500
DAMAGED_LINE = 251  # 1-based, in the middle of the file


def legacy_record(i: int, now: int) -> dict[str, Any]:
    """A session as the legacy tool wrote it: its keys, its order, no version."""
    created = now - (SESSIONS - i) * US
    expired = i % 10 == 0
    ttl = 3600 + i
    rec: dict[str, Any] = {
        "type": "session",
        "id": f"{i:012x}",
        "user": f"user{i % 7}",
        "status": "expired" if expired else "active",
        "ttl": ttl,
        "meta": {"n": str(i), "theme": "dark"},
        "created_at": iso(created),
        "last_access": iso(created),
        "expires_at": iso(created + ttl * US),
    }
    if expired:
        rec["expired_at"] = iso(created + US)
    return rec


def write_legacy_file(path: Path, now: int) -> list[dict[str, Any]]:
    """``SESSIONS`` records as json.dumps wrote them, and one damaged line."""
    records = [legacy_record(i, now) for i in range(SESSIONS)]
    lines = [json.dumps(r) for r in records]
    lines.insert(DAMAGED_LINE - 1, '{"type": "session", "id": "dam4ged", "user": "x", "st')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return records


def plain(s: Session) -> dict[str, Any]:
    return {f: getattr(s, f) for f in s.__struct_fields__}


def all_sessions(d: Daemon) -> dict[str, Session]:
    with d.client() as c:
        return {s.id: s for s in c.iter_sessions()}


def import_json(d: Daemon, path: Path) -> tuple[int, dict[str, Any], str]:
    done = d.ctl("import", str(path), "--json")
    return done.returncode, json.loads(done.stdout), done.stderr


def test_first_start_imports_the_legacy_files_once_and_never_touches_them(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    legacy = d.root / "home" / ".session"
    records = write_legacy_file(legacy / "data.jsonl", now_us())
    (legacy / "config.json").write_text('{"default_ttl": 1234}')
    before = {p.name: p.read_bytes() for p in legacy.iterdir()}
    stamps = {p.name: os.stat(p).st_mtime_ns for p in legacy.iterdir()}

    d.start()
    found = all_sessions(d)
    assert len(found) == SESSIONS
    for rec in records:
        s = found[rec["id"]]
        assert (s.user, s.status, s.ttl, s.meta) == (
            rec["user"], rec["status"], rec["ttl"], rec["meta"]
        )
        assert (iso(s.created_at_us), iso(s.last_access_us), iso(s.expires_at_us)) == (
            rec["created_at"], rec["last_access"], rec["expires_at"]
        )
        if "expired_at" in rec:
            assert s.expired_at_us is not None and iso(s.expired_at_us) == rec["expired_at"]
    with d.client() as c:
        assert c.config("default_ttl") == {"default_ttl": 1234}
        assert c.create().ttl == 1234
    log = d.log_text()
    assert f"imported {SESSIONS} sessions from legacy" in log
    assert f"line {DAMAGED_LINE}" in log
    assert "empty user" not in log and "repeat the id" not in log  # none of either

    # Changes after the import must survive restarts: the legacy file is
    # never read again, so nothing deleted comes back and nothing doubles.
    with d.client() as c:
        c.delete(records[0]["id"])
        c.set(records[1]["id"], "theme", "light")
    d.restart()
    again = all_sessions(d)
    assert len(again) == SESSIONS  # 500 imported + 1 created - 1 deleted
    assert records[0]["id"] not in again
    assert again[records[1]["id"]].meta["theme"] == "light"
    assert d.log_text().count("sessions from legacy") == 1

    assert {p.name: p.read_bytes() for p in legacy.iterdir()} == before
    assert {p.name: os.stat(p).st_mtime_ns for p in legacy.iterdir()} == stamps


@pytest.mark.parametrize("name", ["data.jsonl", "config.json"])
def test_legacy_files_another_user_could_write_are_not_migrated(
    make_daemon: Callable[..., Daemon], name: str
) -> None:
    # Whoever could write them could have put sessions of their choosing
    # (an id an application then trusts) in the user's store.
    d = make_daemon(start=False)
    legacy = d.root / "home" / ".session"
    write_legacy_file(legacy / "data.jsonl", now_us())
    (legacy / "config.json").write_text('{"default_ttl": 1234}')
    (legacy / name).chmod(0o666)
    d.start()
    assert all_sessions(d) == {}
    line, = [x for x in d.log_text().splitlines() if "legacy import skipped" in x]
    assert f"{legacy / name} is writable by group or others (mode 666" in line
    assert f"import it with 'sessionctl import {legacy / 'data.jsonl'}'" in line
    # Once fixed, the next start of that still empty store brings it across.
    (legacy / name).chmod(0o644)
    d.restart()
    assert len(all_sessions(d)) == SESSIONS


def test_a_legacy_file_whose_sessions_all_vanish_is_still_imported_only_once(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    legacy = d.root / "home" / ".session" / "data.jsonl"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps(legacy_record(1, now_us())) + "\n")
    d.start()
    with d.client() as c:
        c.delete(f"{1:012x}")
    d.restart()  # the journal replays to an empty store: the marker decides
    assert all_sessions(d) == {}
    assert d.log_text().count("sessions from legacy") == 1


def test_a_migration_killed_after_its_first_commit_is_finished_at_the_next_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    # More sessions than one write of the migration carries (10,000), so
    # that the kill leaves part of them in the journal.
    count = 25_000
    now = now_us()
    records = [dict(legacy_record(i % SESSIONS, now), id=f"{i:012x}") for i in range(count)]
    d = make_daemon(start=False, env={FAILPOINT: "migration-committed"})
    legacy = d.root / "home" / ".session" / "data.jsonl"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("".join(json.dumps(r) + "\n" for r in records))

    d.start(wait=False)
    assert d.proc is not None
    status = wait_until(lambda: d.proc is not None and d.proc.poll() is not None, 120,
                        "the failpoint to kill sessiond during the migration")
    assert status and d.proc.returncode == -9, d.log_text()
    assert not (d.data_dir / "legacy-imported").exists()
    assert 0 < d.journal_bytes().count(b"\n") < count

    del d.extra_env[FAILPOINT]
    d.start()
    found = all_sessions(d)
    assert set(found) == {r["id"] for r in records}
    for rec in records[:: count // 50]:
        s = found[rec["id"]]
        assert (s.user, s.status, s.ttl, s.meta) == (
            rec["user"], rec["status"], rec["ttl"], rec["meta"]
        )
    log = d.log_text()
    assert "resuming the migration of legacy" in log and "interrupted" in log
    assert "10000 imported before the interruption" in log
    assert (d.data_dir / "legacy-imported").exists()

    # Finished means finished: a later start imports nothing.
    with d.client() as c:
        c.delete(records[0]["id"])
    d.restart()
    assert len(all_sessions(d)) == count - 1
    assert d.log_text().count("resuming the migration") == 1


def test_an_empty_or_missing_user_comes_in_as_anonymous_and_the_log_counts_them(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    records = [legacy_record(i, now_us()) for i in range(4)]
    records[1]["user"] = ""
    del records[3]["user"]
    legacy_lines(d, records)
    d.start()
    found = all_sessions(d)
    assert [found[r["id"]].user for r in records] == ["user0", "anonymous", "user2", "anonymous"]
    said = ("legacy import: 2 records of the file have an empty user; the sessions they "
            "make are user anonymous")
    assert said in d.log_text()


def test_an_id_on_two_lines_comes_in_as_the_last_in_the_place_of_the_first(
    make_daemon: Callable[..., Daemon],
) -> None:
    # As the legacy file reads into a mapping by id: the later line rewrote
    # the session that the first one created.
    d = make_daemon(start=False)
    records = [legacy_record(i, now_us()) for i in range(3)]
    again = {**records[0], "meta": {"theme": "light"}}
    legacy_lines(d, [records[0], records[1], again, records[2]])
    d.start()
    with d.client() as c:
        listed = c.list()
    assert [s.id for s in listed] == [r["id"] for r in records]
    assert listed[0].meta == {"theme": "light"}
    log = d.log_text()
    assert "imported 3 sessions from legacy" in log
    assert log.count("legacy import: 1 lines repeat the id of an earlier line; the last line "
                     "of each id is imported, in the place of its first") == 1


def legacy_lines(d: Daemon, records: list[dict[str, Any]]) -> None:
    """``records`` as the legacy data.jsonl in ``d``'s home, a line each."""
    path = d.root / "home" / ".session" / "data.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_journal_with_sessions_of_its_own_is_never_migrated_into(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    with d.client() as c:
        own = c.create(user="own").id
    d.stop()
    write_legacy_file(d.root / "home" / ".session" / "data.jsonl", now_us())
    d.start()
    assert set(all_sessions(d)) == {own}
    assert "sessions from legacy" not in d.log_text()


def test_import_reports_imported_updated_skipped_and_unreadable(daemon: Daemon) -> None:
    path = daemon.root / "legacy.jsonl"
    records = write_legacy_file(path, now_us())

    status, first, stderr = import_json(daemon, path)
    assert status == 1  # the damaged line is an error, never dropped in silence
    assert (first["imported"], first["updated"], first["skipped"]) == (SESSIONS, 0, 0)
    assert first["unreadable"] == 1 and f"line {DAMAGED_LINE}" in first["problems"][0]
    assert "unreadable" in stderr
    assert len(all_sessions(daemon)) == SESSIONS

    # A re-run imports nothing twice, and says why.
    status, second, _ = import_json(daemon, path)
    assert status == 1
    assert (second["imported"], second["updated"], second["skipped"]) == (0, 0, SESSIONS)
    assert all(r.endswith("already present and not newer") for r in second["reasons"])

    # A newer record updates; a new one is imported; a bad one is skipped
    # with its reason.
    newer = dict(records[3], version=5, meta={"n": "newer"})
    fresh = dict(records[4], id="fresh0000001")
    bad = dict(records[5], id="badttl000001", ttl=100 * 365 * 86400 + 1)
    changes = daemon.root / "changes.jsonl"
    changes.write_text("".join(json.dumps(r) + "\n" for r in (newer, fresh, bad)))
    status, third, _ = import_json(daemon, changes)
    assert status == 0
    assert (third["imported"], third["updated"], third["skipped"]) == (1, 1, 1)
    assert third["unreadable"] == 0 and third["problems"] == []
    assert len(third["reasons"]) == 1 and third["reasons"][0].startswith("badttl000001")
    found = all_sessions(daemon)
    assert found[records[3]["id"]].meta == {"n": "newer"} and "fresh0000001" in found

    human = daemon.ctl("import", str(path))
    assert human.returncode == 1
    assert f"skipped {SESSIONS}" in human.stdout and f"line {DAMAGED_LINE}" in human.stdout

    missing = daemon.ctl("import", str(daemon.root / "nope.jsonl"))
    assert missing.returncode == 2 and "No such file" in missing.stderr


def test_exports_round_trip_through_import(make_daemon: Callable[..., Daemon]) -> None:
    source = make_daemon()
    with source.client() as c:
        for i in range(30):
            meta = {"i": i, "s": "é", "l": [1, {"x": None}]}
            s = c.create(user=f"u{i % 3}", ttl=600 + i, meta=meta)
            if i % 4 == 0:
                c.expire(s.id)
    original = {sid: plain(s) for sid, s in all_sessions(source).items()}
    exports = source.root / "exports"
    exports.mkdir()
    for fmt in ("json", "jsonl"):
        done = source.ctl("export", "--format", fmt, "--output", str(exports / f"all.{fmt}"))
        assert done.returncode == 0, done.stderr
    # The legacy tool's own export: records without versions.
    env = {**source.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(SCRIPT), "export", "--output", "legacy.json"],
        cwd=exports, env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr

    for name in ("all.json", "all.jsonl"):
        target = make_daemon()
        status, report, _ = import_json(target, exports / name)
        assert status == 0 and report["imported"] == len(original), report
        assert {sid: plain(s) for sid, s in all_sessions(target).items()} == original
        status, report, _ = import_json(target, exports / name)
        assert (report["imported"], report["updated"], report["skipped"]) == (0, 0, len(original))

    target = make_daemon()
    status, report, _ = import_json(target, exports / "legacy.json")
    assert status == 0 and report["imported"] == len(original)
    ignore_version = {sid: {**rec, "version": 0} for sid, rec in original.items()}
    assert {sid: {**plain(s), "version": 0} for sid, s in all_sessions(target).items()} == (
        ignore_version
    )


def test_a_csv_export_is_refused_with_a_reason(daemon: Daemon) -> None:
    path = daemon.root / "all.csv"
    path.write_text("id,user,status,ttl,created_at,last_access,expires_at\n")
    status, report, _ = import_json(daemon, path)
    assert status == 1 and report["imported"] == 0
    assert "CSV" in report["problems"][0]
