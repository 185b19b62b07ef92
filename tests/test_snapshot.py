"""The binary snapshot beside the journal (``sessiond.snapshot``).

The first part drives the module on real files: records come back exactly
as ``blocks.read_block`` makes them from the journal lines they stand for,
the format is pinned by tests/golden/snapshot.snap, and a damaged or stale
snapshot is refused. The second part drives real daemons: compaction writes
the snapshot, a start loads it and replays only the journal after it, and
whatever goes wrong with it (damage, a changed journal, a crash at any step,
a failed write) leaves the state exactly what the journal says.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from sessionctl import Client
from sessiond import snapshot
from sessiond.blocks import read_block
from sessiond.limits import MAX_VERSION
from sessiond.model import EMPTY_META, US, Record, Session
from sessiond.records import put_line, put_lines
from sessiond.replay import JournalDamaged, remove_leftovers, scan
from sessiond.snapshot import HEAD_BYTES, SnapshotDamaged, SnapshotStale
from tests.conftest import Daemon, as_held, run_sessiond

pytestmark = pytest.mark.local_only("the snapshot beside the journal")

GOLDEN = Path(__file__).parent / "golden" / "snapshot.snap"
UPDATE_ENV = "SESSIOND_UPDATE_GOLDEN"
FAILPOINT = "SESSIOND_FAILPOINT"
BASE = 1_900_000_000 * US  # far in the future: nothing here expires


# -- the module, on files ----------------------------------------------------


def session(i: int, **changes: object) -> Session:
    """Varied: users, metas (the empty one too), ttls, versions, expired
    ones, and timestamps shared or not."""
    expired = i % 5 == 4
    fields: dict[str, object] = dict(
        id=f"s{i}", user=f"user-{i % 7}", status="expired" if expired else "active",
        ttl=(60, 3600, 86400)[i % 3], meta=({}, {"theme": "dark"}, {"i": i})[i % 3],
        created_at=BASE + (i // 4) * US, last_access=BASE + (i // 2) * US,
        expires_at=BASE + (i // 2 + 3600) * US, version=1 + i % 4,
    )
    if expired:
        fields["expired_at"] = BASE + (i // 2 + 3600) * US + i
    fields.update(changes)
    return Session(**fields)  # type: ignore[arg-type]


def journal_records(lines: bytes) -> list[Record]:
    items = read_block(lines)
    assert items is not None and all(isinstance(r, Record) for r in items)
    return items  # type: ignore[return-value]


def write(journal: Path, chunks: list[list[Record]]) -> bytes:
    """The journal and its snapshot, as compaction writes them."""
    writer = snapshot.Writer(journal)
    data = b""
    for chunk in chunks:
        lines = put_lines(chunk)
        writer.add(chunk, lines)
        data += lines
    journal.write_bytes(data)
    writer.seal()
    assert writer.commit()
    writer.release()
    return data


def loaded(journal: Path) -> tuple[snapshot.Header | None, list[Record]]:
    got: list[Record] = []
    base = snapshot.load(journal, got.extend)
    return base, got


def test_records_load_exactly_as_read_block_makes_them_from_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    made = journal_records(b"".join(put_line(session(i)) for i in range(3000)))
    data = write(journal, [made[i : i + 1024] for i in range(0, len(made), 1024)])
    base, got = loaded(journal)
    assert base is not None
    assert (base.journal_bytes, base.lines, base.count) == (len(data), 3000, 3000)
    expected = journal_records(data)
    assert got == expected  # every field, seq (-1: unadopted) included
    assert all(r.seq == -1 for r in got)
    assert [r.status for r in got].count("expired") == 600
    # Shared as the store holds them: users interned, the empty meta is
    # EMPTY_META itself, equal metas and ttls one object each.
    assert all(r.user is sys.intern(r.user) for r in got)
    empty = [r for r in got if r.meta_json == b"{}"]
    assert empty and all(r.meta_json is EMPTY_META for r in empty)
    assert len({id(r.meta_json) for r in got if r.meta_json == b'{"theme":"dark"}'}) == 1
    assert len({id(r.ttl) for r in got if r.ttl == 86400}) == 1
    # Within a chunk, equal timestamps are one object, across columns too.
    first = got[:1024]
    assert len({id(r.created_at) for r in first}) == len({r.created_at for r in first})
    stamps = {r.created_at for r in first} | {r.last_access for r in first}
    assert len({id(x) for r in first for x in (r.created_at, r.last_access)}) == len(stamps)


def test_tables_start_over_when_full_and_big_chunks_are_split(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    n = snapshot.TABLE_MAX + 5000
    made = journal_records(b"".join(
        put_line(session(i, user=f"u{i}", meta={"u": i}, ttl=1 + i)) for i in range(n)
    ))
    # Every user, meta and ttl is new. 56 chunks of 1024, then one of
    # 13192, above CHUNK_MAX, written as 8192 (the tables are exactly full)
    # and 5000 (they start over).
    chunks = [made[i : i + 1024] for i in range(0, 56 * 1024, 1024)]
    chunks.append(made[56 * 1024 :])
    assert len(chunks[-1]) == 13192 and 56 * 1024 + 8192 == snapshot.TABLE_MAX
    write(journal, chunks)
    base, got = loaded(journal)
    assert base is not None and base.count == n
    assert got == made


def test_an_empty_compaction_is_a_snapshot_of_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    write(journal, [])
    base, got = loaded(journal)
    assert base is not None and (base.journal_bytes, base.lines, base.count, got) == (0, 0, 0, [])


def test_no_snapshot_is_none(tmp_path: Path) -> None:
    assert loaded(tmp_path / "data.jsonl") == (None, [])


# The golden snapshot: the records of these sessions, in two chunks.
GOLDEN_SESSIONS = [session(i) for i in range(12)]


def golden_chunks() -> list[list[Record]]:
    made = journal_records(b"".join(put_line(s) for s in GOLDEN_SESSIONS))
    return [made[:7], made[7:]]


def write_golden() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "data.jsonl"
        write(journal, golden_chunks())
        GOLDEN.write_bytes(journal.with_suffix(".snap").read_bytes())


if os.environ.get(UPDATE_ENV) == "1":
    write_golden()


def test_the_format_matches_the_golden_bytes(tmp_path: Path) -> None:
    """Changing the bytes is a format change: bump snapshot.FORMAT, then
    SESSIOND_UPDATE_GOLDEN=1 python -m pytest tests/test_snapshot.py."""
    journal = tmp_path / "data.jsonl"
    write(journal, golden_chunks())
    assert (tmp_path / "data.snap").read_bytes() == GOLDEN.read_bytes()


def test_the_golden_snapshot_loads_back(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    journal.write_bytes(b"".join(put_line(s) for s in GOLDEN_SESSIONS))
    (tmp_path / "data.snap").write_bytes(GOLDEN.read_bytes())
    base, got = loaded(journal)
    assert base is not None and base.count == 12
    assert [r.to_session() for r in got] == GOLDEN_SESSIONS


def test_the_file_is_private(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    write(journal, golden_chunks())
    assert (tmp_path / "data.snap").stat().st_mode & 0o777 == 0o600


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("where", "reason"),
    [(0, "bad magic"), (20, "header"), (HEAD_BYTES + 10, "body"), (-1, "body")],
)
def test_a_flipped_bit_anywhere_is_damage_and_nothing_is_fed(
    tmp_path: Path, where: int, reason: str
) -> None:
    journal = tmp_path / "data.jsonl"
    write(journal, golden_chunks())
    snap = tmp_path / "data.snap"
    _flip(snap, where if where >= 0 else snap.stat().st_size - 1)
    got: list[Record] = []
    with pytest.raises(SnapshotDamaged, match=reason):
        snapshot.load(journal, got.extend)
    assert not got


@pytest.mark.parametrize("keep", [0, 100, HEAD_BYTES + 5, -1])
def test_a_cut_or_extended_snapshot_is_damage(tmp_path: Path, keep: int) -> None:
    journal = tmp_path / "data.jsonl"
    write(journal, golden_chunks())
    snap = tmp_path / "data.snap"
    data = snap.read_bytes()
    snap.write_bytes(data + b"\0" if keep < 0 else data[:keep])
    with pytest.raises(SnapshotDamaged, match="cut short"):
        snapshot.load(journal, list)


def _reseal(path: Path, header: snapshot.Header, body: bytes) -> None:
    """Write a snapshot with this header and body, its checksums made to
    match: damage that no checksum can see."""
    header.body_crc, header.body_bytes = zlib.crc32(body), len(body)
    raw = msgspec.msgpack.encode(header)
    head = struct.pack("<8sIII", snapshot.MAGIC, snapshot.FORMAT, len(raw), zlib.crc32(raw))
    path.write_bytes((head + raw).ljust(HEAD_BYTES, b"\0") + body)


def _golden_snapshot(tmp_path: Path) -> tuple[Path, snapshot.Header, bytes, int]:
    """The golden journal written in ``tmp_path`` with its snapshot: the
    journal, the snapshot's header and body, and the length of the body's
    first chunk (after the 4 bytes that say it)."""
    journal = tmp_path / "data.jsonl"
    write(journal, golden_chunks())
    data = (tmp_path / "data.snap").read_bytes()
    header = msgspec.msgpack.decode(data[20 : HEAD_BYTES].rstrip(b"\0"), type=snapshot.Header)
    body = data[HEAD_BYTES:]
    return journal, header, body, int.from_bytes(body[:4], "little")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("length", "runs past the end"), ("count", "holds 12 records in 2 chunks, not 13"),
     ("columns", "columns of different lengths"), ("index", "index out of range")],
)
def test_damage_behind_good_checksums_is_still_damage(
    tmp_path: Path, damage: str, reason: str
) -> None:
    journal, header, body, length = _golden_snapshot(tmp_path)
    path = tmp_path / "data.snap"
    first = msgspec.msgpack.decode(body[4 : 4 + length], type=snapshot.Chunk)
    if damage == "length":
        body = (length + len(body)).to_bytes(4, "little") + body[4:]
    elif damage == "count":
        header.count += 1
    else:
        if damage == "columns":
            first.versions.pop()
        else:
            first.user = len(first.users) + 1
        raw = msgspec.msgpack.encode(first)
        body = len(raw).to_bytes(4, "little") + raw + body[4 + length :]
    _reseal(path, header, body)
    got: list[Record] = []
    with pytest.raises(SnapshotDamaged, match=reason):
        snapshot.load(journal, got.extend)
    assert not got


def test_a_version_out_of_range_behind_good_checksums_is_damage(tmp_path: Path) -> None:
    # A version the rules refuse must not enter by the snapshot: refused as
    # damage, the journal (whose line says otherwise) is replayed in full.
    journal, header, body, length = _golden_snapshot(tmp_path)
    path = tmp_path / "data.snap"
    raw = msgspec.msgpack.decode(body[4 : 4 + length])  # as plain lists: no bounds
    for version in (MAX_VERSION + 1, 2**64 - 1, 0):
        raw[6][0] = version
        chunk = msgspec.msgpack.encode(raw)
        _reseal(path, header, len(chunk).to_bytes(4, "little") + chunk + body[4 + length :])
        got: list[Record] = []
        with pytest.raises(SnapshotDamaged, match="chunk 1 is damaged"):
            snapshot.load(journal, got.extend)
        assert not got


def test_a_format_1_snapshot_still_loads(tmp_path: Path) -> None:
    # Written before the imported_at column: none of its records had one.
    journal = tmp_path / "data.jsonl"
    journal.write_bytes(b"".join(put_line(s) for s in GOLDEN_SESSIONS))
    old = GOLDEN.with_name("snapshot_v1.snap").read_bytes()
    assert struct.unpack_from("<I", old, 8) == (1,)
    (tmp_path / "data.snap").write_bytes(old)
    base, got = loaded(journal)
    assert base is not None and base.count == 12
    assert got == journal_records(journal.read_bytes())
    assert all(r.imported_at is None for r in got)


def test_records_imported_expired_keep_their_import_moment(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    made = journal_records(b"".join(put_line(session(i)) for i in range(40)))
    made = [
        msgspec.structs.replace(r, imported_at=BASE + i * US) if r.expired_at else r
        for i, r in enumerate(made)
    ]
    data = write(journal, [made[:25], made[25:]])
    assert data.count(b'"imported_at"') == 8
    base, got = loaded(journal)
    assert base is not None and got == made
    items = read_block(data)
    assert items == made  # the journal's lines say the same


def test_another_format_version_is_stale_not_damage(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    write(journal, golden_chunks())
    snap = tmp_path / "data.snap"
    data = bytearray(snap.read_bytes())
    data[8] = snapshot.FORMAT + 1
    snap.write_bytes(bytes(data))
    with pytest.raises(SnapshotStale, match="format"):
        snapshot.load(journal, list)


def test_a_journal_changed_under_the_snapshot_makes_it_stale(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    data = write(journal, golden_chunks())
    journal.write_bytes(data.replace(b"user-1", b"user-9", 1))  # same size
    with pytest.raises(SnapshotStale, match="have changed"):
        snapshot.load(journal, list)
    journal.write_bytes(data[:-1])
    with pytest.raises(SnapshotStale, match=f"has {len(data) - 1}"):
        snapshot.load(journal, list)
    journal.unlink()
    with pytest.raises(SnapshotStale, match="no journal"):
        snapshot.load(journal, list)


def test_lines_appended_after_the_snapshot_keep_it_valid(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    data = write(journal, golden_chunks())
    with journal.open("ab") as f:
        f.write(put_line(session(99)))
    base, got = loaded(journal)
    assert base is not None and base.journal_bytes == len(data) and len(got) == 12


def test_a_scan_from_the_snapshot_names_damage_by_its_place_in_the_whole_file(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "data.jsonl"
    data = write(journal, golden_chunks())
    tail = [put_line(session(i)) for i in (20, 21, 22)]
    tail[1] = tail[1].replace(b"user-", b"uxer-")
    journal.write_bytes(data + b"".join(tail))
    base, _ = loaded(journal)
    assert base is not None
    with pytest.raises(JournalDamaged) as caught:
        scan(journal, start=base.journal_bytes, lineno=base.lines)
    whole = scan(journal, stop_on_damage=False)
    assert (caught.value.lineno, caught.value.offset) == whole.damaged[0][:2] == (
        14, len(data) + len(tail[0])
    )


def test_a_scan_from_the_snapshot_cuts_a_torn_tail_as_a_whole_scan_does(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    data = write(journal, golden_chunks())
    journal.write_bytes(data + put_line(session(20)) + put_line(session(21))[:40])
    base, _ = loaded(journal)
    assert base is not None
    part = scan(journal, start=base.journal_bytes, lineno=base.lines)
    whole = scan(journal)
    assert (part.valid_end, part.torn_bytes) == (whole.valid_end, whole.torn_bytes) == (
        len(data) + len(put_line(session(20))), 40
    )
    assert part.records == 1 and scan(journal, start=len(data)).valid_end == part.valid_end


def test_a_leftover_snapshot_temp_file_is_removed(tmp_path: Path) -> None:
    journal = tmp_path / "data.jsonl"
    journal.write_bytes(b"")
    leftover = tmp_path / "data.snap.tmp"
    leftover.write_bytes(b"half a snapshot")
    assert remove_leftovers(journal) == [leftover]
    assert not leftover.exists()


def test_a_failed_write_is_logged_and_leaves_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "data.jsonl"
    write(journal, golden_chunks())
    writer = snapshot.Writer(journal)
    chunk = golden_chunks()[0]
    writer.add(chunk, put_lines(chunk))
    writer.abandon(OSError(28, "No space left on device"))
    writer.add(chunk, put_lines(chunk))  # ignored from now on
    writer.seal()
    assert not writer.sealed and not (tmp_path / "data.snap.tmp").exists()
    assert "data.snap.tmp not written: No space left on device (errno 28)" in caplog.text
    # The journal it would have stood for replaces the old one: the old
    # snapshot goes too.
    assert not writer.commit()
    writer.release()
    assert not (tmp_path / "data.snap").exists()


# -- real daemons ----------------------------------------------------------


def listed(d: Daemon) -> list[Session]:
    """Every session, in creation order."""
    with d.client() as c:
        return list(c.iter_sessions())


def populate(c: Client, n: int = 60, prefix: str = "p") -> None:
    """Varied sessions: users (the default one too), metas (the empty one
    too), ttls; some updated, refreshed, expired and deleted."""
    for i in range(n):
        c.create(id=f"{prefix}{i}", user=f"u{i % 4}" if i % 5 else None,
                 ttl=(3600, 7200, 86400)[i % 3],
                 meta=({}, {"theme": "dark"}, {"i": i, "nested": {"k": [1, None]}})[i % 3])
    for i in range(0, n, 6):
        c.set(f"{prefix}{i}", "lang", "en")
    for i in range(1, n, 7):
        c.refresh(f"{prefix}{i}", ttl=600)
    for i in range(2, n, 6):
        c.expire(f"{prefix}{i}")
    for i in range(4, n, 9):
        c.delete(f"{prefix}{i}")


def snap(d: Daemon) -> Path:
    return d.data_dir / "data.snap"


def snap_temp(d: Daemon) -> Path:
    return d.data_dir / "data.snap.tmp"


def start(d: Daemon) -> str:
    """Start and wait until it answers; what this start logged."""
    mark = len(d.log_text())
    d.start()
    return d.log_text()[mark:]


def from_snapshot(sessions: int, after: int) -> str:
    """The line a start from the snapshot logs."""
    return f"loaded {sessions} sessions from snapshot data.snap and {after} journal lines after it"


def journal_lines(d: Daemon) -> int:
    return d.journal_bytes().count(b"\n")


def full_replay_state(d: Daemon) -> list[Session]:
    """The state the journal alone gives (the snapshot set aside)."""
    d.stop()
    aside = d.root / "snap.aside"
    snap(d).rename(aside)
    assert "replayed" in start(d)
    state = listed(d)
    d.stop()
    aside.rename(snap(d))
    return state


def test_compaction_writes_a_snapshot_that_a_restart_loads_into_the_same_state(
    daemon: Daemon,
) -> None:
    with daemon.client() as c:
        populate(c)
        kept = c.compact().sessions
    assert snap(daemon).stat().st_mode & 0o777 == 0o600
    assert not snap_temp(daemon).exists()
    before = listed(daemon)
    assert len(before) == kept == 60 - 7
    assert any(s.status == "expired" for s in before) and any(not s.meta for s in before)
    assert not {"p4", "p13", "p58"} & {s.id for s in before}  # deleted
    daemon.stop()
    assert from_snapshot(kept, 0) in start(daemon)
    assert listed(daemon) == before
    assert full_replay_state(daemon) == before


def test_writes_after_the_compaction_survive_a_restart_and_a_kill(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always")
    with d.client() as c:
        populate(c)
        kept = c.compact().sessions
        populate(c, 20, prefix="t")
        c.set("p1", "after", True)
        c.delete("p3")
        c.expire("p5")
    before = listed(d)
    d.kill()
    assert from_snapshot(kept, journal_lines(d) - kept) in start(d)
    assert listed(d) == before
    with d.client() as c:
        c.create(id="later")
    before = listed(d)
    d.stop()
    assert from_snapshot(kept, journal_lines(d) - kept) in start(d)
    assert listed(d) == before
    assert full_replay_state(d) == before


def test_a_repair_removes_the_snapshot_and_the_journal_gives_the_state(daemon: Daemon) -> None:
    with daemon.client() as c:
        populate(c)
        c.compact()
    before = listed(daemon)
    daemon.stop()
    result = run_sessiond(daemon, "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed the snapshot" in result.stdout and not snap(daemon).exists()
    log = start(daemon)
    assert f"replayed {len(before)} journal lines" in log and "snapshot" not in log
    assert listed(daemon) == before


def test_a_journal_edited_in_place_makes_the_snapshot_stale(daemon: Daemon) -> None:
    with daemon.client() as c:
        populate(c)
        c.compact()
        target = as_held(c.get("p1"))
    daemon.stop()
    # A valid line of the same length, in the part the snapshot stands for.
    line = put_line(target)
    edited = put_line(msgspec.structs.replace(target, meta={**target.meta, "theme": "dusk"}))
    data = daemon.journal_bytes()
    assert len(edited) == len(line) and data.count(line) == 1
    daemon.journal.write_bytes(data.replace(line, edited))
    log = start(daemon)
    assert "INFO snapshot" in log and "is stale" in log and "replaying the journal in full" in log
    assert "replayed" in log
    with daemon.client() as c:
        assert c.get("p1").meta["theme"] == "dusk"


@pytest.mark.parametrize("damage", ["magic", "header", "body", "truncated", "empty"])
def test_a_damaged_snapshot_is_ignored_with_a_warning(daemon: Daemon, damage: str) -> None:
    with daemon.client() as c:
        populate(c)
        c.compact()
        c.create(id="after")
    before = listed(daemon)
    daemon.stop()
    path = snap(daemon)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        _flip(path, {"magic": 3, "header": 24, "body": len(data) - 20}[damage])
    log = start(daemon)
    assert "WARNING snapshot" in log and "replaying the journal in full" in log
    assert f"replayed {journal_lines(daemon)} journal lines" in log
    assert listed(daemon) == before


@pytest.mark.parametrize(
    "step",
    ["compact-written", "compact-synced", "compact-renamed", "snapshot-written",
     "snapshot-renamed"],
)
def test_a_crash_at_each_step_of_a_compaction_keeps_the_state(
    make_daemon: Callable[..., Daemon], step: str
) -> None:
    # The second compaction dies, with the snapshot of the first in place.
    d = make_daemon("--fsync", "always", env={FAILPOINT: f"{step}@2"})
    with d.client() as c:
        populate(c)
        kept = c.compact().sessions
        populate(c, 20, prefix="t")
        # The first line changes: a new journal no longer begins with the
        # bytes the first snapshot stands for.
        c.set("p0", "changed", True)
    before = listed(d)
    assert d.ctl("compact").returncode == 3  # the daemon died under it
    assert d.proc is not None and d.proc.wait(10) == -signal.SIGKILL
    del d.extra_env[FAILPOINT]
    lines = journal_lines(d)
    log = start(d)
    assert not snap_temp(d).exists()
    assert listed(d) == before
    if step in ("compact-written", "compact-synced"):
        # The old journal, and the old snapshot that stands for its head.
        assert from_snapshot(kept, lines - kept) in log
    elif step == "snapshot-renamed":
        assert from_snapshot(len(before), 0) in log
    else:
        assert "is stale" in log and f"replayed {lines} journal lines" in log
    d.restart()
    assert listed(d) == before


@pytest.mark.parametrize("how", ["failpoint", "unwritable"])
def test_a_snapshot_that_cannot_be_written_does_not_fail_the_compaction(
    make_daemon: Callable[..., Daemon], how: str
) -> None:
    d = make_daemon(env={FAILPOINT: "snapshot-error@2"} if how == "failpoint" else {})
    with d.client() as c:
        populate(c)
        c.compact()
        assert snap(d).is_file()
        c.create(id="more")
        if how == "unwritable":
            snap(d).unlink()
            snap(d).mkdir()  # renaming the new snapshot over it fails
        result = c.compact()
    before = listed(d)
    assert result.sessions == len(before)
    log = d.log_text()
    assert f"ERROR snapshot {snap_temp(d)} not written: " in log
    assert ("Input/output error (injected by failpoint)" if how == "failpoint"
            else "Is a directory") in log
    assert not snap_temp(d).exists()
    if how == "failpoint":
        assert not snap(d).exists(), "the old snapshot stood for the replaced journal"
    d.stop()
    log = start(d)
    assert listed(d) == before
    if how == "unwritable":
        assert "WARNING snapshot" in log and "cannot be read" in log
        snap(d).rmdir()
    with d.client() as c:
        c.compact()
    d.stop()
    assert from_snapshot(len(before), 0) in start(d)
    assert listed(d) == before


def test_check_reports_the_snapshot_and_still_judges_the_journal_alone(daemon: Daemon) -> None:
    first = run_sessiond(daemon, "--check")
    assert first.returncode == 0 and "no snapshot" in first.stdout
    with daemon.client() as c:
        populate(c)
        kept = c.compact().sessions
    valid = run_sessiond(daemon, "--check")
    assert valid.returncode == 0, valid.stdout
    assert f"valid, {kept} sessions" in valid.stdout and "healthy" in valid.stdout
    daemon.stop()
    _flip(snap(daemon), 30)
    damaged = run_sessiond(daemon, "--check")
    assert damaged.returncode == 0 and "checksum mismatch in its header" in damaged.stdout
    snap(daemon).write_bytes(b"")
    cut = run_sessiond(daemon, "--check")
    assert cut.returncode == 0 and "cut short" in cut.stdout and "healthy" in cut.stdout


def test_damage_in_the_journal_after_the_snapshot_is_named_by_its_line_in_the_file(
    daemon: Daemon,
) -> None:
    with daemon.client() as c:
        populate(c)
        c.compact()
        for i in range(3):
            c.create(id=f"tail{i}", user="x")
    daemon.stop()
    data = daemon.journal_bytes()
    lines = data.splitlines(keepends=True)
    lines[-2] = lines[-2].replace(b'"user":"x"', b'"user":"y"')
    daemon.journal.write_bytes(b"".join(lines))
    where = f"line {len(lines) - 1} (byte offset {len(data) - len(lines[-1]) - len(lines[-2])})"
    mark = len(daemon.log_text())
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(30) == 1
    assert f"{where} is damaged" in daemon.log_text()[mark:]
    check = run_sessiond(daemon, "--check")
    assert check.returncode == 1 and where in check.stdout


def test_a_torn_line_after_the_snapshot_is_cut_at_start(daemon: Daemon) -> None:
    with daemon.client() as c:
        populate(c)
        kept = c.compact().sessions
        c.create(id="whole")
    before = listed(daemon)
    daemon.kill()
    whole = daemon.journal_bytes()
    # Where the killed daemon's next write would have gone: over its
    # reserved zeros.
    daemon.append_to_journal(put_line(session(1, id="torn"))[:50])
    log = start(daemon)
    assert "torn" in log and from_snapshot(kept, 1) in log
    assert daemon.journal_bytes() == whole
    assert listed(daemon) == before
