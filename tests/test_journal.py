"""The journal: reading it back (torn tails, damage, repair), group commit,
fsync policy settings, compaction and what ``stats`` shows of it.

The first part drives ``sessiond.replay``, ``sessiond.failpoints`` and
``sessiond.journal`` directly on real files; the second drives a real daemon.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from sessiond.errors import JournalError, ReadOnly
from sessiond.failpoints import Failpoints
from sessiond.journal import INLINE_SYNC_MAX, Journal
from sessiond.model import US, Session
from sessiond.records import LineError, delete_line, put_line
from sessiond.replay import (
    BLOCK_BYTES,
    TMP_SUFFIX,
    JournalDamaged,
    Scan,
    remove_leftovers,
    repair,
    scan,
)
from tests.conftest import SESSIOND, Daemon, as_held, wait_until

pytestmark = pytest.mark.local_only(
    "the journal itself: its lines, commits, failures and compaction"
)

BASE = 1_900_000_000 * US  # far in the future: nothing here expires


def session(i: int, **changes: object) -> Session:
    fields: dict[str, object] = dict(
        id=f"s{i}", user=f"u{i % 3}", status="active", ttl=3600, meta={"i": i},
        created_at=BASE + i, last_access=BASE + i, expires_at=BASE + i + 3600 * US,
    )
    fields.update(changes)
    return Session(**fields)  # type: ignore[arg-type]


def state(path: Path) -> dict[str, Session]:
    found: dict[str, Session] = {}
    scan(path, lambda s: found.__setitem__(s.id, s), lambda sid: found.pop(sid, None))
    return found


def lines_of(*items: Session | str) -> list[bytes]:
    return [delete_line(x) if isinstance(x, str) else put_line(x) for x in items]


# -- scan: torn tails ------------------------------------------------------


@pytest.mark.parametrize("last", [session(3, version=2), "s1"], ids=["put", "delete"])
def test_scan_cuts_a_torn_last_line_at_every_byte_offset(
    tmp_path: Path, last: Session | str
) -> None:
    head = b"".join(lines_of(session(1), session(2), session(3)))
    tail = lines_of(last)[0]
    path = tmp_path / "data.jsonl"
    for cut in range(1, len(tail)):
        path.write_bytes(head + tail[:cut])
        report = scan(path)
        if cut == len(tail) - 1:
            # Everything but the newline: a whole line, kept.
            assert (report.records, report.torn_bytes, report.needs_newline) == (4, 0, True)
            assert report.valid_end == len(head) + cut
        else:
            assert (report.records, report.torn_bytes) == (3, cut), f"cut at {cut}"
            assert report.valid_end == len(head) and not report.needs_newline
            assert not report.damaged


def _reopen_and_append(path: Path, extra: bytes) -> None:
    report = scan(path)

    async def go() -> None:
        journal = Journal(path, "no")
        journal.open(report.valid_end, report.needs_newline)
        try:
            await journal.commit(extra, lambda: None)
        finally:
            journal.close()

    anyio.run(go)


def test_a_write_after_a_torn_tail_reloads_correctly(tmp_path: Path) -> None:
    head = b"".join(lines_of(session(1), session(2)))
    tail = put_line(session(3))
    path = tmp_path / "data.jsonl"
    for cut in range(1, len(tail)):
        path.write_bytes(head + tail[:cut])
        _reopen_and_append(path, put_line(session(4)))
        report = scan(path)
        assert report.torn_bytes == 0 and not report.damaged and not report.needs_newline
        expected = {"s1", "s2", "s4"} | ({"s3"} if cut == len(tail) - 1 else set())
        assert set(state(path)) == expected, f"cut at {cut}"


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n" + put_line(session(1)) + b"  \n\n" + delete_line("s1") + b"\n")
    report = scan(path)
    assert (report.records, report.torn_bytes, report.damaged) == (2, 0, [])
    assert state(path) == {}


# -- scan: damage ----------------------------------------------------------


def _journal_with_bad_line(tmp_path: Path, bad: bytes) -> tuple[Path, int]:
    good = lines_of(session(1), session(2), session(3))
    path = tmp_path / "data.jsonl"
    path.write_bytes(good[0] + good[1] + bad + good[2])
    return path, len(good[0]) + len(good[1])


def test_a_complete_line_with_a_wrong_checksum_stops_the_scan_naming_line_and_offset(
    tmp_path: Path,
) -> None:
    bad = put_line(session(9)).replace(b'"u0"', b'"u1"')
    path, offset = _journal_with_bad_line(tmp_path, bad)
    with pytest.raises(JournalDamaged) as info:
        scan(path)
    assert (info.value.lineno, info.value.offset) == (3, offset)
    assert str(path) in str(info.value) and "checksum mismatch" in str(info.value)
    assert f"line 3 (byte offset {offset})" in str(info.value)


def test_garbage_in_the_middle_stops_the_scan(tmp_path: Path) -> None:
    path, offset = _journal_with_bad_line(tmp_path, b"\x00\x17 not json at all\n")
    with pytest.raises(JournalDamaged) as info:
        scan(path)
    assert (info.value.lineno, info.value.offset) == (3, offset)


def test_a_damaged_last_line_that_ends_with_a_newline_is_damage_not_a_tear(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(put_line(session(1)) + b'{"type":"sess\n')
    with pytest.raises(JournalDamaged):
        scan(path)


def test_a_whole_last_line_with_a_wrong_checksum_is_damage_even_without_newline(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data.jsonl"
    bad = put_line(session(2)).replace(b'"u2"', b'"u0"').rstrip(b"\n")
    path.write_bytes(put_line(session(1)) + bad)
    with pytest.raises(JournalDamaged, match="checksum mismatch"):
        scan(path)


def test_a_record_that_the_loader_refuses_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(put_line(session(1)) + put_line(session(2)))

    def refuse(s: Session) -> None:
        if s.id == "s2":
            raise LineError("unknown status")

    with pytest.raises(JournalDamaged, match="line 2"):
        scan(path, refuse)


def test_scan_without_stopping_lists_every_damaged_line_with_its_id(tmp_path: Path) -> None:
    good = lines_of(session(1), session(2))
    bad_crc = put_line(session(7)).replace(b'"u1"', b'"u2"')
    path = tmp_path / "data.jsonl"
    path.write_bytes(good[0] + bad_crc + b"garbage\r\n" + good[1])
    report = scan(path, stop_on_damage=False)
    assert report.records == 2
    assert [(line, sid) for line, _, _, sid in report.damaged] == [(2, "s7"), (3, None)]
    assert report.damaged[1][1] == len(good[0]) + len(bad_crc)


def test_a_journal_of_many_blocks_is_read_in_order_and_damage_far_in_is_named(
    tmp_path: Path,
) -> None:
    many = lines_of(*(session(i) for i in range(3 * BLOCK_BYTES // 200)))
    assert sum(map(len, many)) > 2 * BLOCK_BYTES
    bad_at = len(many) // 2 + 7
    many[bad_at] = many[bad_at].replace(b'"u', b'"v', 1)
    legacy = b'{"type":"session","id":"legacy","created_at":"2026-11-24T09:00:00Z"}\n'
    many.insert(bad_at - 3, legacy)
    many.insert(bad_at - 2, delete_line("s1"))
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(many))
    damaged_line = bad_at + 2 + 1
    offset = sum(map(len, many[: damaged_line - 1]))
    with pytest.raises(JournalDamaged) as info:
        scan(path)
    assert (info.value.lineno, info.value.offset) == (damaged_line, offset)
    order: list[str] = []
    report = scan(path, lambda s: order.append(s.id), lambda sid: order.append("-" + sid),
                  stop_on_damage=False)
    assert [(line, at) for line, at, _, _ in report.damaged] == [(damaged_line, offset)]
    assert report.records == len(many) - 1 and report.valid_end == path.stat().st_size
    expected = [f"s{i}" for i in range(bad_at - 3)] + ["legacy", "-s1"] + [
        f"s{i}" for i in range(bad_at - 3, len(many) - 2) if i != bad_at
    ]
    assert order == expected


# -- repair ----------------------------------------------------------------


def test_repair_keeps_a_backup_and_drops_only_the_unreadable_lines(tmp_path: Path) -> None:
    good = lines_of(session(1), session(2), session(3), "s2")
    bad_crc = put_line(session(7)).replace(b'"u1"', b'"u2"')
    # A \r inside garbage must not shift line numbers: lines end at \n only.
    original = good[0] + bad_crc + good[1] + b"junk\rmore junk\n" + good[2] + good[3]
    path = tmp_path / "data.jsonl"
    path.write_bytes(original)
    backup, dropped = repair(path)
    assert backup.read_bytes() == original
    assert [(line, sid) for line, _, _, sid in dropped] == [(2, "s7"), (4, None)]
    assert path.read_bytes() == good[0] + good[1] + good[2] + good[3]
    assert set(state(path)) == {"s1", "s3"}


def test_repair_cuts_a_torn_tail_and_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(put_line(session(1)) + put_line(session(2))[:40])
    _, dropped = repair(path)
    assert [(reason, sid) for _, _, reason, sid in dropped] == [("torn final line", "s2")]
    assert path.read_bytes() == put_line(session(1))


def test_a_second_repair_never_overwrites_the_first_backup(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    original = put_line(session(1)) + b"garbage\n"
    path.write_bytes(original)
    first, _ = repair(path)
    second, dropped = repair(path)
    assert first != second and dropped == []
    assert first.read_bytes() == original
    assert second.read_bytes() == put_line(session(1))


def test_repair_of_a_missing_journal_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="nothing to repair"):
        repair(tmp_path / "data.jsonl")


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(put_line(session(1)))
    leftover = tmp_path / ("data.jsonl" + TMP_SUFFIX)
    leftover.write_bytes(b"half a snapshot")
    assert remove_leftovers(path) == [leftover]
    assert not leftover.exists() and path.exists()


# -- failpoints ------------------------------------------------------------


def test_failpoint_fires_from_the_kth_passage_n_times() -> None:
    points = Failpoints("fsync-error@3:2, compact-written")
    assert [points.hit("fsync-error") for _ in range(6)] == [False, False, True, True, False, False]
    assert points.hit("compact-written") and points.hit("compact-written")
    assert not points.hit("compact-renamed")


@pytest.mark.parametrize(
    "spec", ["fsync-eror", "fsync-error:0", "fsync-error@x", "compact-written:"]
)
def test_a_bad_failpoint_spec_is_refused_with_a_reason(spec: str) -> None:
    with pytest.raises(JournalError, match="SESSIOND_FAILPOINT"):
        Failpoints(spec)


# -- group commit ----------------------------------------------------------


def test_concurrent_commits_under_always_share_one_fsync_and_wait_for_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data.jsonl"
    seen_at_return: list[int] = []

    async def go() -> int:
        journal = Journal(path, "always")
        journal.open(0, False)

        async def one(i: int) -> None:
            await journal.commit(put_line(session(i)), lambda: None)
            seen_at_return.append(journal.fsyncs)

        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run_flusher)
            async with anyio.create_task_group() as writers:
                for i in range(50):
                    writers.start_soon(one, i)
            tg.cancel_scope.cancel()
        journal.close()
        return journal.fsyncs

    fsyncs = anyio.run(go)
    assert len(seen_at_return) == 50
    assert min(seen_at_return) >= 1, "a commit returned before any fsync"
    assert fsyncs <= 2, f"50 concurrent commits took {fsyncs} fsyncs"
    assert len(state(path)) == 50


def test_a_lone_always_commit_syncs_on_the_loop_until_the_disk_is_slow(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"

    async def go() -> tuple[bool, bool, int]:
        journal = Journal(path, "always")
        journal.open(0, False)
        try:
            await journal.commit(put_line(session(1)), lambda: None)
            # Alone and on a fast disk: written and fsynced on the loop.
            on_loop = journal._writer._thread is None
            # A disk that has turned slow: fsyncs go back to the thread,
            # where they do not hold up the event loop.
            journal.sync_seconds = INLINE_SYNC_MAX * 10
            await journal.commit(put_line(session(2)), lambda: None)
            in_thread = journal._writer._thread is not None
            return on_loop, in_thread, journal.fsyncs
        finally:
            journal.close()

    on_loop, in_thread, fsyncs = anyio.run(go)
    assert on_loop and in_thread
    assert fsyncs == 2
    assert len(state(path)) == 2


def test_a_lone_always_commit_that_fails_to_sync_is_refused_and_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIOND_FAILPOINT", "fsync-error")
    monkeypatch.setattr("sessiond.failpoints._failpoints", None)
    path = tmp_path / "data.jsonl"
    undone: list[int] = []

    async def go() -> None:
        journal = Journal(path, "always")
        journal.open(0, False)
        try:
            with pytest.raises(ReadOnly, match="fsync failed"):
                await journal.commit(put_line(session(1)), lambda: undone.append(1))
            assert journal._writer._thread is None, "the failed fsync ran on the loop"
        finally:
            journal.close()

    anyio.run(go)
    assert undone == [1]
    assert path.read_bytes() == b"", "the refused line was cut from the file"


# -- a real daemon: settings, compaction, stats ----------------------------


def write_config(d: Daemon, **settings: object) -> None:
    d.config.write_text(json.dumps(settings))


def test_fsync_policy_comes_from_config_and_the_flag_overrides_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    plain = make_daemon()
    with plain.client() as c:
        assert c.stats().fsync == "everysec"
    configured = make_daemon(start=False)
    write_config(configured, fsync="always")
    configured.start()
    with configured.client() as c:
        assert c.stats().fsync == "always"
    configured.restart("--fsync", "no")
    with configured.client() as c:
        assert c.stats().fsync == "no"


def test_fsync_policy_changes_live_and_a_bad_value_changes_nothing(daemon: Daemon) -> None:
    bad = daemon.ctl("config", "fsync", "sometimes")
    assert bad.returncode == 2 and "fsync" in bad.stderr
    with daemon.client() as c:
        assert c.stats().fsync == "everysec"
    ok = daemon.ctl("config", "fsync", "always")
    assert ok.returncode == 0, ok.stderr
    with daemon.client() as c:
        assert c.stats().fsync == "always"
        created = c.create(user="after-switch")
    daemon.kill()
    daemon.start()
    with daemon.client() as c:
        assert c.get(created.id).user == "after-switch"


def test_a_bad_fsync_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [SESSIOND, "--fsync", "sometimes", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2 and "--fsync" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_compact_answers_sizes_sessions_kept_and_time(daemon: Daemon) -> None:
    with daemon.client() as c:
        ids = [c.create(user="u", meta={"n": "0"}).id for _ in range(12)]
        for n in range(1, 4):
            for sid in ids:
                c.set(sid, "n", str(n))
        for sid in ids[:4]:
            c.delete(sid)
        before = len(daemon.journal_bytes())
        assert c.stats().journal_bytes == before
    result = daemon.ctl("compact", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    after = len(daemon.journal_bytes())
    assert answer["bytes_before"] == before and answer["bytes_after"] == after < before
    assert answer["sessions"] == 8 and 0 <= answer["seconds"] < 30
    with daemon.client() as c:
        live = {s.id: s for s in c.iter_sessions()}
    lines = daemon.journal_bytes().splitlines(keepends=True)
    assert sorted(lines) == sorted(put_line(as_held(s)) for s in live.values())
    human = daemon.ctl("compact")
    assert human.returncode == 0
    assert "8 sessions kept" in human.stdout and "->" in human.stdout


def test_stats_show_the_journal_its_last_compaction_and_write_errors(daemon: Daemon) -> None:
    with daemon.client() as c:
        fresh = c.stats()
        assert (fresh.compactions, fresh.last_compaction_at, fresh.last_compaction_seconds) == (
            0, None, None,
        )
        assert fresh.write_errors == 0 and fresh.read_only is None
        assert fresh.journal_path == str(daemon.journal)
        for i in range(5):
            c.create(id=f"x{i}")
        c.delete("x0")
        started = time.time()
        c.compact()
        st = c.stats()
    assert st.compactions == 1 and st.write_errors == 0 and st.read_only is None
    assert st.journal_bytes == st.compacted_bytes == len(daemon.journal_bytes())
    assert st.last_compaction_at is not None
    assert started - 5 <= st.last_compaction_at / US <= time.time() + 5
    assert st.last_compaction_seconds is not None and st.last_compaction_seconds >= 0
    shown = daemon.ctl("stats", "--json")
    assert shown.returncode == 0
    data = json.loads(shown.stdout)
    for key in ("fsync", "journal_bytes", "compacted_bytes", "last_compaction_at",
                "last_compaction_seconds", "write_errors"):
        assert key in data, key


def test_compaction_runs_by_itself_once_the_journal_has_grown_enough(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    write_config(d, compact_min_bytes=8192, compact_growth_percent=100, compact_interval=0)
    d.start()
    with d.client() as c:
        sid = c.create().id
        n = 0
        while len(d.journal_bytes()) < 8192:
            n += 1
            c.set(sid, "n", str(n))
        wait_until(lambda: c.stats().compactions >= 1, what="a compaction on growth")
        st = c.stats()
    assert st.compacted_bytes < 8192 and st.journal_bytes < 8192
    d.kill()
    d.start()
    with d.client() as c:
        assert c.get(sid).meta == {"n": str(n)}


def test_compaction_runs_on_the_interval_after_a_change(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    write_config(d, compact_interval=1)
    d.start()
    with d.client() as c:
        c.create(id="one")
        c.set("one", "k", "v")
        # One line per live session once a compaction has run after the set
        # (one may also have run between the two writes).
        wait_until(
            lambda: c.stats().compactions >= 1 and d.journal_bytes().count(b"\n") == 1,
            what="a compaction on the interval",
        )
        assert c.get("one").meta == {"k": "v"}


def test_leftover_temp_files_are_cleaned_up_at_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    d.journal.write_bytes(put_line(session(1)))
    leftover = d.data_dir / ("data.jsonl" + TMP_SUFFIX)
    leftover.write_bytes(put_line(session(2))[:30])
    d.start()
    assert not leftover.exists()
    assert "interrupted compaction" in d.log_text()
    with d.client() as c:
        assert [s.id for s in c.iter_sessions()] == ["s1"]


def test_writes_made_during_a_compaction_reach_the_new_journal(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    seeded = 20_000
    with d.journal.open("wb") as f:
        for i in range(seeded):
            f.write(put_line(session(i)))
    d.start()
    acked: dict[str, str] = {}
    failures: list[BaseException] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            with d.client(timeout=30) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    sid = f"w{w}-{i % 50}"
                    value = f"{w}-{i}"
                    if sid in acked:
                        c.set(sid, "v", value)
                    else:
                        c.create(id=sid, meta={"v": value})
                    acked[sid] = value
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    captured = 0
    try:
        with d.client(timeout=60) as c:
            deadline = time.monotonic() + 30
            while not captured and time.monotonic() < deadline:
                result = c.compact()
                # The file the compaction produced is its snapshot plus the
                # writes captured while it ran; later writes come after it.
                # (Read raw: the writers keep filling the reserve meanwhile.)
                made = d.journal.read_bytes()[: result.bytes_after]
                captured = made.count(b"\n") - result.sessions
                assert captured >= 0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures
    assert captured > 0, "no write ever landed while a compaction ran"
    d.kill()
    d.start()
    with d.client() as c:
        assert c.stats().total_sessions == seeded + len(acked)
        for sid, value in acked.items():
            assert c.get(sid).meta == {"v": value}, sid


def test_a_failed_compaction_request_is_a_clear_error(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(env={"SESSIOND_FAILPOINT": "fsync-error"})
    result = d.ctl("compact")
    assert result.returncode == 1
    assert "compaction failed" in result.stderr and "Input/output error" in result.stderr
    assert not list(d.data_dir.glob("*" + TMP_SUFFIX))
    assert d.proc is not None
    with d.client() as c:
        assert c.ping().pid == d.proc.pid


def test_scan_reports_nothing_for_a_missing_journal(tmp_path: Path) -> None:
    assert scan(tmp_path / "absent.jsonl") == Scan()


def test_check_and_repair_flags_exclude_each_other(tmp_path: Path) -> None:
    result = subprocess.run(
        [SESSIOND, "--check", "--repair", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2 and "not allowed with" in result.stderr


@pytest.mark.parametrize("policy", ["always", "everysec"])
def test_a_commit_cancelled_while_its_group_waits_leaves_the_group_written_and_acknowledged(
    tmp_path: Path, policy: str,
) -> None:
    # The cancelled commit's batch stays in its group (the write may be on
    # its way already): the group is written, and settling it must not trip
    # over the batch whose task has gone.
    path = tmp_path / "data.jsonl"
    acknowledged: list[int] = []

    async def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await anyio.sleep(0.001)

    async def go() -> None:
        journal = Journal(path, policy)
        journal.open(0, False)
        doomed = anyio.CancelScope()

        async def commit(i: int, scope: anyio.CancelScope) -> None:
            with scope:
                await journal.commit(put_line(session(i)), lambda: None)
                acknowledged.append(i)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run_flusher)
                # A write on its way to disk: commits queue behind it.
                async with journal._io_lock:
                    tg.start_soon(commit, 0, doomed)
                    tg.start_soon(commit, 1, anyio.CancelScope())
                    await until(lambda: journal.settlement.accepted == 2)
                    doomed.cancel()
                    await until(lambda: doomed.cancelled_caught)
                await until(lambda: acknowledged == [1])
                tg.cancel_scope.cancel()
        finally:
            journal.close()

    anyio.run(go)
    assert acknowledged == [1]
    assert sorted(state(path)) == sorted(session(i).id for i in (0, 1))
