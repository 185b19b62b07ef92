"""Compaction: the journal rewritten as one line per session.

``compact`` writes the store's records to a temp file in a worker thread
while the daemon keeps serving; whatever is written meanwhile is captured
and appended to the temp file before it is fsynced and renamed over the
journal. The same records go to a binary snapshot beside it (``data.snap``,
see ``sessiond.snapshot``), which a start may load instead of the lines
they were written as; it is renamed into place only after the journal. A
crash at any step loses no acknowledged write. The file steps each run in
a worker thread; the failpoints named here let the tests kill the daemon
between them.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from sessiond import snapshot
from sessiond.diskio import describe, fsync_dir, pwrite_all, sync_data, write_all
from sessiond.errors import JournalError
from sessiond.failpoints import SNAPSHOT_ERROR, failpoint, failpoints
from sessiond.journal import Journal
from sessiond.model import Record
from sessiond.protocol import CompactResult
from sessiond.records import put_lines
from sessiond.replay import TMP_SUFFIX
from sessiond.rewrites import Abandoned

log = logging.getLogger("sessiond.journal")

# Records are encoded this many per write, and the kernel made to write
# back what has been written each time this many bytes have piled up.
COMPACT_CHUNK = 1024
COMPACT_SYNC_BYTES = 32 << 20


async def compact(journal: Journal, slots: Callable[[], Sequence[Record | None]]) -> CompactResult:
    """Rewrite ``journal`` as one line per record in ``slots()`` (the
    store's own list, ``Store.live_slots``).

    The list is not copied: it is read a chunk at a time, off the event
    loop, while the store goes on changing, so a chunk may show a record
    older or newer than the moment compaction began. Every write since that
    moment is captured and appended after the records, so each session's
    last line in the new file is its latest state; a write that fails
    meanwhile abandons the compaction.

    The records are also written as a binary snapshot that stands for the
    new file up to its captured writes; a snapshot that cannot be written
    is logged, and no reason to fail.

    Raises ``JournalError`` (the journal left as it was) on failure."""
    path = journal.path
    rewrites = journal.rewrites
    async with rewrites.lock:
        started = time.monotonic()
        before = journal.size
        tmp = path.with_name(path.name + TMP_SUFFIX)
        snap = snapshot.Writer(path)
        records = slots()
        # The records hold every batch accepted so far, written or not;
        # capture starts at the same instant, so every later write is in the
        # capture (and perhaps in the records too).
        accepted, errors = rewrites.start_capture()
        try:
            at_home(path, journal.home)
            kept = await anyio.to_thread.run_sync(
                write_snapshot, tmp, records, len(records), snap
            )
            # A batch the snapshot holds but that is still unwritten could yet
            # fail and be reverted: wait until each has settled.
            await journal.settlement.wait(accepted)
            async with rewrites.holding_writes(errors) as tail:
                fd, size, dir_error = await anyio.to_thread.run_sync(
                    finish, path, tmp, tail, snap, journal.home
                )
                # Swapped while the writes are held: no thread uses the old fd.
                old = journal.swap(fd, size, 2 if tail else 1)
            # The old journal's last descriptor (and the old snapshot's):
            # closing it frees the whole replaced file, which takes the kernel
            # a long moment for a big one. Not on the event loop; and
            # shielded, so that a cancel cannot skip what follows.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close_replaced, old.fd)
                await anyio.to_thread.run_sync(snap.release)
        except Elsewhere as exc:
            # Nothing of ours is there to remove (another daemon's may be).
            raise JournalError(f"compaction failed: {exc}") from exc
        except (OSError, Abandoned) as exc:
            why = describe(exc) if isinstance(exc, OSError) else str(exc)
            if isinstance(exc, OSError):
                journal.readonly.write_errors += 1
            try:
                tmp.unlink(missing_ok=True)
            except OSError as unlink_exc:
                log.error("could not remove %s: %s", tmp, describe(unlink_exc))
            raise JournalError(f"compaction failed: {why}") from exc
        finally:
            journal.end_capture()
            # A snapshot temp file that was not renamed into place (the thread
            # that wrote it is done: to_thread waits for it).
            snap.discard()
        seconds = time.monotonic() - started
        journal.rewritten(seconds, size < before, dir_error)
        log.info("compacted %s: %d -> %d bytes, %d sessions, %.3fs",
                 path, before, size, kept, seconds)
        if journal.readonly.failed is not None and not await journal.try_resume():
            log.warning("%s: rewritten in full, which freed no room to append: writes stay "
                        "refused", path)
        return CompactResult(bytes_before=before, bytes_after=size, sessions=kept, seconds=seconds)


class Elsewhere(Exception):
    """The data dir at the journal's path is not the one this daemon locked."""


def at_home(path: Path, home: tuple[int, int] | None) -> None:
    """Raises ``Elsewhere`` unless the directory of ``path`` is the data
    dir locked (``home``; ``None``: not known, taken as it): one moved
    away while the daemon ran, and another made at its path (by another
    daemon, perhaps, which holds that one), must not get this daemon's
    files. ``sessiond.datadir`` refuses writes meanwhile."""
    if home is None:
        return
    try:
        st = os.stat(path.parent)
    except OSError as exc:
        raise Elsewhere(f"data dir {path.parent}: {describe(exc)}") from exc
    if (st.st_dev, st.st_ino) != home:
        raise Elsewhere(f"data dir {path.parent} is no longer the directory this daemon "
                        f"locked (moved away, or replaced)")


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
    path: Path, tmp: Path, tail: bytes, snap: snapshot.Writer, home: tuple[int, int] | None
) -> tuple[int, int, OSError | None]:
    """Append ``tail`` (the writes captured meanwhile) to the temp file,
    fsync it and rename it over the journal at ``path``; then the snapshot.
    Returns the new journal's descriptor, its size, and the error of the
    directory fsync if that failed (the renames are done either way).
    Raises ``Elsewhere`` when the data dir is no longer ``home``."""
    # Asked again: the directory could have moved while the records were
    # written (and ``tmp`` would now name a file in another's).
    at_home(path, home)
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


# An automatic compaction starts only with this many times the rewritten
# journal's lines free on its filesystem: the new journal, its snapshot
# (about half as big), and room left over for the appends meanwhile. One
# that started short of it failed with the disk full, after its temp files
# had taken the room the appends needed.
ROOM_FACTOR = 2


def room_short(path: Path, need: int) -> str | None:
    """Why the filesystem of the journal at ``path`` lacks the room a
    rewrite of about ``need`` bytes of lines takes (``None``: it has it).
    Raises ``OSError``."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    want = need * ROOM_FACTOR
    if free >= want:
        return None
    return (f"it needs about {want} bytes free (the new journal and its snapshot, and "
            f"room for the appends meanwhile), and {free} are")
