"""``sessionctl``, end to end: the real executable against a real daemon.

Every command, its output for people and with ``--json``, exit statuses, the
one-line errors, bad input (exit 2, nothing changed), socket resolution and
global options. One daemon serves the module; tests use sessions of their own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sessionctl import render
from sessionctl.usage import build_parser, subcommands
from tests.conftest import SESSIONCTL, Daemon, Engine, running
from tests.rawwire import snapshot

SESSION_KEYS = {"id", "user", "status", "ttl", "meta", "created_at", "last_access",
                "expires_at", "expired_at", "version"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("cli"), engine) as daemon:
        yield daemon


def ok(d: Daemon, *args: str) -> str:
    r = d.ctl(*args)
    assert r.returncode == 0, f"{args}: {r.returncode} {r.stderr}"
    assert r.stderr == ""
    return r.stdout


def js(d: Daemon, *args: str) -> Any:
    return json.loads(ok(d, *args, "--json"))


def one_line_error(r: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """The documented failure shape: status, nothing on stdout, one line on stderr."""
    assert r.returncode == status, f"expected {status}, got {r.returncode}: {r.stderr}"
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sessionctl: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def new(d: Daemon, *args: str) -> dict[str, Any]:
    """A session for a test to work on, made through the Client (fast; the
    CLI's create has tests of its own), in the CLI's ``--json`` shape."""
    opts: dict[str, Any] = {"meta": {}}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag == "--meta":
            key, _, v = value.partition("=")
            opts["meta"][key] = v
        else:
            opts[flag[2:]] = int(value) if flag == "--ttl" else value
    with d.client() as c:
        return render.session_dict(c.create(**opts))


def expire(d: Daemon, sid: str) -> None:
    with d.client() as c:
        c.expire(sid)


# -- every command -------------------------------------------------------------


def test_create_prints_only_the_new_id(d: Daemon) -> None:
    out = ok(d, "create", "--user", "alice")
    assert re.fullmatch(r"[0-9a-f]{32}\n", out)


def test_create_json_is_the_session_object(d: Daemon) -> None:
    s = js(d, "create", "--user", "carol", "--ttl", "120", "--meta", "theme=dark", "--meta",
           "note= a=b ", "--id", "carol-1")
    assert set(s) == SESSION_KEYS
    assert (s["id"], s["user"], s["status"], s["ttl"], s["version"]) == (
        "carol-1", "carol", "active", 120, 1)
    # Values stay strings, split at the first "=", untouched.
    assert s["meta"] == {"theme": "dark", "note": " a=b "}
    assert all(ISO.match(s[k]) for k in ("created_at", "last_access", "expires_at"))
    assert s["expired_at"] is None


def test_get_shows_aligned_fields_with_the_time_left(d: Daemon) -> None:
    sid = new(d, "--user", "dave", "--meta", "lang=en")["id"]
    out = ok(d, "get", sid)
    lines = out.splitlines()
    assert lines[0].split() == ["id", sid]
    assert re.search(r"^status +active \(expires in 59m \d+s\)$", out, re.M), out
    assert re.search(r"^meta\.lang +en$", out, re.M)
    # Aligned: every value starts in the same column, after the widest label.
    columns = {len(re.match(r"^(.*?\S)  +", line)[0]) for line in lines}  # type: ignore[index]
    assert len(columns) == 1, out


def test_get_json_is_the_session_object(d: Daemon) -> None:
    made = new(d, "--user", "erin")
    assert js(d, "get", made["id"]) == made


def test_set_stores_the_value_as_a_string(d: Daemon) -> None:
    sid = new(d)["id"]
    for value in ("42", "true", "null", '{"a": 1}', ""):
        assert js(d, "set", sid, "k", value)["meta"]["k"] == value


def test_unset_removes_a_key_and_a_missing_key_fails(d: Daemon) -> None:
    sid = new(d, "--meta", "a=1", "--meta", "b=2")["id"]
    assert js(d, "unset", sid, "a")["meta"] == {"b": "2"}
    one_line_error(d.ctl("unset", sid, "a"), 1, "'a'")


def test_expect_version_refuses_a_stale_set_or_unset_and_changes_nothing(d: Daemon) -> None:
    s = new(d, "--meta", "a=1")
    stale = str(s["version"])
    set_b = js(d, "set", s["id"], "b", "2", "--expect-version", stale)
    assert set_b["meta"] == {"a": "1", "b": "2"}
    one_line_error(d.ctl("set", s["id"], "b", "3", "--expect-version", stale), 1, "version")
    one_line_error(d.ctl("unset", s["id"], "a", "--expect-version", stale), 1, "version")
    now = js(d, "get", s["id"])
    assert now["meta"] == {"a": "1", "b": "2"} and now["version"] == s["version"] + 1
    assert js(d, "unset", s["id"], "a", "--expect-version", str(now["version"]))["meta"] == {
        "b": "2"
    }
    one_line_error(d.ctl("unset", s["id"], "b", "--expect-version", "0"), 2, "version")


def test_delete_then_get_fails_with_status_1(d: Daemon) -> None:
    sid = new(d)["id"]
    assert ok(d, "delete", sid) == f"deleted {sid}\n"
    one_line_error(d.ctl("get", sid), 1, sid, "not found")
    other = new(d)["id"]
    assert js(d, "delete", other) == {"deleted": other}


def test_expire_then_refresh_needs_revive(d: Daemon) -> None:
    sid = new(d, "--ttl", "600")["id"]
    expired = js(d, "expire", sid)
    assert expired["status"] == "expired" and ISO.match(expired["expired_at"])
    assert "expired" in ok(d, "get", sid)
    one_line_error(d.ctl("refresh", sid), 1, "revive")
    one_line_error(d.ctl("set", sid, "k", "v"), 1, "expired")
    revived = js(d, "refresh", sid, "--revive", "--ttl", "90")
    assert revived["status"] == "active" and revived["ttl"] == 90
    assert revived["expired_at"] is None


def test_refresh_extends_from_now(d: Daemon) -> None:
    s = new(d, "--ttl", "60")
    r = js(d, "refresh", s["id"], "--ttl", "7200")
    assert r["ttl"] == 7200 and r["expires_at"] > s["expires_at"]
    assert r["last_access"] >= s["last_access"] and r["version"] == s["version"] + 1


def test_list_is_a_table_with_a_count_line(d: Daemon) -> None:
    ids = [new(d, "--user", "lister", "--meta", f"n={i}")["id"] for i in range(3)]
    out = ok(d, "list", "--user", "lister")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "USER", "STATUS", "TTL", "DEADLINE", "META"]
    assert [line.split()[0] for line in lines[1:4]] == ids
    assert all("expires in" in line for line in lines[1:4])
    assert lines[-1] == "3 sessions"
    assert ok(d, "list", "--user", "nobody-at-all") == "0 sessions\n"


def test_list_filters_limit_and_json(d: Daemon) -> None:
    ids = [new(d, "--user", "lj")["id"] for _ in range(4)]
    expire(d, ids[1])
    assert [s["id"] for s in js(d, "list", "--user", "lj")] == ids
    assert [s["id"] for s in js(d, "list", "--user", "lj", "--status", "active")] == (
        [ids[0], ids[2], ids[3]])
    assert [s["id"] for s in js(d, "list", "--user", "lj", "--status", "expired")] == [ids[1]]
    assert [s["id"] for s in js(d, "list", "--user", "lj", "--limit", "2")] == ids[:2]
    assert all(set(s) == SESSION_KEYS for s in js(d, "list", "--user", "lj"))
    assert js(d, "list", "--user", "nobody-at-all") == []


def test_list_pages_beyond_one_frame(d: Daemon) -> None:
    with d.client() as c, c.pipeline() as p:
        for _ in range(2100):
            p.create(user="bulk")
    listed = js(d, "list", "--user", "bulk")
    assert len(listed) == 2100 and len({s["id"] for s in listed}) == 2100
    assert ok(d, "list", "--user", "bulk", "--limit", "1500").splitlines()[-1] == (
        "1500 sessions shown; more match (raise --limit to see them)"
    )


def test_stats_for_people_has_no_python_none(d: Daemon) -> None:
    out = ok(d, "stats")
    assert "None" not in out
    assert re.search(r"^total sessions +\d+$", out, re.M)
    assert re.search(r"^last compaction +(never|\d{4}-\d\d-\d\dT.*Z \(.* ago.*\))$", out, re.M)
    assert re.search(r"^read only +no$", out, re.M)
    assert re.search(rf"^journal +{d.kept_in}$", out, re.M)


def test_stats_json_has_counts_and_daemon_health(d: Daemon) -> None:
    new(d, "--user", "stats")
    st = js(d, "stats")
    for key in ("total_sessions", "active", "expired", "unique_users", "average_ttl_seconds",
                "pid", "uptime_seconds", "version", "journal_path", "journal_bytes"):
        assert key in st, key
    assert st["pid"] == d.proc.pid  # type: ignore[union-attr]
    assert re.fullmatch(d.kept_in, st["journal_path"])
    # The engine persists itself in shared mode: no journal of the daemon's.
    assert st["journal_bytes"] > 0 if not d.engine.shared else st["journal_bytes"] == 0
    assert st["total_sessions"] == st["active"] + st["expired"]


def test_cleanup_dry_run_changes_nothing_then_cleanup_removes(d: Daemon) -> None:
    sid = new(d, "--user", "sweep")["id"]
    expire(d, sid)
    dry = js(d, "cleanup", "--dry-run")
    assert set(dry) == {"dry_run", "removed_count", "remaining_count", "removed_ids", "damaged"}
    assert dry["damaged"] == []  # sessions the shared engine holds damaged, passed over
    assert dry["dry_run"] is True and sid in dry["removed_ids"]
    assert js(d, "get", sid)["status"] == "expired"
    human = ok(d, "cleanup")
    assert re.match(r"removed \d+ sessions?, \d+ remaining", human) and sid in human
    one_line_error(d.ctl("get", sid), 1, "not found")


def test_cleanup_before_removes_what_is_due_by_then(d: Daemon) -> None:
    due = new(d, "--user", "due", "--ttl", "60")
    later = new(d, "--user", "due", "--ttl", "86400")
    deadline = datetime.fromisoformat(due["expires_at"].replace("Z", "+00:00"))
    before = (deadline + timedelta(seconds=1)).isoformat()
    r = js(d, "cleanup", "--before", before, "--dry-run")
    assert due["id"] in r["removed_ids"] and later["id"] not in r["removed_ids"]


def test_config_shows_all_settings_or_one(d: Daemon) -> None:
    everything = js(d, "config")
    assert everything["default_ttl"] == 3600 and everything["fsync"] == "everysec"
    assert re.search(r"^default_ttl +3600 +default$", ok(d, "config"), re.M)
    assert ok(d, "config", "default_ttl") == "3600\n"
    assert js(d, "config", "default_ttl") == {"default_ttl": 3600}


def test_ping_and_version(d: Daemon) -> None:
    assert ok(d, "ping").startswith("pong from sessiond ")
    assert js(d, "ping")["pid"] == d.proc.pid  # type: ignore[union-attr]
    from sessiond import __version__

    assert __version__ in ok(d, "version")
    assert js(d, "version")["sessionctl"] == __version__


def test_help_lists_every_command_with_its_arguments(d: Daemon) -> None:
    out = ok(d, "help")
    commands = subcommands(build_parser())
    for name in commands:
        assert re.search(rf"^  {name}\b", out, re.M), name
    for synopsis in ("create [--user U] [--ttl DURATION] [--meta K=V]... [--id ID]",
                     "list [--status active|expired] [--user U] [--limit N] [--ids]",
                     "refresh ID [--ttl DURATION] [--revive]",
                     "export [--format json|jsonl|csv] [--output FILE]",
                     "cleanup [--before TIMESTAMP] [--dry-run] [-q|--quiet] [--verbose]",
                     "config [KEY [VALUE]]"):
        assert synopsis in out, synopsis
    assert ok(d, "--help") == out
    assert "--meta K=V" in ok(d, "help", "create")
    one_line_error(d.ctl("help", "teleport"), 2, "teleport")


# -- export and import ---------------------------------------------------------


def test_export_formats_to_stdout(d: Daemon) -> None:
    made = new(d, "--user", "exp", "--meta", "k=v")
    exported = json.loads(ok(d, "export"))
    mine = [r for r in exported if r["id"] == made["id"]]
    assert mine and mine[0]["meta"] == {"k": "v"} and mine[0]["type"] == "session"
    lines = ok(d, "export", "--format", "jsonl").splitlines()
    assert len(lines) == len(exported)
    assert made["id"] in {json.loads(line)["id"] for line in lines}
    csv_lines = ok(d, "export", "--format", "csv").splitlines()
    assert csv_lines[0] == "id,user,status,ttl,created_at,last_access,expires_at"
    assert len(csv_lines) == len(exported) + 1


def test_export_output_writes_the_file_atomically(d: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old contents")
    summary = js(d, "export", "--output", str(target))
    data = json.loads(target.read_text())
    assert summary == {"exported": len(data), "file": str(target)}
    assert os.listdir(tmp_path) == ["out.json"]  # no temp file left behind
    assert ok(d, "export", "--format", "csv", "--output", str(target)).startswith("exported ")


def test_export_into_a_missing_directory_is_one_line_exit_2(d: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "out.json"
    one_line_error(d.ctl("export", "--output", str(target)), 2, str(target),
                   "No such file or directory")
    assert not (tmp_path / "no").exists()
    one_line_error(d.ctl("export", "--output", str(tmp_path)), 2, "directory")


def test_export_to_a_full_disk_is_one_line_exit_1(d: Daemon) -> None:
    with open("/dev/full", "w") as full:
        r = subprocess.run([SESSIONCTL, "export"], env=d.env, stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("sessionctl: error: ") and len(r.stderr.splitlines()) == 1


def test_import_merges_a_legacy_file(d: Daemon, tmp_path: Path) -> None:
    legacy = tmp_path / "data.jsonl"
    legacy.write_text(
        '{"type": "session", "id": "1f0f618148e2", "user": "legacy", "status": "active", '
        '"ttl": 3600, "meta": {"a": "1"}, "created_at": "2026-11-24T09:13:42.067680Z", '
        '"last_access": "2026-11-24T09:13:42.067680Z", '
        '"expires_at": "2099-11-24T10:13:42.067680Z"}\n'
    )
    r = js(d, "import", str(legacy))
    assert (r["imported"], r["updated"], r["skipped"], r["unreadable"]) == (1, 0, 0, 0)
    got = js(d, "get", "1f0f618148e2")
    assert got["user"] == "legacy" and got["meta"] == {"a": "1"}
    assert "skipped 1" in ok(d, "import", str(legacy))


def test_import_of_a_missing_file_is_a_clear_exit_2(d: Daemon, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    one_line_error(d.ctl("import", str(missing)), 2, str(missing), "No such file")


def test_import_reports_unreadable_lines_and_fails(d: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"type": "session", "id": "mixed-ok", "user": "m", "created_at": "2026-11-24T09:13:42Z",'
        ' "expires_at": "2099-01-01T00:00:00Z"}\n'
        "this line is damaged\n"
    )
    r = d.ctl("import", str(path), "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["imported"] == 1
    assert "line 2" in r.stdout
    assert r.stderr.startswith("sessionctl: error: 1 unreadable")
    assert js(d, "get", "mixed-ok")["user"] == "m"


def test_export_then_import_round_trips(d: Daemon, tmp_path: Path) -> None:
    dump = tmp_path / "all.jsonl"
    ok(d, "export", "--format", "jsonl", "--output", str(dump))
    r = js(d, "import", str(dump))
    assert r["imported"] == 0 and r["skipped"] == len(dump.read_text().splitlines())


# -- --json, global options, socket resolution --------------------------------


@pytest.mark.parametrize(
    "args",
    [("create",), ("get", "{id}"), ("set", "{id}", "k", "v"), ("unset", "{id}", "k"),
     ("list",), ("expire", "{id}"), ("refresh", "{id}", "--revive"), ("stats",),
     ("cleanup", "--dry-run"), ("config",), ("config", "fsync"), ("ping",), ("version",),
     ("delete", "{id}")],
    ids=lambda a: a[0] if isinstance(a, tuple) else str(a),
)
def test_json_output_is_only_json(d: Daemon, args: tuple[str, ...]) -> None:
    sid = new(d, "--id", f"json-only-{args[0]}-{len(args)}", "--meta", "k=v")["id"]
    r = d.ctl(*(a.format(id=sid) for a in args), "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    json.loads(r.stdout)


def test_global_options_work_before_or_after_the_command(d: Daemon) -> None:
    sid = new(d)["id"]
    other = {"SESSIOND_SOCKET": str(d.root / "elsewhere.sock")}
    before = d.ctl("--json", "--socket", str(d.socket), "--no-autostart", "get", sid, env=other)
    after = d.ctl("get", sid, "--socket", str(d.socket), "--json", "--no-autostart", env=other)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)


def test_socket_option_wins_over_the_environment(d: Daemon, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.sock"
    one_line_error(d.ctl("ping", env={"SESSIOND_SOCKET": str(wrong)}), 3, str(wrong))
    r = d.ctl("ping", "--socket", str(d.socket), env={"SESSIOND_SOCKET": str(wrong)})
    assert r.returncode == 0, r.stderr


def test_without_socket_or_env_the_default_path_is_tried(d: Daemon, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    r = d.ctl("ping", env={"SESSIOND_SOCKET": "", "XDG_RUNTIME_DIR": str(runtime)})
    one_line_error(r, 3, str(runtime / "sessiond" / "sessiond.sock"))


def test_unreachable_daemon_exit_3_says_which_socket_and_how_to_start(
    d: Daemon, tmp_path: Path
) -> None:
    sock = tmp_path / "dead.sock"
    line = one_line_error(d.ctl("list", "--socket", str(sock)), 3, str(sock))
    assert "sessiond" in line and "start" in line


# -- bad input: exit 2, one line, nothing changed -------------------------------


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Daemon]:
    """A daemon of the bad-input tests alone: they compare its whole state
    before and after, and a session of another test expiring in between
    (on a loaded machine, a minute is soon) would change it."""
    with running(tmp_path_factory.mktemp("quiet"), engine) as daemon:
        yield daemon


BAD_INPUT = [
    (("create", "--ttl", "0"), "ttl"),
    (("create", "--ttl", "-5"), "ttl"),
    (("create", "--ttl", "soon"), "ttl"),
    (("create", "--ttl", "1.5"), "ttl"),
    (("create", "--ttl", "99999999999999"), "ttl"),
    (("create", "--meta", "novalue"), "KEY=VALUE"),
    (("create", "--meta", "=v"), "KEY=VALUE"),
    (("create", "--id", "bad id!"), "invalid session id"),
    (("create", "--user", ""), "user"),
    (("create", "--bogus"), "--bogus"),
    (("get",), "required"),
    (("get", "bad/id"), "invalid session id"),
    (("set", "fixed-session", "k"), "required"),
    (("refresh", "fixed-session", "--ttl", "0"), "ttl"),
    (("list", "--status", "zombie"), "zombie"),
    (("list", "--limit", "0"), "limit"),
    (("list", "--limit", "ten"), "limit"),
    (("cleanup", "--before", "yesterday"), "unparsable timestamp"),
    (("cleanup", "--before", "1e400"), "unparsable timestamp"),
    (("cleanup", "--before", "@99999999999999"), "out of range"),
    (("cleanup", "--before", "2026-13-45"), "unparsable timestamp"),
    (("config", "no_such_key"), "unknown config key"),
    (("config", "no_such_key", "5"), "unknown config key"),
    (("config", "default_ttl", "soon"), "default_ttl"),
    (("config", "default_ttl", "0"), "default_ttl"),
    (("config", "default_ttl", "true"), "default_ttl"),
    (("config", "fsync", "sometimes"), "fsync"),
    (("export", "--format", "xml"), "xml"),
    (("teleport",), "teleport"),
    ((), "no command"),
]


@pytest.mark.parametrize(
    ("args", "needle"), BAD_INPUT, ids=[" ".join(a) or "-" for a, _ in BAD_INPUT]
)
def test_bad_input_is_exit_2_one_line_and_changes_nothing(
    quiet: Daemon, args: tuple[str, ...], needle: str
) -> None:
    d = quiet
    with d.client() as c:
        if "fixed-session" not in {s.id for s in c.list(user="fixed")}:
            c.create(id="fixed-session", user="fixed")
    before = snapshot(d.socket)
    config_before = d.config.read_bytes() if d.config.exists() else None
    one_line_error(d.ctl(*args), 2, needle)
    assert snapshot(d.socket) == before
    assert (d.config.read_bytes() if d.config.exists() else None) == config_before


def test_bad_input_does_not_need_or_start_a_daemon(d: Daemon, tmp_path: Path) -> None:
    sock = tmp_path / "never.sock"
    r = d.ctl("create", "--ttl", "0", "--socket", str(sock),
              env={"SESSIONCTL_NO_AUTOSTART": "", "SESSIOND_DATA_DIR": str(tmp_path / "data")})
    one_line_error(r, 2, "ttl")
    assert not sock.exists() and not (tmp_path / "data").exists()


def test_an_existing_id_is_a_conflict_exit_1(d: Daemon) -> None:
    new(d, "--id", "dup-id")
    one_line_error(d.ctl("create", "--id", "dup-id"), 1, "dup-id", "exists")


# -- output plumbing -----------------------------------------------------------


@pytest.mark.parametrize("args", [("list", "--user", "bulk"), ("export", "--format", "jsonl")])
def test_a_closed_pipe_is_not_a_traceback(d: Daemon, args: tuple[str, ...]) -> None:
    if not js(d, "list", "--user", "bulk", "--limit", "1"):
        with d.client() as c, c.pipeline() as p:
            for _ in range(2100):
                p.create(user="bulk")
    proc = subprocess.Popen([SESSIONCTL, *args], env=d.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(30) == 0
    assert err == ""


def test_closed_stdout_is_exit_1_and_changes_nothing(d: Daemon) -> None:
    before = snapshot(d.socket)
    r = subprocess.run([SESSIONCTL, "create", "--user", "nowhere"], env=d.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=30, check=False, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1 and r.stderr.startswith("sessionctl: error: ")
    assert snapshot(d.socket) == before


def test_the_cli_never_imports_anyio(d: Daemon, tmp_path: Path) -> None:
    sid = new(d)["id"]
    out = tmp_path / "e.json"
    script = f"""
import sys
from sessionctl.cli import main
for argv in ({["get", sid]!r}, ["list", "--limit", "3"], ["stats"], ["config"],
             ["export", "--output", {str(out)!r}], ["import", {str(out)!r}],
             ["cleanup", "--dry-run"], ["help"], ["get", "bad/id"], ["ping"]):
    main(argv)
import sessionctl.autostart  # the path that starts a daemon must stay light too
print(sorted(m for m in sys.modules if m.split(".")[0] == "anyio"), file=sys.stderr)
"""
    r = subprocess.run([sys.executable, "-c", script], env=d.env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == "[]", r.stderr


# -- restart -------------------------------------------------------------------


def test_state_made_through_the_cli_survives_a_restart(d: Daemon) -> None:
    kept = new(d, "--user", "durable", "--meta", "a=1")["id"]
    js(d, "set", kept, "b", "2")
    gone = new(d, "--user", "durable")["id"]
    ok(d, "delete", gone)
    stale = new(d, "--user", "durable")["id"]
    expire(d, stale)
    before = js(d, "list", "--user", "durable")
    d.restart()
    assert js(d, "list", "--user", "durable") == before
    assert js(d, "get", kept)["meta"] == {"a": "1", "b": "2"}
    assert js(d, "get", stale)["status"] == "expired"
    one_line_error(d.ctl("get", gone), 1, "not found")
