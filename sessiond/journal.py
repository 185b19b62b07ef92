"""The append-only journal's commit path: appends under an fsync policy.

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
* That turn is itself given up while nobody takes it; a commit that does
  not offer it is written and fsynced on the loop at once, acknowledged
  only after that fsync like every other: ``sessiond.grouping``'s rules.
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
  read-only. When it takes writes again is ``sessiond.readonly``'s rules.
* Batches settle in order, written or refused, and replies that may have
  read one wait for it: ``sessiond.settlement``'s rules.
* A compaction rewrites the whole file from memory (``sessiond.compaction``),
  capturing the writes made meanwhile (``sessiond.rewrites``' rules); it is
  what ends read-only mode after a failed fsync.

Its parts, each owned by the ``Journal`` with its own state and figures:
the numbering replies wait on (``sessiond.settlement``), read-only mode
(``sessiond.readonly``), what a compaction needs (``sessiond.rewrites``).
Reading the journal back is ``sessiond.replay``; the file and its reserved
space, ``sessiond.journalfile``; a compaction's file steps,
``sessiond.compaction``; the thread that writes queued groups,
``sessiond.writer``.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.lowlevel
import anyio.to_thread

from sessiond.diskio import WRITE_ERRNOS
from sessiond.errors import JournalError, ReadOnly
from sessiond.failpoints import failpoints
from sessiond.grouping import GroupForming
from sessiond.journalfile import JournalFile
from sessiond.readonly import ReadOnlyMode
from sessiond.rewrites import Rewrites
from sessiond.settlement import Batch, Settlement, Undo
from sessiond.ticks import until_tick
from sessiond.writer import WriterThread

POLICIES = ("always", "everysec", "no")
# Under ``always``, while fsyncs take less than this (on average, lately), a
# commit that offers the group-forming turn and stays alone syncs on the
# event loop; a slower disk sends it to the writer thread. (A commit that
# does not offer the turn syncs on the loop whatever this says.)
INLINE_SYNC_MAX = 0.001


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
        # The data dir this daemon locked (device, inode), set by the
        # daemon: a compaction writes into the directory at ``path``'s
        # parent only while it is that one (``compaction.at_home``).
        self.home: tuple[int, int] | None = None
        self.fsyncs = 0
        self._dirty = False
        # Set when lines start waiting for the everysec syncer's fsync:
        # with none waiting it sleeps on this, not once a second.
        self._dirtied = anyio.Event()
        self._queue: list[Batch] = []
        self._wake = anyio.Event()
        # A group is forming for an fsync on the event loop: commits join it.
        self._forming = False
        # Whether a lone commit offers a turn for others to join its group.
        self._grouping = GroupForming()
        # Seconds an fsync takes, a moving average (see INLINE_SYNC_MAX).
        self.sync_seconds = 0.0
        # _io_lock: one writer of the file at a time. _fd_lock: the fd stays
        # open while a thread fsyncs it. Order: _io_lock, then _fd_lock.
        # fast_acquire: an uncontended acquire need not cost a trip round
        # the event loop (the flusher takes _io_lock for every group).
        self._io_lock = anyio.Lock(fast_acquire=True)
        self._fd_lock = anyio.Lock(fast_acquire=True)
        self._writer = WriterThread()
        # The parts, each with its own state and figures: the numbering
        # that replies wait on, read-only mode, what a compaction needs.
        self.settlement = Settlement()
        self.readonly = ReadOnlyMode(path)
        self.rewrites = Rewrites(self.settlement, self.readonly, self._io_lock, self._fd_lock)

    def open(self, valid_end: int, needs_newline: bool) -> None:
        """Open for appending after replay (``JournalFile.open``). Raises
        ``OSError``."""
        self.file = JournalFile.open(self.path, valid_end, needs_newline)
        self.rewrites.compacted_size = self.file.size

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
            self.file.close(sync=self._dirty and self.readonly.failed is None)
            self.file = None

    def _open_file(self) -> JournalFile:
        if self.file is None:
            raise JournalError(f"{self.path} is not open")
        return self.file

    # -- commit --------------------------------------------------------

    async def commit(self, data: bytes, undo: Undo) -> None:
        """Persist ``data`` per the policy; on failure call ``undo`` and raise
        ``ReadOnly``. Returns when the data may be acknowledged."""
        failed = self.readonly.failed
        if failed is not None:
            undo()
            # Callers may loop on refusals (the expiry timer): never let them
            # spin without giving the event loop back.
            await anyio.lowlevel.checkpoint()
            raise ReadOnly(failed)
        settlement = self.settlement
        seq = settlement.accepted + 1
        settlement.accepted = seq
        if self._idle_for_inline_write():
            file = self._open_file()
            start = file.size
            try:
                file.write_at(data, start)
            except OSError as exc:
                batch = Batch(data, undo, seq, None)
                await self._inline_failed(exc, batch, file, start)
            self._written(data, sync=False)
            settlement.settle(seq)
            return
        if self._sync_alone_now():
            # Nobody has joined a group lately (``sessiond.grouping``): no
            # turn, no queue, no future; written and synced before returning.
            file = self._open_file()
            try:
                self._write_sync(file, data, True, file.size)
            except _DiskError as exc:
                batch = Batch(data, undo, seq, None)
                self._fail(exc.error, exc.what, [batch])
                assert batch.error is not None
                raise batch.error from exc
            self._written(data, sync=True)
            settlement.settle(seq)
            return
        # A bare future, settled once the batch is written or refused: only
        # this task waits on it, and an Event (a list of waiters, a future
        # made per wait) costs more, once per queued commit. Were this task
        # cancelled, the future goes with it; ``Batch.settle`` allows that.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = Batch(data, undo, seq, done)
        self._queue.append(batch)
        if self._forming:
            # A group for an fsync on the loop is forming: its task takes this.
            await done
        elif self.rewrites.held or self._io_lock.locked():
            # A write is on its way to disk: the flusher writes this batch,
            # and all that queue with it, as one group once it is done.
            self._wake.set()
            await done
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
            if not done.done():  # taken by the flusher meanwhile
                await done
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
            and not self.rewrites.held
            and not self._io_lock.locked()
            and not self._fd_lock.locked()
        )

    def _sync_alone_now(self) -> bool:
        """Under ``always``: nothing is on its way to disk, and this commit
        is not to offer a turn for others to join it (asked last: ``offer``
        counts the commits it tells no), however slow the disk: why is
        ``sessiond.grouping``'s."""
        return (
            self.policy == "always"
            and not self._queue
            and not self._forming
            and not self.rewrites.held
            and not self._io_lock.locked()
            and not self._grouping.offer()
        )

    async def _inline_failed(
        self, exc: OSError, batch: Batch, file: JournalFile, start: int
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
            while self._queue and not self.rewrites.held:
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
                        self.settlement.in_flight = group[-1].seq
                        try:
                            await self._writer.run(
                                partial(self._write_sync, file, data, sync, file.size)
                            )
                        finally:
                            self.settlement.in_flight = 0
                except _DiskError as exc:
                    self._fail(exc.error, exc.what, group)
                    return
                self._written(data, sync)
        for b in group:
            b.settle()
        self.settlement.settle(group[-1].seq)

    def _written(self, data: bytes, sync: bool) -> None:
        """Account for a group that is written (and for ``always`` synced)."""
        self._open_file().size += len(data)
        if sync:
            self.fsyncs += 1
            # An fsync of the whole file, or one of these bytes alone when
            # nothing was waiting for one (``_write_sync``).
            self._dirty = False
        elif not self._dirty:
            self._dirty = True
            self._dirtied.set()
        capture = self.rewrites.capture
        if capture is not None:
            # Captured only once written: a refused batch must not reach
            # the compacted file either.
            capture.append(data)

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
        """``everysec``: fsync at most about a second behind the writes (at
        the tick after the first write that waits: ``sessiond.ticks``).
        With nothing written since the last fsync, it sleeps until a write."""
        while True:
            if not self._dirty:
                self._dirtied = anyio.Event()
                await self._dirtied.wait()
            await anyio.sleep(until_tick())
            if self.policy != "everysec" or not self._dirty or self.readonly.failed is not None:
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
        if self._dirty and self.readonly.failed is None and self.file is not None:
            async with self._fd_lock:
                await anyio.to_thread.run_sync(self.file.sync)
                self.fsyncs += 1
            self._dirty = False

    def _fail(self, exc: OSError, what: str, group: list[Batch] | None = None) -> None:
        """Turn read-only; refuse ``group`` (the batches of a failed write;
        None for the background fsync) and every batch queued behind it."""
        refused = (group or []) + self._queue
        self._queue = []
        self.settlement.refuse(refused, self.readonly.enter(exc, what), by_syncer=group is None)
        self.readonly.entered()

    def lost(self, why: str) -> None:
        """The file at ``path`` is no longer the one written (``why``: see
        ``sessiond.datadir``): turn read-only, refusing every batch queued,
        until a compaction writes the whole state to ``path`` again."""
        refused, self._queue = self._queue, []
        # As for the background fsync, a group in the writer thread may yet
        # be written: what is refused here is behind it (``by_syncer``).
        self.settlement.refuse(refused, self.readonly.lose(why), by_syncer=True)
        self.readonly.entered()

    async def try_resume(self) -> bool:
        """Whether writes are accepted, after trying to leave read-only mode
        (``ReadOnlyMode.try_resume``: only a write refused for want of room
        ends without a compaction)."""
        return await self.readonly.try_resume(self._io_lock, self._fd_lock, self._open_file)

    def figures(self) -> dict[str, Any]:
        """The journal's part of ``stats``, its parts' included."""
        return {
            "journal_path": str(self.path),
            "journal_bytes": self.size,
            "fsync": self.policy,
            **self.rewrites.figures(),
            **self.readonly.figures(),
        }

    # -- the commit path's side of a compaction (``sessiond.rewrites``) ----

    def swap(self, fd: int, size: int, syncs: int) -> JournalFile:
        """The rewritten file becomes the journal (inside
        ``Rewrites.holding_writes``); returns the old one, for the caller to
        close off the loop."""
        old, self.file = self._open_file(), JournalFile(self.path, fd, size)
        self.rewrites.compacted_size = size
        self._dirty = False
        self.fsyncs += syncs
        return old

    def end_capture(self) -> None:
        """The compaction is over, done or not: writes go on as before."""
        self.rewrites.end_capture()
        self._wake.set()

    def rewritten(self, seconds: float, freed: bool, dir_error: OSError | None) -> None:
        """A compaction put a whole new file in place (smaller than the old
        one if ``freed``): a read-only journal takes writes again (unless
        the directory's fsync failed, or it was refused room and the
        compaction freed none: ``ReadOnlyMode.rewritten``)."""
        self.rewrites.rewritten(seconds, freed)
        if dir_error is not None:
            self._fail(dir_error, "directory fsync")
