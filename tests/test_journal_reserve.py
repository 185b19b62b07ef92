"""The journal's reserved space: the zeros a running daemon keeps allocated
after its lines, so that an fsync need not commit a new file size.

Replay reads them as the end of the lines, a clean stop cuts them off, a
kill -9 leaves them for the next start to cut, and where they cannot be
reserved the journal appends as before and says so."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from sessiond.journalfile import RESERVE_BYTES
from sessiond.model import US, Session, now_us
from sessiond.records import put_line
from sessiond.replay import repair, scan
from tests.conftest import Daemon, as_held, as_read, run_sessiond, stored

pytestmark = pytest.mark.local_only("the space the journal reserves ahead of its writes")


def sessions(n: int) -> list[Session]:
    now = now_us()
    return [
        Session(id=f"s{i}", user=f"u{i}", status="active", ttl=3600, meta={},
                created_at=now, last_access=now, expires_at=now + 3600 * US)
        for i in range(n)
    ]


def reserved(d: Daemon) -> int:
    """Zeros after the lines (checked to be zeros to the end)."""
    data = d.journal.read_bytes()
    lines = d.journal_bytes()
    assert data.count(b"\0", len(lines)) == len(data) - len(lines), "data after the zeros"
    return len(data) - len(lines)


def test_a_running_daemon_writes_into_zeros_reserved_ahead_of_its_lines(daemon: Daemon) -> None:
    with daemon.client() as c:
        for i in range(20):
            c.create(id=f"x{i}", meta={"i": str(i)})
        assert c.stats().journal_bytes == len(daemon.journal_bytes())
        assert reserved(daemon) >= RESERVE_BYTES // 2
        c.delete("x0")
        c.compact()
        # A compaction's fresh file reserves again at its first write.
        c.create(id="after")
        assert c.stats().journal_bytes == len(daemon.journal_bytes())
    assert reserved(daemon) >= RESERVE_BYTES // 2
    assert daemon.journal_bytes().count(b"\n") == 20


def test_a_clean_stop_cuts_the_reserve_and_leaves_plain_jsonl(daemon: Daemon) -> None:
    with daemon.client() as c:
        made = {s.id: s for s in (c.create(id=f"y{i}") for i in range(5))}
        size = c.stats().journal_bytes
    assert reserved(daemon) > 0
    assert daemon.stop() == 0
    data = daemon.journal.read_bytes()
    assert len(data) == size and b"\0" not in data
    assert sorted(data.splitlines(keepends=True)) == sorted(
        put_line(as_held(s)) for s in made.values())


def test_a_killed_daemon_leaves_its_reserve_and_the_next_start_cuts_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(config={"fsync": "always"})
    with d.client() as c:
        for i in range(10):
            c.create(id=f"k{i}", meta={"i": str(i)})
        c.set("k3", "i", "changed")
        c.delete("k4")
    before = stored(d)
    lines = d.journal_bytes()
    d.kill()
    assert reserved(d) > 0, "kill -9 leaves the reserved zeros in place"
    check = run_sessiond(d, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "12 readable lines" in check.stdout and "healthy" in check.stdout
    assert f"{reserved(d)} zero bytes reserved after the lines" in check.stdout
    assert "torn" not in check.stdout
    d.start()
    assert stored(d) == before
    assert "torn" not in d.log_text() and "damaged" not in d.log_text()
    assert d.journal.read_bytes() == lines, "the start cut the old reserve off"
    with d.client() as c:
        before["k99"] = c.create(id="k99")
    d.kill()
    d.start()
    assert stored(d) == before


def test_a_torn_write_into_the_reserve_is_cut_at_the_next_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    with d.client() as c:
        for i in range(4):
            c.create(id=f"t{i}")
    before = stored(d)
    lines = d.journal_bytes()
    d.kill()
    torn = put_line(sessions(1)[0])
    d.append_to_journal(torn[: len(torn) // 2])
    d.start()
    assert "torn" in d.log_text()
    assert stored(d) == before
    assert d.journal.read_bytes() == lines


def test_zeros_with_data_after_them_are_damage_that_repair_drops(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A write that never reached the disk, with a later one that did (a
    power cut): the zeros and the line they run into are one damaged line,
    as zeros inside any line always were."""
    d = make_daemon(start=False)
    made = sessions(6)
    head = b"".join(put_line(s) for s in made[:5])
    d.data_dir.mkdir(mode=0o700, exist_ok=True)
    d.journal.write_bytes(head + b"\0" * 300 + put_line(made[5]) + b"\0" * 4096)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    assert f"line 6 (byte offset {len(head)})" in d.log_text()
    check = run_sessiond(d, "--check")
    assert check.returncode == 1 and f"line 6 (byte offset {len(head)})" in check.stdout
    repaired = run_sessiond(d, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "dropped 1 unreadable line" in repaired.stdout
    assert d.journal.read_bytes() == head
    d.start()
    assert stored(d) == {s.id: as_read(s) for s in made[:5]}


def test_without_room_to_reserve_the_journal_appends_and_says_so(
    make_daemon: Callable[..., Daemon],
) -> None:
    def limit() -> None:
        # Room for the lines, not for the reserve: posix_fallocate fails
        # with EFBIG, and the writes go on without it.
        limit = RESERVE_BYTES // 2
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    d = make_daemon(start=False)
    d.start(preexec_fn=limit)
    with d.client() as c:
        for i in range(10):
            c.create(id=f"n{i}")
        assert c.stats().write_errors == 0 and c.stats().read_only is None
    assert "could not reserve space ahead of" in d.log_text()
    assert "File too large" in d.log_text()
    assert reserved(d) == 0
    before = stored(d)
    d.kill()
    d.start()
    assert stored(d) == before


# -- reading a journal with a reserve ----------------------------------------------


def test_scan_reads_the_lines_and_counts_the_zeros_after_them(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = b"".join(put_line(s) for s in sessions(3))
    path.write_bytes(lines + b"\0" * 5000)
    found: list[object] = []
    report = scan(path, on_put=found.append)
    assert (report.records, len(found)) == (3, 3)
    assert report.valid_end == len(lines) and report.reserved_bytes == 5000
    assert report.torn_bytes == 0 and not report.damaged
    path.write_bytes(b"\0" * 100)  # reserved before the first line was written
    assert (scan(path).records, scan(path).valid_end, scan(path).reserved_bytes) == (0, 0, 100)


def test_repair_names_a_torn_line_before_the_reserve_by_its_place(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    made = sessions(3)
    lines = b"".join(put_line(s) for s in made[:2])
    path.write_bytes(lines + put_line(made[2])[:40] + b"\0" * 5000)
    _, dropped = repair(path)
    assert dropped == [(3, len(lines), "torn final line", "s2")]
    assert path.read_bytes() == lines
