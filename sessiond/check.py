"""``sessiond --check`` and ``sessiond --repair``: the journal's health.

``--check`` reads the journal as a start would (judging each line by the
same rules: ``replay.loader``) and reports every damaged line, the torn
tail, the reserved zeros and what a start would make of the snapshot.
``--repair`` takes the data dir's lock, keeps a backup, and rewrites the
journal without its unreadable lines (``replay.repair``).
"""

from __future__ import annotations

from pathlib import Path

from sessiond import paths, snapshot
from sessiond.errors import JournalError, SessionError
from sessiond.replay import iter_damage, loader, repair, scan
from sessiond.store import Store


def _nothing_there(where: paths.Paths, doing: str) -> SessionError | None:
    """Why ``--check`` or ``--repair`` has nothing to work on, if it has
    not: a data dir or a journal that does not exist is not a healthy
    journal, and is most likely a mistyped path."""
    if not where.data_dir.is_dir():
        what = "no such directory" if not where.data_dir.exists() else "not a directory"
        return JournalError(
            f"no data dir at {where.data_dir} ({what}): nothing to {doing}; give the data "
            f"dir of the daemon you mean with --data-dir or SESSIOND_DATA_DIR"
        )
    if not where.journal.exists():
        return JournalError(
            f"no journal at {where.journal}: nothing to {doing} (a daemon that ran with "
            f"this data dir would have left one)"
        )
    if not where.journal.is_file():
        # A FIFO (planted in a data dir of someone else's) would hold the
        # read until its writer closes it: for ever, if they like.
        return JournalError(
            f"{where.journal} is not a regular file, so it is no journal: nothing to {doing}"
        )
    return None


def check(where: paths.Paths) -> int:
    missing = _nothing_there(where, "check")
    if missing is not None:
        raise missing
    store = Store()
    report = scan(where.journal, stop_on_damage=False, load=loader(store))
    print(f"{where.journal}: {report.records} readable lines")
    if report.torn_bytes:
        print(f"torn final line ({report.torn_bytes} bytes): it will be cut at start")
    if report.reserved_bytes:
        # A running daemon's reserve, or what one killed left: not damage.
        print(f"{report.reserved_bytes} zero bytes reserved after the lines: "
              f"a start cuts them, as a clean stop does")
    for line in iter_damage(report):
        print(f"damaged: {line}")
    if report.zeros_at is not None:
        lineno, offset = report.zeros_at
        print(f"line {lineno} (byte offset {offset}) holds zeros: a write that never reached "
              f"the disk (a power cut); --repair cuts the journal there, with every line "
              f"after it (written later)")
    print(snapshot_state(where.journal))
    if report.damaged:
        print(f"{len(report.damaged)} damaged lines: run 'sessiond --repair'")
        return 1
    print("healthy")
    return 0


def snapshot_state(journal_path: Path) -> str:
    """What a start would make of the snapshot (it never decides health:
    the journal holds everything)."""
    try:
        base = snapshot.load(journal_path, _ignore)
    except snapshot.SnapshotUnusable as exc:
        return f"{exc}; the next start ignores it"
    if base is None:
        return f"no snapshot: the next start replays {journal_path.name} in full"
    return (f"snapshot {snapshot.snapshot_path(journal_path)}: valid, {base.count} sessions "
            f"standing for the first {base.lines} lines")


def _ignore(_: object) -> None:
    return None


def do_repair(where: paths.Paths) -> int:
    missing = _nothing_there(where, "repair")
    if missing is not None:
        raise missing
    # As the daemon does before it writes there: a data dir another user
    # can write holds what they put in it (a lock file that is a symlink to
    # a file of ours, which taking the lock would truncate).
    paths.private_dir(where.data_dir)
    lock = paths.lock_data_dir(where.lock)
    try:
        stale = snapshot.snapshot_path(where.journal)
        if where.journal.exists() and stale.exists():
            # Removed before the journal is rewritten: a snapshot must never
            # outlive the bytes it stands for (its checksum would catch it,
            # but nothing should have to).
            stale.unlink()
            print(f"removed the snapshot {stale}: the next compaction writes a new one")
        backup, dropped = repair(where.journal, loader(Store()))
    finally:
        lock.close()
    print(f"backup kept at {backup}")
    ids = sorted({sid for *_, sid in dropped if sid})
    print(f"dropped {len(dropped)} unreadable lines" + (f" (ids: {', '.join(ids)})" if ids else ""))
    for lineno, offset, reason, sid in dropped:
        print(f"  line {lineno} (byte offset {offset}): {reason}" + (f" [id {sid}]" if sid else ""))
    return 0
