"""The file steps of a compaction, each run in a worker thread: write the
records to a temp file and a snapshot, then put both in place.

``Journal.compact`` runs them and keeps the journal's own state; the
failpoints named here let the tests kill the daemon between the steps.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from sessiond import snapshot
from sessiond.diskio import describe, fsync_dir, pwrite_all, sync_data, write_all
from sessiond.failpoints import SNAPSHOT_ERROR, failpoint, failpoints
from sessiond.model import Record
from sessiond.records import put_lines

log = logging.getLogger("sessiond.journal")

# Records are encoded this many per write, and the kernel made to write
# back what has been written each time this many bytes have piled up.
COMPACT_CHUNK = 1024
COMPACT_SYNC_BYTES = 32 << 20


def write_snapshot(
    tmp: Path, slots: Sequence[Record | None], end: int, snap: snapshot.Writer
) -> int:
    """Write the records of ``slots[:end]``, to the journal's temp file
    and to ``snap``; how many there were."""
    if failpoints().hit(SNAPSHOT_ERROR):
        snap.abandon(OSError(errno.EIO, "Input/output error (injected by failpoint)"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    kept = 0
    try:
        unsynced = 0
        for start in range(0, end, COMPACT_CHUNK):
            # One slice: taken at once (the event loop may change the
            # list between two slices, never during one).
            chunk = list(filter(None, slots[start : min(start + COMPACT_CHUNK, end)]))
            kept += len(chunk)
            data = put_lines(chunk)
            write_all(fd, data)
            # The same chunk, while its records are in the cache.
            snap.add(chunk, data)
            unsynced += len(data)
            if unsynced >= COMPACT_SYNC_BYTES:
                # Write back as we go: one fsync of the whole file at the
                # end keeps the kernel busy writing for half a second on
                # a small machine, and the event loop feels it.
                os.fdatasync(fd)
                unsynced = 0
        failpoint("compact-written")
        sync_data(fd)
        failpoint("compact-synced")
    finally:
        os.close(fd)
    snap.seal()
    return kept


def finish(
    path: Path, tmp: Path, tail: bytes, snap: snapshot.Writer
) -> tuple[int, int, OSError | None]:
    """Append ``tail`` (the writes captured meanwhile) to the temp file,
    fsync it and rename it over the journal at ``path``; then the snapshot.
    Returns the new journal's descriptor, its size, and the error of the
    directory fsync if that failed (the renames are done either way)."""
    # Not O_APPEND: it becomes the journal (see ``Journal.open``).
    fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if tail:
            pwrite_all(fd, tail, os.fstat(fd).st_size)
            sync_data(fd)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        raise
    # From here the new file is the journal: whatever happens, switch to it.
    failpoint("compact-renamed")
    # Only now may the snapshot replace the one that stood for the old
    # file (the directory fsync below covers both renames).
    if snap.sealed:
        failpoint("snapshot-written")
    if snap.commit():
        failpoint("snapshot-renamed")
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        return fd, os.fstat(fd).st_size, exc
    return fd, os.fstat(fd).st_size, None


def close_replaced(fd: int) -> None:
    """Close the descriptor of a journal file that compaction replaced (the
    new file holds everything: a failure here loses nothing)."""
    try:
        os.close(fd)
    except OSError as exc:
        log.error("closing the replaced journal failed: %s", describe(exc))


# Sessions whose lines are encoded to estimate a compaction's size.
ESTIMATE_SAMPLE = 256


def compacted_size(slots: Sequence[Record | None], count: int) -> int:
    """About the size of the journal that compacting ``slots`` (holding
    ``count`` records) writes: one line per record, reckoned from the
    lines of up to ``ESTIMATE_SAMPLE`` of them spread evenly over the
    store (all of them, when there are no more: then it is exact)."""
    if not count:
        return 0
    step = max(1, len(slots) // ESTIMATE_SAMPLE)
    sample = [r for r in slots[::step] if r is not None][:ESTIMATE_SAMPLE]
    if not sample:
        return 0
    if len(sample) == count:
        return len(put_lines(sample))
    return round(len(put_lines(sample)) / len(sample) * count)
