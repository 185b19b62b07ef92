"""``scripts/script.sh``: the legacy tool's commands, flags, JSON shapes,
error shapes and exit statuses (docs/legacy.md), served by a real daemon.

Every call runs the script with bash, by absolute path, from a directory
that is not the repository, exactly as a legacy user's script would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sessionctl import Client, Session
from sessiond.model import US, now_us
from tests.conftest import BIN, Daemon

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "script.sh"
BASH = shutil.which("bash") or "/bin/bash"
RECORD_KEYS = [
    "type", "id", "user", "status", "ttl", "meta", "created_at", "last_access", "expires_at",
]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def shim(d: Daemon, *args: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = d.env
    # The shim finds its Python through the sessionctl on PATH: make that
    # the sessionctl under test.
    full["PATH"] = f"{BIN}{os.pathsep}{full.get('PATH', '')}"
    full.pop("SESSIOND_PYTHON", None)
    full.update(env or {})
    where = cwd or d.root / "elsewhere"
    where.mkdir(exist_ok=True)
    return subprocess.run(
        [BASH, str(SCRIPT), *args], env=full, cwd=where, capture_output=True, text=True,
        timeout=30, check=False,
    )


def pretty(result: subprocess.CompletedProcess[str]) -> Any:
    """Exit 0, nothing on stderr, stdout exactly ``json.dumps(indent=2)``."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert result.stdout == json.dumps(data, indent=2) + "\n"
    return data


def one_line(result: subprocess.CompletedProcess[str], status: int = 0) -> Any:
    """Stdout exactly one ``json.dumps`` line (default separators)."""
    assert result.returncode == status, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert result.stdout == json.dumps(data) + "\n"
    return data


def legacy_error(result: subprocess.CompletedProcess[str], message: str | None = None) -> str:
    """Exit 1, nothing on stdout, stderr one line ``{"error": "..."}``."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    data = json.loads(result.stderr)
    assert result.stderr == json.dumps(data) + "\n"
    assert list(data) == ["error"] and isinstance(data["error"], str)
    if message is not None:
        assert data["error"] == message
    return str(data["error"])


def not_found(result: subprocess.CompletedProcess[str]) -> None:
    """The legacy refusal, naming the id the command asked for, verbatim
    (the argument after the command: ``script.sh get ID``)."""
    asked = result.args[3]
    assert one_line(result, status=1) == {"ok": False, "error": f"Session {asked} not found"}


def us(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(dt.timestamp()) * US + dt.microsecond


def check_record(rec: dict[str, Any], status: str = "active") -> dict[str, Any]:
    """The legacy record: exact keys in order, exact types."""
    keys = RECORD_KEYS + (["expired_at"] if status == "expired" else [])
    assert list(rec) == keys
    assert rec["type"] == "session" and rec["status"] == status
    assert isinstance(rec["id"], str) and isinstance(rec["user"], str)
    assert type(rec["ttl"]) is int and isinstance(rec["meta"], dict)
    for key in keys[6:]:
        assert ISO.fullmatch(rec[key]), rec[key]
    return rec


def session_of(result: subprocess.CompletedProcess[str], status: str = "active") -> dict[str, Any]:
    data = pretty(result)
    assert list(data) == ["ok", "session"] and data["ok"] is True
    return check_record(data["session"], status)


def make(d: Daemon, *, user: str | None = None, ttl: int | None = None,
         meta: dict[str, Any] | None = None, expired: bool = False) -> Session:
    """Setup through the client: the shim is tested where it is the subject."""
    with d.client() as c:
        s = c.create(user=user, ttl=ttl, meta=meta)
        return c.expire(s.id) if expired else s


def import_late(d: Daemon) -> None:
    """Import "late" (carol's), still marked active a minute past its
    deadline: a daemon reading it must show it expired."""
    now = now_us()
    with d.client() as c:
        c.import_sessions([Session(
            id="late", user="carol", status="active", ttl=60, meta={},
            created_at_us=now - 120 * US, last_access_us=now - 120 * US,
            expires_at_us=now - 60 * US,
        )])


def count_sessions(d: Daemon) -> int:
    with d.client() as c:
        return c.stats().total_sessions


# -- one test per command ------------------------------------------------


def test_create_prints_the_legacy_record_with_defaults_and_parsed_meta(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.set_config("default_ttl", 1234)
    rec = session_of(shim(daemon, "create", "--user", "alice", "--ttl", "3600",
                          "--meta", " a = 1 , b=x=y,", "--meta", "c=3"))
    assert rec["user"] == "alice" and rec["ttl"] == 3600
    # Each pair split at its first "=", keys and values stripped, strings kept.
    assert rec["meta"] == {"a": "1", "b": "x=y", "c": "3"}
    assert rec["created_at"] == rec["last_access"]
    assert us(rec["expires_at"]) - us(rec["created_at"]) == 3600 * US

    plain = session_of(shim(daemon, "create"))
    assert plain["user"] == "anonymous" and plain["ttl"] == 1234 and plain["meta"] == {}
    assert re.fullmatch(r"[0-9a-f]+", plain["id"])


def test_create_refuses_unknown_flags_and_bad_values_and_creates_nothing(daemon: Daemon) -> None:
    legacy_error(shim(daemon, "create", "--colour", "red"),
                 "Unknown option for create: --colour. Run 'help' for usage.")
    legacy_error(shim(daemon, "create", "--ttl"), "--ttl requires a value")
    for bad in ("abc", "0", "+5"):
        assert "--ttl" in legacy_error(shim(daemon, "create", "--ttl", bad))
    assert "--meta" in legacy_error(shim(daemon, "create", "--meta", "novalue"))
    assert "--meta" in legacy_error(shim(daemon, "create", "--meta", "=v"))
    legacy_error(shim(daemon, "create", "extra"),
                 "Unexpected argument for create: extra. Run 'help' for usage.")
    assert count_sessions(daemon) == 0


def test_get_shows_the_record_and_reports_unknown_or_missing_ids(daemon: Daemon) -> None:
    made = session_of(shim(daemon, "create", "--user", "bob", "--meta", "k=v"))
    got = session_of(shim(daemon, "get", made["id"]))
    assert got == made  # get does not touch the session
    not_found(shim(daemon, "get", "0123456789ab"))
    legacy_error(shim(daemon, "get"), "SESSION_ID required")
    assert "Invalid session ID" in legacy_error(shim(daemon, "get", "not an id"))
    legacy_error(shim(daemon, "get", made["id"], "--verbose"),
                 "Unexpected argument for get: --verbose. Run 'help' for usage.")


def test_get_shows_a_session_past_its_deadline_as_expired(daemon: Daemon) -> None:
    import_late(daemon)
    rec = session_of(shim(daemon, "get", "late"), status="expired")
    assert us(rec["expired_at"]) >= us(rec["expires_at"])


def test_set_stores_the_value_as_a_string_and_updates_last_access(daemon: Daemon) -> None:
    made = make(daemon)
    sid = made.id
    rec = session_of(shim(daemon, "set", sid, "theme", "dark mode"))
    assert rec["meta"] == {"theme": "dark mode"}
    assert us(rec["last_access"]) > made.last_access_us
    # Taken literally: a number stays a string, a leading dash is a value.
    rec = session_of(shim(daemon, "set", sid, "n", "42"))
    assert rec["meta"] == {"theme": "dark mode", "n": "42"}
    assert session_of(shim(daemon, "set", sid, "flag", "--x"))["meta"]["flag"] == "--x"

    legacy_error(shim(daemon, "set", sid, "theme"), "Usage: set SESSION_ID KEY VALUE")
    legacy_error(shim(daemon, "set", sid), "Usage: set SESSION_ID KEY VALUE")
    legacy_error(shim(daemon, "set"), "SESSION_ID required")
    assert "Unexpected argument" in legacy_error(shim(daemon, "set", sid, "k", "a", "b"))
    not_found(shim(daemon, "set", "0123456789ab", "k", "v"))
    assert session_of(shim(daemon, "get", sid))["meta"] == {
        "theme": "dark mode", "n": "42", "flag": "--x",
    }


def test_set_on_an_expired_session_is_refused_and_changes_nothing(daemon: Daemon) -> None:
    sid = make(daemon, meta={"k": "old"}, expired=True).id
    before = session_of(shim(daemon, "get", sid), status="expired")
    refused = one_line(shim(daemon, "set", sid, "k", "new"), status=1)
    assert list(refused) == ["ok", "error"] and refused["ok"] is False
    assert "expired" in refused["error"]
    assert session_of(shim(daemon, "get", sid), status="expired") == before


def test_delete_prints_one_line_and_the_session_is_gone(daemon: Daemon) -> None:
    sid = make(daemon).id
    assert one_line(shim(daemon, "delete", sid)) == {"ok": True, "deleted": sid}
    not_found(shim(daemon, "get", sid))
    not_found(shim(daemon, "delete", sid))
    legacy_error(shim(daemon, "delete"), "SESSION_ID required")


def test_list_filters_limits_counts_and_shows_past_deadline_as_expired(daemon: Daemon) -> None:
    a1 = make(daemon, user="alice").id
    a2 = make(daemon, user="alice", expired=True).id
    b = make(daemon, user="bob").id
    import_late(daemon)

    def listing(*args: str) -> tuple[list[str], list[str]]:
        data = pretty(shim(daemon, "list", *args))
        assert list(data) == ["ok", "count", "sessions"] and data["ok"] is True
        assert type(data["count"]) is int and data["count"] == len(data["sessions"])
        for rec in data["sessions"]:
            check_record(rec, rec["status"])
        return [r["id"] for r in data["sessions"]], [r["status"] for r in data["sessions"]]

    assert listing() == ([a1, a2, b, "late"], ["active", "expired", "active", "expired"])
    assert listing("--status", "expired")[0] == [a2, "late"]
    assert listing("--status", "active", "--user", "alice")[0] == [a1]
    assert listing("--user", "alice", "--limit", "1")[0] == [a1]
    assert listing("--user", "nobody") == ([], [])
    legacy_error(shim(daemon, "list", "--status", "gone"),
                 "--status must be active or expired, not 'gone'")
    assert "--limit" in legacy_error(shim(daemon, "list", "--limit", "0"))
    legacy_error(shim(daemon, "list", "--sort", "id"),
                 "Unknown option for list: --sort. Run 'help' for usage.")


def test_expire_marks_the_session_expired_with_expired_at(daemon: Daemon) -> None:
    made = session_of(shim(daemon, "create", "--meta", "k=v"))
    rec = session_of(shim(daemon, "expire", made["id"]), status="expired")
    assert rec["meta"] == {"k": "v"} and rec["created_at"] == made["created_at"]
    assert us(rec["expired_at"]) >= us(made["created_at"])
    not_found(shim(daemon, "expire", "0123456789ab"))
    legacy_error(shim(daemon, "expire"), "SESSION_ID required")


def test_refresh_revives_and_resets_ttl_to_the_given_or_default_ttl(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.set_config("default_ttl", 777)
    made = make(daemon, ttl=60, expired=True)
    sid = made.id
    # Legacy refresh: revives, and ttl becomes default_ttl (not the session's).
    rec = session_of(shim(daemon, "refresh", sid))
    assert rec["ttl"] == 777 and "expired_at" not in rec
    assert us(rec["last_access"]) > made.last_access_us
    assert us(rec["expires_at"]) - us(rec["last_access"]) == 777 * US
    rec = session_of(shim(daemon, "refresh", sid, "--ttl", "90"))
    assert rec["ttl"] == 90 and us(rec["expires_at"]) - us(rec["last_access"]) == 90 * US

    assert "--ttl" in legacy_error(shim(daemon, "refresh", sid, "--ttl", "soon"))
    legacy_error(shim(daemon, "refresh", sid, "--revive"),
                 "Unknown option for refresh: --revive. Run 'help' for usage.")
    legacy_error(shim(daemon, "refresh"), "SESSION_ID required")
    not_found(shim(daemon, "refresh", "0123456789ab"))
    assert session_of(shim(daemon, "get", sid))["ttl"] == 90


def test_stats_has_exactly_the_legacy_keys_and_the_journal_as_data_file(daemon: Daemon) -> None:
    empty = pretty(shim(daemon, "stats"))
    assert empty["stats"]["total_sessions"] == 0
    assert type(empty["stats"]["average_ttl_seconds"]) is float
    make(daemon, user="a", ttl=100)
    make(daemon, user="a", ttl=101)
    make(daemon, user="b", ttl=101, expired=True)
    data = pretty(shim(daemon, "stats"))
    assert list(data) == ["ok", "stats"] and data["ok"] is True
    stats = data["stats"]
    assert list(stats) == ["total_sessions", "active", "expired", "unique_users",
                           "average_ttl_seconds", "data_file"]
    data_file = stats.pop("data_file")
    assert re.fullmatch(daemon.kept_in, data_file)
    assert stats == {
        "total_sessions": 3, "active": 2, "expired": 1, "unique_users": 2,
        "average_ttl_seconds": 100.7,
    }
    assert "Unexpected argument" in legacy_error(shim(daemon, "stats", "now"))


def test_export_writes_the_record_array_or_csv_to_stdout_or_a_file(daemon: Daemon) -> None:
    assert shim(daemon, "export").stdout == "[]\n"
    sids = [make(daemon, user=u, meta={"k": "é"}, expired=u == "bob").id
            for u in ("alice", "bob")]
    records = [session_of(shim(daemon, "get", sids[0])),
               session_of(shim(daemon, "get", sids[1]), status="expired")]

    out = shim(daemon, "export")
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout == json.dumps(records, indent=2) + "\n"
    assert shim(daemon, "export", "--format", "json").stdout == out.stdout

    text = shim(daemon, "export", "--format", "csv").stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert text.splitlines()[0] == "id,user,status,ttl,created_at,last_access,expires_at"
    assert rows[1:] == [[r["id"], r["user"], r["status"], str(r["ttl"]), r["created_at"],
                         r["last_access"], r["expires_at"]] for r in records]

    target = daemon.root / "elsewhere" / "sessions.json"
    done = one_line(shim(daemon, "export", "--output", "sessions.json"))
    assert done == {"ok": True, "exported": 2, "file": "sessions.json"}
    assert target.read_text() == out.stdout
    done = one_line(shim(daemon, "export", "--format", "csv", "--output", str(target)))
    assert done == {"ok": True, "exported": 2, "file": str(target)}
    assert target.read_text() == text

    legacy_error(shim(daemon, "export", "--format", "xml"),
                 "--format must be json or csv, not 'xml'")
    missing = daemon.root / "no-such-dir" / "x.json"
    assert "cannot write" in legacy_error(shim(daemon, "export", "--output", str(missing)))
    assert not missing.parent.exists()


def test_cleanup_removes_expired_or_due_sessions_and_refuses_a_bad_before(daemon: Daemon) -> None:
    gone = make(daemon, expired=True).id
    kept = make(daemon, ttl=3600).id

    def cleanup(*args: str) -> dict[str, Any]:
        data = pretty(shim(daemon, "cleanup", *args))
        assert list(data) == ["ok", "dry_run", "removed_count", "remaining_count", "removed_ids"]
        assert data["ok"] is True and type(data["dry_run"]) is bool
        return dict(data)

    assert cleanup("--dry-run") == {"ok": True, "dry_run": True, "removed_count": 1,
                                    "remaining_count": 1, "removed_ids": [gone]}
    assert count_sessions(daemon) == 2
    # The legacy tool took an unparsable --before as "now": refused, nothing removed.
    assert "--before" in legacy_error(shim(daemon, "cleanup", "--before", "yesterday"))
    assert count_sessions(daemon) == 2
    assert cleanup() == {"ok": True, "dry_run": False, "removed_count": 1,
                         "remaining_count": 1, "removed_ids": [gone]}
    not_found(shim(daemon, "get", gone))
    assert cleanup("--before", "2000-01-01T00:00:00Z")["removed_ids"] == []
    later = datetime.fromtimestamp(now_us() / US + 7200, UTC)
    assert cleanup("--before", later.strftime("%Y-%m-%dT%H:%M:%SZ"))["removed_ids"] == [kept]
    assert count_sessions(daemon) == 0
    legacy_error(shim(daemon, "cleanup", "--force"),
                 "Unknown option for cleanup: --force. Run 'help' for usage.")


def test_config_lists_gets_and_sets_the_daemon_settings(daemon: Daemon) -> None:
    with daemon.client() as c:
        settings = c.config()
    data = pretty(shim(daemon, "config"))
    assert data == {"ok": True, "config": settings}
    assert one_line(shim(daemon, "config", "default_ttl")) == {"ok": True, "default_ttl": 3600}
    # A key that is not set reads as null, as in the legacy tool.
    assert one_line(shim(daemon, "config", "colour")) == {"ok": True, "colour": None}

    # VALUE is JSON when it parses, else a string.
    done = one_line(shim(daemon, "config", "default_ttl", "120"))
    assert done == {"ok": True, "updated": {"default_ttl": 120}}
    assert type(done["updated"]["default_ttl"]) is int
    fsync = "always"
    if daemon.engine.shared:
        # The journal's setting: the engine's own there, refused, saying so.
        assert "appendfsync" in legacy_error(shim(daemon, "config", "fsync", "always"))
        fsync = settings["fsync"]
    else:
        done = one_line(shim(daemon, "config", "fsync", "always"))
        assert done == {"ok": True, "updated": {"fsync": "always"}}
    assert one_line(shim(daemon, "config", "default_ttl")) == {"ok": True, "default_ttl": 120}

    # The daemon validates: an unknown key or a bad value is a legacy error
    # and changes nothing.
    assert "colour" in legacy_error(shim(daemon, "config", "colour", "blue"))
    assert "default_ttl" in legacy_error(shim(daemon, "config", "default_ttl", "soon"))
    # Quoted as typed, not as JSON reads it (1000.0).
    assert legacy_error(shim(daemon, "config", "default_ttl", "1e3")).startswith(
        "invalid value 1e3 for default_ttl: default_ttl takes a whole number")
    assert "Unexpected argument" in legacy_error(shim(daemon, "config", "a", "b", "c"))
    with daemon.client() as c:
        assert c.config() == {**settings, "default_ttl": 120, "fsync": fsync}


def test_help_version_and_an_unknown_command(daemon: Daemon) -> None:
    text = shim(daemon, "help")
    assert text.returncode == 0 and text.stderr == ""
    for command in ("create", "get", "set", "delete", "list", "expire", "refresh", "stats",
                    "export", "cleanup", "config", "help", "version"):
        assert re.search(rf"^\s+{command}\b", text.stdout, re.M), command
    assert shim(daemon).stdout == text.stdout
    version = one_line(shim(daemon, "version"))
    assert list(version) == ["tool", "version"] and version["tool"] == "session"
    assert isinstance(version["version"], str) and version["version"]
    legacy_error(shim(daemon, "frobnicate"), "Unknown command: frobnicate. Run 'help' for usage.")


@pytest.mark.parametrize("command", ["help", "-h", "--help"])
def test_help_refuses_an_extra_argument_as_every_command_does(
    tmp_path: Path, command: str
) -> None:
    # No daemon is started: help never reaches one.
    d = Daemon(tmp_path)
    legacy_error(shim(d, command, "create"),
                 "Unexpected argument for help: create. Run 'help' for usage.")


@pytest.mark.parametrize("args", [
    ("get",), ("set", "k", "v"), ("delete",), ("expire",), ("refresh",), ("refresh", "--ttl", "60"),
], ids=" ".join)
def test_an_unknown_session_is_refused_naming_the_id_asked_for(
    daemon: Daemon, args: tuple[str, ...]
) -> None:
    make(daemon)  # another session: the refusal is about the one asked for
    result = shim(daemon, args[0], "deadbeef0000", *args[1:])
    assert result.returncode == 1 and result.stderr == ""
    assert result.stdout == '{"ok": false, "error": "Session deadbeef0000 not found"}\n'
    assert count_sessions(daemon) == 1


# -- finding Python and the daemon -----------------------------------------


def test_a_module_named_like_ours_in_the_current_directory_is_not_used(daemon: Daemon) -> None:
    decoy = daemon.root / "decoy"
    (decoy / "sessionctl").mkdir(parents=True)
    (decoy / "sessionctl" / "__init__.py").write_text("raise SystemExit('decoy imported')\n")
    (decoy / "json.py").write_text("raise SystemExit('decoy imported')\n")
    sid = session_of(shim(daemon, "create", cwd=decoy))["id"]
    assert session_of(shim(daemon, "get", sid, cwd=decoy))["id"] == sid


@pytest.mark.parametrize("form", ["direct", "pip-long-path"])
def test_python_comes_from_the_shebang_of_the_sessionctl_on_path(daemon: Daemon, form: str) -> None:
    # A PATH whose only sessionctl names our interpreter in its shebang, and
    # whose python3 (if any) is not ours: only the shebang leads to it.
    bindir = daemon.root / f"bin-{form}"
    bindir.mkdir()
    python = BIN / "python"
    if form == "direct":
        text = f"#!{python}\nimport sys\n"
    else:  # what pip writes when the interpreter path is too long for "#!"
        text = f"#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\nimport sys\n"
    (bindir / "sessionctl").write_text(text)
    (bindir / "sessionctl").chmod(0o755)
    out = shim(daemon, "create", "--user", form, env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert session_of(out)["user"] == form


def test_python_comes_from_sessiond_python_when_set(daemon: Daemon) -> None:
    bare_path = {"PATH": "/usr/bin:/bin"}
    # Without sessionctl on PATH the shebang cannot lead to it: the override does.
    out = shim(daemon, "version", env={**bare_path, "SESSIOND_PYTHON": str(BIN / "python")})
    assert one_line(out)["tool"] == "session"
    missing = str(daemon.root / "no-python")
    message = legacy_error(shim(daemon, "version", env={"SESSIOND_PYTHON": missing}))
    assert missing in message and "SESSIOND_PYTHON" in message


def test_an_unreachable_daemon_is_a_legacy_error(daemon: Daemon) -> None:
    daemon.stop()
    message = legacy_error(shim(daemon, "get", "0123456789ab"))
    assert str(daemon.socket) in message


def test_the_shim_autostarts_a_daemon_as_sessionctl_does(
    make_daemon: Callable[..., Daemon], started: list[int]
) -> None:
    d = make_daemon(start=False)
    d.socket.parent.mkdir(mode=0o700)
    env = {"SESSIONCTL_NO_AUTOSTART": "0"}
    made = shim(d, "create", "--user", "auto", env=env)
    pid = 0
    try:
        rec = session_of(made)
        with Client(d.socket) as c:
            pid = c.ping().pid
            assert c.get(rec["id"]).user == "auto"
        assert d.journal.exists()  # it used the data dir from the environment
    finally:
        if not pid:
            pid = _pid_from_lock(d)
        if pid:
            started.append(pid)  # stopped after the test


def _pid_from_lock(d: Daemon) -> int:
    """The pid in the data dir's lock, if that process is a sessiond."""
    lock = d.data_dir / "sessiond.lock"
    text = lock.read_text().strip() if lock.exists() else ""
    if not text.isdigit():
        return 0
    try:
        cmdline = Path(f"/proc/{text}/cmdline").read_bytes()
    except FileNotFoundError:
        return 0
    return int(text) if b"sessiond" in cmdline else 0
