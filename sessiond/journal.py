"""The append-only journal: appends under an fsync policy, compaction.

Durability rules:

* A batch is acknowledged only after its bytes are written (``everysec``,
  ``no``) or written and fsynced (``always``), on the loop or in a thread
  alike.
  Under ``everysec`` and ``no`` a batch is copied into the page cache from
  the event loop only while nothing else touches the file (no fsync and no
  write in flight, nothing queued), which costs microseconds where a thread
  hop costs tens; otherwise it queues for the journal's own writer thread.
  A commit that finds nothing on its way to disk hands its batch to that
  thread itself; batches that queue while a write is on disk go out
  together as one write and, for ``always``, one fsync (group commit).
* Under ``always``, a commit that finds nothing in flight, while fsyncs
  take under ``INLINE_SYNC_MAX`` (lately, on average), first gives the
  connections that are ready one turn of the loop to join it. Alone after
  it, it writes and fsyncs on the event loop, as Redis does: the hand-over
  to the thread and back costs a good part of a fast fsync itself, and a
  stall that short costs less. With company, the group goes to the thread,
  so that the next one forms while it is on disk; and a slower disk sends
  these fsyncs there too, where the next group can form behind them.
* That turn is itself given up while nobody takes it (``sessiond.grouping``:
  after ``LONE_TURNS`` groups of one in a row, only one lone commit in
  ``PROBE_EVERY`` offers it, until a group has company again). A commit
  that does not offer it is written and fsynced on the loop at once, on a
  slow disk too, and acknowledged only after that fsync like every other;
  a failed fsync refuses it as below. With nobody to form a next group the
  thread would only add its two wake-ups, and a reply that may have read
  the commit waits for its fsync wherever it runs (``Dispatcher._hold``);
  what a slow disk costs then is that the loop serves nothing else during
  that fsync (neither does Redis's under ``appendfsync always``).
* The write of a group and its fsync are one system call (pwritev2 with
  RWF_DSYNC, which syncs those bytes as fdatasync would), unless writes
  made under ``everysec`` still wait for theirs: then an fdatasync of the
  whole file follows.
* The file runs ahead of the lines by zeros allocated before the writes
  that fill them, so that an fdatasync need not also commit a new file
  size (``sessiond.journalfile``).
* A failed write or fsync is never retried and then acknowledged (after a
  failed fsync the kernel may have dropped the data and marked the pages
  clean): the batches it carried, and every batch queued behind them, are
  reverted in memory (newest first) and refused; the journal turns
  read-only. After a failed fsync it stays so until a compaction writes the
  whole in-memory state to a fresh file (PostgreSQL's "fsyncgate": the
  file's pages cannot be trusted). After a write the kernel refused for
  want of room (ENOSPC, EDQUOT, EFBIG: it took none of it, and the file is
  cut back to its last good size), also as soon as space can be reserved
  after the lines again (``try_resume``): nothing written before is in
  doubt, and a disk that filled up and was then freed needs no restart.
* A compaction rewrites the whole file from memory (``sessiond.compaction``),
  capturing the writes made meanwhile; it is what ends read-only mode after
  a failed fsync.

Reading the journal back, and repairing it, is ``sessiond.replay``; the
file itself, and its reserved space, ``sessiond.journalfile``; the file
steps of a compaction are ``sessiond.compaction``; the thread that writes
queued groups is ``sessiond.writer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.lowlevel
import anyio.to_thread

from sessiond.diskio import WRITE_ERRNOS, describe
from sessiond.errors import JournalError, ReadOnly
from sessiond.failpoints import failpoints
from sessiond.grouping import GroupForming
from sessiond.journalfile import JournalFile
from sessiond.model import US
from sessiond.writer import WriterThread

log = logging.getLogger("sessiond.journal")

POLICIES = ("always", "everysec", "no")
# Under ``always``, while fsyncs take less than this (on average, lately), a
# commit that offers the group-forming turn and stays alone syncs on the
# event loop; a slower disk sends it to the writer thread. (A commit that
# does not offer the turn syncs on the loop whatever this says.)
INLINE_SYNC_MAX = 0.001
Undo = Callable[[], None]


class _Batch:
    __slots__ = ("data", "undo", "seq", "done", "error")

    def __init__(self, data: bytes, undo: Undo, seq: int, done: asyncio.Event | None) -> None:
        self.data = data
        self.undo = undo
        self.seq = seq
        # Set once written or refused; None for a batch written inline, which
        # nobody waits for (an Event costs more than the write).
        self.done = done
        self.error: Exception | None = None

    def settle(self) -> None:
        if self.done is not None:
            self.done.set()


class Abandoned(Exception):
    """A compaction gave up before touching the journal."""


class _DiskError(Exception):
    """A write or fsync of a batch failed; ``what`` says which."""

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(what)
        self.what = what
        self.error = error


class Journal:
    """Appends to one journal file. Use from the event loop only."""

    def __init__(self, path: Path, policy: str) -> None:
        if policy not in POLICIES:
            raise JournalError(f"unknown fsync policy {policy!r}: use always, everysec or no")
        failpoints()  # a bad SESSIOND_FAILPOINT stops the start, not a later fsync
        self.path = path
        self.policy = policy
        # The file, once open; replaced by each compaction.
        self.file: JournalFile | None = None
        self.compacted_size = 0
        self.last_compaction_at: float | None = None
        self.last_compaction_seconds: float | None = None
        self.compactions = 0
        self.write_errors = 0
        self.fsyncs = 0
        self.changed_since_compaction = False
        self.failed: str | None = None
        # The failure was a write refused for want of room (see try_resume).
        self._room_failure = False
        # Called after a failure, so that the owner can start the compaction
        # that leads out of read-only mode without waiting for its timer.
        self.on_failure: Callable[[], None] | None = None
        self._dirty = False
        self._queue: list[_Batch] = []
        self._wake = anyio.Event()
        self._holding = False
        # A group is forming for an fsync on the event loop: commits join it.
        self._forming = False
        # Whether a lone commit offers a turn for others to join its group.
        self._grouping = GroupForming()
        # Seconds an fsync takes, a moving average (see INLINE_SYNC_MAX).
        self.sync_seconds = 0.0
        self._capture: list[bytes] | None = None
        # Batches are numbered as they are accepted, from 1. ``settled``: every
        # batch up to this one is written (synced, for ``always``) or refused;
        # they settle in order. ``failures``: how many failures have refused
        # batches (or turned the journal read-only). Replies that read the
        # store wait on these: see ``Dispatcher._hold``.
        self.accepted = 0
        self.settled = 0
        self.failures = 0
        self._settled_waiter: anyio.Event | None = None
        # The last batch of the group in the writer thread (0: none), and the
        # last batch refused while it was there: see ``_fail``.
        self._in_flight = 0
        self._refused_behind = 0
        # _io_lock: one writer of the file at a time. _fd_lock: the fd stays
        # open while a thread fsyncs it. Order: _io_lock, then _fd_lock.
        # fast_acquire: an uncontended acquire need not cost a trip round
        # the event loop (the flusher takes _io_lock for every group).
        self._io_lock = anyio.Lock(fast_acquire=True)
        self._fd_lock = anyio.Lock(fast_acquire=True)
        # One compaction at a time (``sessiond.compaction.compact``).
        self.compact_lock = anyio.Lock()
        self._writer = WriterThread()

    def open(self, valid_end: int, needs_newline: bool) -> None:
        """Open for appending after replay (``JournalFile.open``). Raises
        ``OSError``."""
        self.file = JournalFile.open(self.path, valid_end, needs_newline)
        self.compacted_size = self.file.size

    @property
    def size(self) -> int:
        """Bytes of lines: where the next write goes."""
        return 0 if self.file is None else self.file.size

    def append_at_start(self, data: bytes) -> None:
        """Write and fsync before the daemon serves anyone (replay's
        consequences: expiries that fell due while it was down, a legacy
        import). Blocking is fine here: nothing else is running yet."""
        file = self._open_file()
        file.write_at(data, file.size)
        file.sync()
        file.size += len(data)

    def close(self) -> None:
        self._writer.stop()
        if self.file is not None:
            self.file.close(sync=self._dirty and self.failed is None)
            self.file = None

    def _open_file(self) -> JournalFile:
        if self.file is None:
            raise JournalError(f"{self.path} is not open")
        return self.file

    # -- commit --------------------------------------------------------

    async def commit(self, data: bytes, undo: Undo) -> None:
        """Persist ``data`` per the policy; on failure call ``undo`` and raise
        ``ReadOnly``. Returns when the data may be acknowledged."""
        if self.failed is not None:
            undo()
            # Callers may loop on refusals (the expiry timer): never let them
            # spin without giving the event loop back.
            await anyio.lowlevel.checkpoint()
            raise ReadOnly(self.failed)
        self.changed_since_compaction = True
        self.accepted += 1
        if self._idle_for_inline_write():
            file = self._open_file()
            start = file.size
            try:
                file.write_at(data, start)
            except OSError as exc:
                batch = _Batch(data, undo, self.accepted, None)
                await self._inline_failed(exc, batch, file, start)
            self._written(data, sync=False)
            self._settle(self.accepted)
            return
        if self._sync_alone_now():
            # Nobody has joined a group lately (``sessiond.grouping``): no
            # turn, no queue, no Event; written and synced before returning.
            file = self._open_file()
            try:
                self._write_sync(file, data, True, file.size)
            except _DiskError as exc:
                batch = _Batch(data, undo, self.accepted, None)
                self._fail(exc.error, exc.what, [batch])
                assert batch.error is not None
                raise batch.error from exc
            self._written(data, sync=True)
            self._settle(self.accepted)
            return
        # asyncio's own Event: anyio's (the same thing underneath on the
        # asyncio backend) costs ~1 us more to make, once per commit.
        done = asyncio.Event()
        batch = _Batch(data, undo, self.accepted, done)
        self._queue.append(batch)
        if self._forming:
            # A group for an fsync on the loop is forming: its task takes this.
            await done.wait()
        elif self._holding or self._io_lock.locked():
            # A write is on its way to disk: the flusher writes this batch,
            # and all that queue with it, as one group once it is done.
            self._wake.set()
            await done.wait()
        elif self.policy == "always" and self.sync_seconds < INLINE_SYNC_MAX:
            self._forming = True
            try:
                # One turn of the loop: the connections already woken run
                # their requests and join this group.
                await asyncio.sleep(0)
            except BaseException:
                # Cancelled: the group is left for the flusher to write.
                self._wake.set()
                raise
            finally:
                self._forming = False
            if batch in self._queue:
                # Alone, write on the loop; with company, in the thread, so
                # that the next group forms while this one is on disk.
                await self._write_queued(inline=len(self._queue) == 1)
            if not done.is_set():  # taken by the flusher meanwhile
                await done.wait()
        else:
            # Nothing is being written: write the group now, from this task,
            # rather than wake the flusher and then be woken by it.
            await self._write_queued()
        if batch.error is not None:
            raise batch.error

    def _idle_for_inline_write(self) -> bool:
        return (
            self.policy != "always"
            and not self._queue
            and not self._holding
            and not self._io_lock.locked()
            and not self._fd_lock.locked()
        )

    def _sync_alone_now(self) -> bool:
        """Under ``always``: nothing is on its way to disk, and this commit
        is not to offer a turn for others to join it (asked last: ``offer``
        counts the commits it tells no). However slow the disk: the thread
        is there so that the next group forms while one is on disk, and
        nobody has joined one lately; a reply that may have read this
        commit waits for its fsync wherever it runs (``Dispatcher._hold``),
        and the hand-over would add two wake-ups to every commit."""
        return (
            self.policy == "always"
            and not self._queue
            and not self._forming
            and not self._holding
            and not self._io_lock.locked()
            and not self._grouping.offer()
        )

    async def _inline_failed(
        self, exc: OSError, batch: _Batch, file: JournalFile, start: int
    ) -> NoReturn:
        """A write from the loop failed: refuse it, cut what did land, raise."""
        self._fail(exc, "write", [batch])
        # Cut what did land, off the loop, unless a compaction has
        # replaced the file meanwhile (then it is gone anyway).
        async with self._io_lock:
            if self.file is file:
                await anyio.to_thread.run_sync(file.cut, start)
        assert batch.error is not None
        raise batch.error from exc

    async def run_flusher(self) -> None:
        """Write queued batches: one write (and for ``always`` one fsync) per
        group of batches that queued while the previous group was on disk."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._queue and not self._holding:
                await self._write_queued()

    async def _write_queued(self, inline: bool = False) -> None:
        """Write every queued batch as one group: one write, and for
        ``always`` one fsync. Groups are taken in order and written in
        order: each waits for _io_lock, which hands over first come, first
        served."""
        group, self._queue = self._queue, []
        self._grouping.formed(len(group))
        data = b"".join([b.data for b in group])
        sync = self.policy == "always"
        if inline and not self._io_lock.locked():
            # Written and settled with no await in between, so no other
            # writer can start meanwhile: the lock need not be taken. (Its
            # acquire and release cost ~6% of a request under always,
            # measured with the caches as cold as an fsync leaves them.)
            file = self._open_file()
            try:
                self._write_sync(file, data, sync, file.size)
            except _DiskError as exc:
                self._fail(exc.error, exc.what, group)
                return
            self._written(data, sync)
        else:
            async with self._io_lock:
                file = self._open_file()
                try:
                    if inline:
                        self._write_sync(file, data, sync, file.size)
                    else:
                        self._in_flight = group[-1].seq
                        try:
                            await self._writer.run(
                                partial(self._write_sync, file, data, sync, file.size)
                            )
                        finally:
                            self._in_flight = 0
                except _DiskError as exc:
                    self._fail(exc.error, exc.what, group)
                    return
                self._written(data, sync)
        for b in group:
            b.settle()
        self._settle(group[-1].seq)

    def _written(self, data: bytes, sync: bool) -> None:
        """Account for a group that is written (and for ``always`` synced)."""
        self._open_file().size += len(data)
        if sync:
            self.fsyncs += 1
            # An fsync of the whole file, or one of these bytes alone when
            # nothing was waiting for one (``_write_sync``).
            self._dirty = False
        else:
            self._dirty = True
        if self._capture is not None:
            # Captured only once written: a refused batch must not reach
            # the compacted file either.
            self._capture.append(data)

    def _write_sync(self, file: JournalFile, data: bytes, sync: bool, start: int) -> None:
        """Write (and fsync) a group; in the writer thread, or on the loop."""
        if sync and not self._dirty and not self._fd_lock.locked():
            # Nothing written earlier waits for an fsync (the policy was not
            # just switched from everysec, and the everysec syncer is not
            # still at it): syncing these bytes is enough, and one system
            # call does the write and the sync. Otherwise the earlier lines
            # could be lost to a power cut that spares these after them.
            began = time.monotonic()
            try:
                file.write_at(data, start, synced=True)
            except OSError as exc:
                file.cut(start)
                raise _DiskError("write" if exc.errno in WRITE_ERRNOS else "fsync", exc) from exc
            self._sync_took(time.monotonic() - began)
            return
        try:
            file.write_at(data, start)
        except OSError as exc:
            file.cut(start)
            raise _DiskError("write", exc) from exc
        if sync:
            began = time.monotonic()
            try:
                file.sync()
            except OSError as exc:
                file.cut(start)
                raise _DiskError("fsync", exc) from exc
            self._sync_took(time.monotonic() - began)

    def _sync_took(self, seconds: float) -> None:
        # Read on the loop once the write is settled (which orders it).
        self.sync_seconds += (seconds - self.sync_seconds) / 8

    async def run_syncer(self) -> None:
        """``everysec``: fsync at most about a second behind the writes."""
        while True:
            await anyio.sleep(1)
            if self.policy != "everysec" or not self._dirty or self.failed is not None:
                continue
            self._dirty = False
            async with self._fd_lock:
                try:
                    await anyio.to_thread.run_sync(self._open_file().sync)
                except OSError as exc:
                    # The writes it covered were acknowledged (that is what
                    # everysec means); the compaction that ends read-only
                    # mode writes them again from memory.
                    self._fail(exc, "fsync")
                    continue
                self.fsyncs += 1

    async def sync(self) -> None:
        """Flush everything written so far to disk (shutdown)."""
        if self._dirty and self.failed is None and self.file is not None:
            async with self._fd_lock:
                await anyio.to_thread.run_sync(self.file.sync)
                self.fsyncs += 1
            self._dirty = False

    @property
    def settled_event(self) -> anyio.Event:
        """Set at the next settlement. Made only when someone waits for one
        (a compaction, replies held back), not for every batch."""
        if self._settled_waiter is None:
            self._settled_waiter = anyio.Event()
        return self._settled_waiter

    async def wait_settled(self, seq: int) -> None:
        """Until every batch up to ``seq`` is written or refused."""
        while self.settled < seq:
            await self.settled_event.wait()

    def _settle(self, seq: int) -> None:
        # Batches refused while an older group was in the writer thread
        # settled then; they count once that group has (see _fail).
        seq = max(seq, self._refused_behind)
        if seq > self.settled:
            self.settled = seq
        event = self._settled_waiter
        if event is not None:
            self._settled_waiter = None
            event.set()

    def _fail(self, exc: OSError, what: str, group: list[_Batch] | None = None) -> None:
        self.write_errors += 1
        self.failures += 1
        self._room_failure = what == "write" and exc.errno in WRITE_ERRNOS
        if self._room_failure:
            self.failed = (
                f"journal write failed: {describe(exc)}; writes are refused until there "
                f"is room to append again (sessiond checks every second) or the journal "
                f"has been rewritten in full ('sessionctl compact' tries now)"
            )
        else:
            self.failed = (
                f"journal {what} failed: {describe(exc)}; writes are refused until the "
                f"journal has been rewritten in full (sessiond retries on its own; "
                f"'sessionctl compact' retries now)"
            )
        log.error("%s: %s", self.path, self.failed)
        refused = (group or []) + self._queue
        self._queue = []
        for b in reversed(refused):
            b.undo()
            b.error = ReadOnly(self.failed)
            b.settle()
        if refused:
            if group is None and self._in_flight:
                # The background fsync failed while a group is in the writer
                # thread: what it refused is newer than that group, which may
                # yet be written, or refused in turn. ``settled`` must not
                # pass that group before it settles (then it takes these).
                self._refused_behind = refused[-1].seq
            else:
                self._settle(refused[-1].seq)
        if self.on_failure is not None:
            self.on_failure()

    async def try_resume(self) -> bool:
        """After a write refused for want of room: reserve space after the
        lines again and, if there is room now, accept writes again (and log
        it). Returns whether writes are accepted. After any other failure
        (an fsync) it does nothing: only ``compact`` ends those."""
        if self.failed is None:
            return True
        if not self._room_failure:
            return False
        async with self._io_lock, self._fd_lock:
            if not self._room_failure or self.failed is None:  # compacted meanwhile
                return self.failed is None
            try:
                reserved = await anyio.to_thread.run_sync(self._open_file().reserve_again)
            except OSError as exc:
                if exc.errno not in WRITE_ERRNOS:
                    log.error("%s: reserving space to append again failed: %s",
                              self.path, describe(exc))
                return False
            self.failed = None
            self._room_failure = False
        log.warning("%s: there is room to append again (%d bytes reserved after the lines): "
                    "writes are accepted again", self.path, reserved)
        return True

    # -- compaction ----------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The journal's part of ``stats``."""
        at = self.last_compaction_at
        return {
            "journal_path": str(self.path),
            "journal_bytes": self.size,
            "fsync": self.policy,
            "compacted_bytes": self.compacted_size,
            "last_compaction_at": None if at is None else int(at * US),
            "last_compaction_seconds": self.last_compaction_seconds,
            "compactions": self.compactions,
            "write_errors": self.write_errors,
            "read_only": self.failed,
        }

    def due_for_compaction(self, growth_percent: int, min_bytes: int) -> bool:
        grown = self.size > self.compacted_size * (100 + growth_percent) / 100
        return self.failed is None and grown and self.size >= min_bytes

    # -- what a compaction needs (``sessiond.compaction.compact``) ---------

    def start_capture(self) -> tuple[int, int]:
        """Capture every write from now on, for a compaction: the batches
        accepted so far (the store holds them all, written or not), and the
        count of write errors, which the swap checks has not moved."""
        self._capture = []
        return self.accepted, self.write_errors

    @asynccontextmanager
    async def holding_writes(self, errors: int) -> AsyncIterator[bytes]:
        """Hold every write back (both locks: no thread writes or syncs the
        file meanwhile) and give what was captured since ``start_capture``.
        Raises ``Abandoned`` when a write failed since, so that the new file
        could hold refused changes."""
        async with self._io_lock, self._fd_lock:
            if self.write_errors != errors:
                raise Abandoned(
                    "a journal write failed while compacting, so the snapshot "
                    "may hold refused changes; it will be taken again"
                )
            self._holding = True
            tail = b"".join(self._capture or [])
            self._capture = None
            yield tail

    def swap(self, fd: int, size: int, syncs: int) -> JournalFile:
        """The rewritten file becomes the journal (inside ``holding_writes``);
        returns the old one, for the caller to close off the loop."""
        old, self.file = self._open_file(), JournalFile(self.path, fd, size)
        self.compacted_size = size
        self._dirty = False
        self.fsyncs += syncs
        return old

    def end_capture(self) -> None:
        """The compaction is over, done or not: writes go on as before."""
        self._capture = None
        self._holding = False
        self._wake.set()

    def rewritten(self, seconds: float, dir_error: OSError | None) -> None:
        """A compaction put a whole new file in place: a read-only journal
        takes writes again (unless the directory's fsync failed)."""
        self.changed_since_compaction = False
        if self.failed is not None:
            log.warning("journal rewritten in full: writes are accepted again")
        self.failed = None
        self._room_failure = False
        if dir_error is not None:
            self._fail(dir_error, "directory fsync")
        self.last_compaction_at = time.time()
        self.last_compaction_seconds = seconds
        self.compactions += 1
