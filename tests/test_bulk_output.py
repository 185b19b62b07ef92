"""Bulk commands stay readable: ``import`` and ``cleanup`` print a summary
and at most the first 20 items, then "… and N more (--verbose for all)";
``--verbose`` lists every one, ``-q``/``--quiet`` prints nothing but errors,
``--json`` keeps everything. Through the real CLI against a real daemon.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessiond.model import US, Session, now_us
from tests.conftest import Daemon, running


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("bulk")) as daemon:
        yield daemon


def empty(d: Daemon) -> None:
    with d.client() as c:
        for s in c.list():
            c.delete(s.id)


def expired(d: Daemon, n: int) -> list[str]:
    """``n`` expired sessions, in creation order."""
    empty(d)
    with d.client() as c, c.pipeline() as p:
        made = [p.create(id=f"exp-{i:03d}") for i in range(n)]
        for i in range(n):
            p.expire(f"exp-{i:03d}")
    return [m.result().id for m in made]


def export_file(d: Daemon, tmp_path: Path, n: int, bad_lines: int = 0) -> Path:
    """A JSONL export of ``n`` sessions (held by ``d`` too) and, after them,
    ``bad_lines`` lines that are no record."""
    empty(d)
    now = now_us()
    with d.client() as c:
        c.import_sessions([
            Session(id=f"imp-{i:03d}", user="bulk", status="active", ttl=3600, meta={},
                    created_at=now, last_access=now, expires_at=now + 3600 * US)
            for i in range(n)
        ])
    path = tmp_path / "sessions.jsonl"
    r = d.ctl("export", "--format", "jsonl", "--output", str(path))
    assert r.returncode == 0, r.stderr
    with path.open("a") as f:
        for i in range(bad_lines):
            f.write(f"not a record {i}\n")
    return path


def test_cleanup_lists_the_first_20_ids_and_says_how_many_more(d: Daemon) -> None:
    ids = expired(d, 25)
    r = d.ctl("cleanup", "--dry-run")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == [
        "would remove 25 sessions, 0 remaining",
        *(f"  {sid}" for sid in ids[:20]),
        "  \u2026 and 5 more ids (--verbose for all)",
    ]


def test_cleanup_verbose_lists_every_id_and_json_keeps_them_all(d: Daemon) -> None:
    ids = expired(d, 25)
    r = d.ctl("cleanup", "--dry-run", "--verbose")
    assert r.stdout.splitlines() == ["would remove 25 sessions, 0 remaining",
                                     *(f"  {sid}" for sid in ids)]
    r = d.ctl("cleanup", "--dry-run", "--json")
    assert json.loads(r.stdout)["removed_ids"] == ids


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_cleanup_quiet_prints_nothing_and_still_cleans(d: Daemon, flag: str) -> None:
    expired(d, 25)
    r = d.ctl("cleanup", flag)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    with d.client() as c:
        assert c.list() == []


def test_a_short_list_is_shown_whole_with_no_more_line(d: Daemon) -> None:
    ids = expired(d, 20)
    r = d.ctl("cleanup")
    assert r.stdout.splitlines() == ["removed 20 sessions, 0 remaining",
                                     *(f"  {sid}" for sid in ids)]


def test_the_more_line_is_ascii_where_the_terminal_is(d: Daemon) -> None:
    expired(d, 21)
    r = d.ctl("cleanup", "--dry-run", env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "  ... and 1 more ids (--verbose for all)"


def test_reimporting_prints_a_summary_and_20_reasons(d: Daemon, tmp_path: Path) -> None:
    path = export_file(d, tmp_path, 30)
    r = d.ctl("import", str(path))
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith("imported 0, updated 0, skipped 30, unreadable 0 ")
    assert len(lines) == 22
    assert all(line.startswith("  skipped imp-") for line in lines[1:21])
    assert lines[21] == "  \u2026 and 10 more skipped (--verbose for all)"
    verbose = d.ctl("import", str(path), "--verbose").stdout.splitlines()
    assert len(verbose) == 31 and verbose[1:] == [
        line for line in verbose[1:] if line.startswith("  skipped imp-")
    ]
    data = json.loads(d.ctl("import", str(path), "--json").stdout)
    assert data["skipped"] == 30 and len(data["reasons"]) == 30
    quiet = d.ctl("import", str(path), "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_unreadable_lines_are_listed_20_at_most_and_still_fail(
    d: Daemon, tmp_path: Path
) -> None:
    path = export_file(d, tmp_path, 1, bad_lines=23)
    r = d.ctl("import", str(path))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    unreadable = [line for line in lines if line.startswith("  unreadable: ")]
    assert len(unreadable) == 20
    assert lines[-1] == "  \u2026 and 3 more unreadable (--verbose for all)"
    assert r.stderr == (
        f"sessionctl: error: 23 unreadable records in {path} were not imported (the first "
        f"20 listed above; --verbose lists all)\n"
    )
    verbose = d.ctl("import", str(path), "--verbose")
    assert sum(line.startswith("  unreadable: ") for line in verbose.stdout.splitlines()) == 23
    assert verbose.stderr.endswith("were not imported (listed above)\n")
    quiet = d.ctl("import", str(path), "--quiet")
    assert quiet.returncode == 1 and quiet.stdout == ""
    assert quiet.stderr == (
        f"sessionctl: error: 23 unreadable records in {path} were not imported (run it "
        f"without --quiet to list them)\n"
    )


def test_one_unreadable_record_is_one_record(d: Daemon, tmp_path: Path) -> None:
    path = export_file(d, tmp_path, 1, bad_lines=1)
    r = d.ctl("import", str(path))
    assert r.returncode == 1
    assert r.stderr == (
        f"sessionctl: error: 1 unreadable record in {path} was not imported (listed above)\n"
    )


@pytest.mark.parametrize("args", [
    ("cleanup", "-q", "--verbose"),
    ("cleanup", "--quiet", "--json"),
    ("import", "x.jsonl", "--quiet", "--verbose"),
])
def test_quiet_with_verbose_or_json_is_a_usage_error(d: Daemon, args: tuple[str, ...]) -> None:
    expired(d, 1)
    r = d.ctl(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("sessionctl: error: -q/--quiet ")
    assert f"(see 'sessionctl help {args[0]}')" in r.stderr
    with d.client() as c:
        assert len(c.list()) == 1  # nothing was cleaned
