"""Files to import are read a bounded piece at a time: a record longer
than ``RECORD_TEXT_MAX`` (a line of a gigabyte, an element of a JSON
export as big) is read past, never held whole, and reported with its line
or index like any unreadable record, while the records around it come in.

Proved for real: ``sessionctl import`` and the daemon's migration of a
legacy ``data.jsonl`` run under an address-space limit (``RLIMIT_AS``)
that is several times what they take to import a small file, and a
fraction of the record skipped. Read whole, as they were, the file does not
fit: the reader dies of ``MemoryError``. The big record is mostly a hole of
a sparse file, so that it costs no disk and little time to make.
"""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessiond.limits import RECORD_TEXT_MAX
from tests.conftest import SESSIONCTL, Daemon, running, stored

MB = 1024 * 1024
# What a reader may map in all. Importing a small file takes a sessionctl
# under 60 MB of address space and a starting daemon under 50 MB.
CLI_LIMIT = 128 * MB
DAEMON_LIMIT = 256 * MB
# The record to skip: four times the limit of its reader, so that holding
# it once is refused whatever else the process holds.
CLI_HUGE = 4 * CLI_LIMIT
DAEMON_HUGE = 4 * DAEMON_LIMIT


def limited(size: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the child's address space at ``size``."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    return cap


def record(sid: str) -> bytes:
    return json.dumps({
        "type": "session", "id": sid, "user": "u", "status": "active", "ttl": 3600,
        "meta": {"n": sid}, "created_at": "2026-01-01T00:00:00Z",
    }).encode()


HUGE_HEAD = b'{"type": "session", "id": "huge", "user": "u", "meta": {"x": "'


def write_with_huge(path: Path, size: int, before: list[bytes], after: list[bytes],
                    separator: bytes = b"\n", opening: bytes = b"", closing: bytes = b"\n",
                    hole: bool = True) -> None:
    """``before``, a record of ``size`` bytes, then ``after``, joined by
    ``separator`` between ``opening`` and ``closing``. The big record's
    meta is a hole of the file (zeros: it is no JSON, which a line past the
    cap is never read far enough to find out), or with ``hole=False`` as
    many bytes of a string, written."""
    with path.open("wb") as f:
        f.write(opening + b"".join(r + separator for r in before) + HUGE_HEAD)
        if hole:
            f.seek(size, 1)
        else:
            block = b"a" * MB
            for _ in range(size // MB):
                f.write(block)
        f.write(b'"}}' + b"".join(separator + r for r in after) + closing)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("streaming")) as daemon:
        yield daemon


def import_limited(d: Daemon, path: Path, piped: bool = False) -> dict[str, object]:
    """``sessionctl import --json`` of ``path`` (through a pipe, as
    ``/dev/stdin``, when ``piped``) within ``CLI_LIMIT``: its report."""
    if piped:
        with path.open("rb") as source:
            cat = subprocess.Popen(["cat"], stdin=source, stdout=subprocess.PIPE)
        assert cat.stdout is not None
        with cat.stdout:
            r = subprocess.run(
                [SESSIONCTL, "import", "--json", "/dev/stdin"], env=d.env, stdin=cat.stdout,
                capture_output=True, text=True, timeout=60, check=False,
                preexec_fn=limited(CLI_LIMIT),
            )
        cat.wait(60)
    else:
        r = subprocess.run(
            [SESSIONCTL, "import", "--json", str(path)], env=d.env, capture_output=True,
            text=True, timeout=60, check=False, preexec_fn=limited(CLI_LIMIT),
        )
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("sessionctl: error: 1 unreadable record in "), r.stderr
    report: dict[str, object] = json.loads(r.stdout)
    return report


def test_a_line_past_the_cap_is_skipped_unread_and_the_lines_around_it_come_in(
    d: Daemon, tmp_path: Path
) -> None:
    path = tmp_path / "huge.jsonl"
    write_with_huge(path, CLI_HUGE, [record("line-1"), record("line-2")], [record("line-4")])
    try:
        report = import_limited(d, path)
    finally:
        path.unlink()  # pytest keeps the temp dirs of recent runs
    assert (report["imported"], report["unreadable"]) == (3, 1), report
    assert report["problems"] == [
        f"{path}: line 3: longer than {RECORD_TEXT_MAX} bytes, more than any session the "
        f"daemon accepts: skipped unread"
    ]
    assert {"line-1", "line-2", "line-4"} <= set(stored(d))
    assert "huge" not in stored(d)


def test_a_pipe_with_a_line_past_the_cap_is_read_through_and_the_rest_comes_in(
    d: Daemon, tmp_path: Path
) -> None:
    path = tmp_path / "huge.jsonl"
    write_with_huge(path, CLI_HUGE, [record("pipe-1")], [record("pipe-3")])
    try:
        report = import_limited(d, path, piped=True)
    finally:
        path.unlink()
    assert (report["imported"], report["unreadable"]) == (2, 1), report
    assert report["problems"] == [
        f"/dev/stdin: line 2: longer than {RECORD_TEXT_MAX} bytes, more than any session "
        f"the daemon accepts: skipped unread"
    ]
    assert {"pipe-1", "pipe-3"} <= set(stored(d))


def test_an_element_of_a_json_export_past_the_cap_is_skipped_unread(
    d: Daemon, tmp_path: Path
) -> None:
    path = tmp_path / "huge.json"
    # A JSON export is read up to the cap to find where an element ends:
    # this one is JSON all through.
    write_with_huge(path, CLI_HUGE, [record("elem-0")], [record("elem-2"), record("elem-3")],
                    separator=b",\n  ", opening=b"[\n  ", closing=b"\n]\n", hole=False)
    try:
        report = import_limited(d, path)
    finally:
        path.unlink()  # pytest keeps the temp dirs of recent runs
    assert (report["imported"], report["unreadable"]) == (3, 1), report
    assert report["problems"] == [
        f"{path}: record 1: longer than {RECORD_TEXT_MAX} bytes, more than any session the "
        f"daemon accepts: skipped unread"
    ]
    assert {"elem-0", "elem-2", "elem-3"} <= set(stored(d))


@pytest.mark.local_only("the one-time migration of a legacy file into a local journal")
def test_the_migration_skips_a_line_past_the_cap_unread_and_imports_the_rest(
    make_daemon: Callable[..., Daemon],
) -> None:
    dm = make_daemon(start=False)
    legacy = dm.root / "home" / ".session"
    legacy.mkdir(parents=True)
    write_with_huge(legacy / "data.jsonl", DAEMON_HUGE, [record("mig-1")], [record("mig-3")])
    dm.start(preexec_fn=limited(DAEMON_LIMIT))
    (legacy / "data.jsonl").unlink()  # read at the start, and never again
    assert set(stored(dm)) == {"mig-1", "mig-3"}
    log = dm.log_text()
    assert "MemoryError" not in log, log[-2000:]
    assert (f"legacy import: {legacy / 'data.jsonl'}: line 2: longer than {RECORD_TEXT_MAX} "
            f"bytes") in log, log[-2000:]
    assert "imported 2 sessions from legacy" in log and "1 unreadable lines" in log, log
