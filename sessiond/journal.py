"""The append-only journal: replay, appends under an fsync policy, compaction.

Durability rules:

* A batch is acknowledged only after its bytes are written (``everysec``,
  ``no``) or written and fsynced (``always``). Every fsync runs in a worker
  thread, and so does every write that could wait on the disk: under
  ``everysec`` and ``no`` a batch is copied into the page cache from the
  event loop only while nothing else touches the file (no fsync and no write
  in flight, nothing queued), which costs microseconds where a thread hop
  costs tens; otherwise it queues for the worker. Batches that queue while a
  write is on disk go out together as one write and, for ``always``, one
  fsync (group commit).
* A failed write or fsync is never retried and then acknowledged (after a
  failed fsync the kernel may have dropped the data and marked the pages
  clean): the batches it carried, and every batch queued behind them, are
  reverted in memory (newest first) and refused; the journal turns read-only
  until a compaction writes the whole in-memory state to a fresh file.
* Compaction writes a snapshot to a temp file in a worker thread while the
  daemon keeps serving; whatever is written meanwhile is captured and
  appended to the temp file before it is fsynced and renamed over the journal.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread

from sessiond.errors import JournalError, ReadOnly
from sessiond.model import Session
from sessiond.protocol import CompactResult
from sessiond.records import LineError, decode_line, line_id, put_line

log = logging.getLogger("sessiond.journal")

POLICIES = ("always", "everysec", "no")
TMP_SUFFIX = ".compact.tmp"
FAILPOINT_ENV = "SESSIOND_FAILPOINT"
# Steps where a failpoint kills the daemon with SIGKILL, and the one that
# makes a journal fsync fail with EIO.
KILL_POINTS = ("compact-written", "compact-synced", "compact-renamed")
FSYNC_ERROR = "fsync-error"
Undo = Callable[[], None]
Damage = tuple[int, int, str, "str | None"]  # line, byte offset, reason, session id


class JournalDamaged(JournalError):
    """A complete line before the tail cannot be read."""

    def __init__(self, path: Path, lineno: int, offset: int, reason: str) -> None:
        super().__init__(
            f"{path}: line {lineno} (byte offset {offset}) is damaged: {reason}; "
            f"run 'sessiond --check' for a report or 'sessiond --repair' to drop "
            f"unreadable lines (a backup is kept)"
        )
        self.path, self.lineno, self.offset, self.reason = path, lineno, offset, reason


# -- failpoints (fault injection for tests) ------------------------------


class Failpoints:
    """Parsed ``SESSIOND_FAILPOINT``: comma-separated ``name[@K][:N]``, the
    fault firing from the K-th time the step is reached (default the first),
    N times (default every time). ``fsync-error@3:1`` fails the third fsync
    only."""

    def __init__(self, spec: str) -> None:
        self._skip: dict[str, int] = {}
        self._left: dict[str, int | None] = {}
        self._lock = threading.Lock()  # fsyncs run in several worker threads
        known = KILL_POINTS + (FSYNC_ERROR,)
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            rest, colon, count = item.partition(":")
            name, at, nth = rest.partition("@")
            if name not in known:
                raise JournalError(
                    f"{FAILPOINT_ENV}: unknown failpoint {name!r}; known: {', '.join(known)}"
                )
            for sep, number in ((at, nth), (colon, count)):
                if sep and not (number.isdigit() and int(number) > 0):
                    raise JournalError(
                        f"{FAILPOINT_ENV}: {item!r}: the numbers after '@' and ':' "
                        f"must be positive whole numbers"
                    )
            self._skip[name] = int(nth) - 1 if at else 0
            self._left[name] = int(count) if colon else None

    def hit(self, name: str) -> bool:
        """Whether the named fault fires now (counting this passage)."""
        with self._lock:
            if name not in self._left:
                return False
            if self._skip[name]:
                self._skip[name] -= 1
                return False
            left = self._left[name]
            if left is None:
                return True
            if left == 0:
                return False
            self._left[name] = left - 1
            return True


_failpoints: Failpoints | None = None


def failpoints() -> Failpoints:
    """The failpoints of this process, read from the environment once."""
    global _failpoints
    if _failpoints is None:
        _failpoints = Failpoints(os.environ.get(FAILPOINT_ENV, ""))
    return _failpoints


def failpoint(name: str) -> None:
    """Die here, for real, if the environment names this step."""
    if failpoints().hit(name):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(fd: int) -> None:
    if failpoints().hit(FSYNC_ERROR):
        raise OSError(5, "Input/output error (injected by failpoint)")
    os.fsync(fd)


# -- reading -------------------------------------------------------------


@dataclass
class Scan:
    """What a pass over a journal found."""

    records: int = 0
    valid_end: int = 0
    needs_newline: bool = False
    torn_bytes: int = 0
    damaged: list[Damage] = field(default_factory=list)


def _noop(_: object) -> None:
    return None


def scan(
    path: Path,
    on_put: Callable[[Session], None] = _noop,
    on_delete: Callable[[str], None] = _noop,
    stop_on_damage: bool = True,
    keep: Callable[[bytes], None] | None = None,
) -> Scan:
    """Read every line, feeding puts and deletes to the callbacks.

    A final line with no newline that is not even JSON is a torn write: it
    is reported in ``torn_bytes`` and not fed. Any other unreadable line
    (including one that ``on_put`` refuses with ``LineError``) raises
    ``JournalDamaged``, or with ``stop_on_damage`` false is listed in
    ``damaged``. ``keep`` receives every line that was read, as it was."""
    result = Scan()
    if not path.exists():
        return result
    with path.open("rb") as f:
        _scan_lines(path, f, on_put, on_delete, stop_on_damage, keep, result)
    return result


def _scan_lines(
    path: Path,
    f: io.BufferedIOBase,
    on_put: Callable[[Session], None],
    on_delete: Callable[[str], None],
    stop_on_damage: bool,
    keep: Callable[[bytes], None] | None,
    result: Scan,
) -> None:
    offset = 0
    # Iterating a binary file splits at b"\n" only, the same bytes that end
    # the lines we write: \r and other separators inside garbage stay put.
    for lineno, raw in enumerate(f, 1):
        complete = raw.endswith(b"\n")
        if not raw.strip():
            offset += len(raw)
            result.valid_end = offset
            result.needs_newline = not complete
            if keep is not None:
                keep(raw)
            continue
        try:
            item = decode_line(raw)
            if isinstance(item, str):
                on_delete(item)
            else:
                on_put(item)
        except LineError as exc:
            if not complete and not exc.complete:
                result.torn_bytes = len(raw)
                return
            if stop_on_damage:
                raise JournalDamaged(path, lineno, offset, str(exc)) from exc
            result.damaged.append((lineno, offset, str(exc), line_id(raw)))
            offset += len(raw)
            continue
        result.records += 1
        offset += len(raw)
        result.valid_end = offset
        result.needs_newline = not complete
        if keep is not None:
            keep(raw)


def remove_leftovers(path: Path) -> list[Path]:
    """Delete temp files of a compaction (or repair) that was interrupted."""
    removed = []
    for tmp in path.parent.glob(path.name + "*" + TMP_SUFFIX):
        tmp.unlink()
        removed.append(tmp)
    return removed


def repair(
    path: Path, on_put: Callable[[Session], None] = _noop
) -> tuple[Path, list[Damage]]:
    """Back the journal up, then rewrite it without its unreadable lines.

    ``on_put`` applies the same checks as replay, so that what is kept will
    load. Returns the backup path and the dropped lines (line, offset,
    reason, id); a journal with nothing to drop is backed up but not
    rewritten."""
    if not path.exists():
        raise JournalError(f"there is no journal at {path}: nothing to repair")
    kept: list[bytes] = []
    report = scan(path, on_put, _noop, stop_on_damage=False, keep=kept.append)
    data = path.read_bytes()
    backup = _backup_name(path)
    _write_file(backup, data, exclusive=True)
    _fsync_dir(path.parent)
    dropped = list(report.damaged)
    if report.torn_bytes:
        torn = data[len(data) - report.torn_bytes :]
        dropped.append((
            data.count(b"\n") + 1, len(data) - report.torn_bytes, "torn final line", line_id(torn)
        ))
    if not dropped:
        return backup, dropped
    clean = b"".join(kept)
    if clean and not clean.endswith(b"\n"):
        clean += b"\n"
    tmp = path.with_name(path.name + TMP_SUFFIX)
    _write_file(tmp, clean)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return backup, dropped


def _backup_name(path: Path) -> Path:
    # Never reuse a name: a second repair must not overwrite the first backup,
    # which may be the only copy of what was dropped.
    stamp = time.strftime("%Y%m%dT%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{n}")
    return candidate


def _write_file(path: Path, data: bytes, exclusive: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    return f"{exc.strerror or exc} (errno {exc.errno})"


def iter_damage(report: Scan) -> Iterator[str]:
    for lineno, offset, reason, sid in report.damaged:
        yield f"line {lineno} (byte offset {offset}): {reason}" + (f" [id {sid}]" if sid else "")


# -- writing -------------------------------------------------------------


class _Batch:
    __slots__ = ("data", "undo", "seq", "done", "error")

    def __init__(self, data: bytes, undo: Undo, seq: int) -> None:
        self.data = data
        self.undo = undo
        self.seq = seq
        self.done = anyio.Event()
        self.error: Exception | None = None


class _Abandoned(Exception):
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
        self.fd = -1
        self.size = 0
        self.compacted_size = 0
        self.last_compaction_at: float | None = None
        self.last_compaction_seconds: float | None = None
        self.compactions = 0
        self.write_errors = 0
        self.fsyncs = 0
        self.changed_since_compaction = False
        self.failed: str | None = None
        # Called after a failure, so that the owner can start the compaction
        # that leads out of read-only mode without waiting for its timer.
        self.on_failure: Callable[[], None] | None = None
        self._dirty = False
        self._queue: list[_Batch] = []
        self._wake = anyio.Event()
        self._holding = False
        self._capture: list[bytes] | None = None
        self._seq = 0  # batches accepted
        self._generation = 0  # files this journal has had (compaction swaps)
        self._settled = 0  # highest batch written or refused (they settle in order)
        self._settled_event = anyio.Event()
        # _io_lock: one writer of the file at a time. _fd_lock: the fd stays
        # open while a thread fsyncs it. Order: _io_lock, then _fd_lock.
        self._io_lock = anyio.Lock()
        self._fd_lock = anyio.Lock()
        self._compact_lock = anyio.Lock()

    def open(self, valid_end: int, needs_newline: bool) -> None:
        """Open for appending after replay, cutting a torn tail first."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size > valid_end:
                log.warning(
                    "%s: cutting a torn final line (%d bytes at offset %d) left by a crash",
                    self.path, size - valid_end, valid_end,
                )
                os.ftruncate(fd, valid_end)
                os.fsync(fd)
            if needs_newline:
                _write_all(fd, b"\n")
                os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.compacted_size = self.size

    def append_at_start(self, data: bytes) -> None:
        """Write and fsync before the daemon serves anyone (replay's
        consequences: expiries that fell due while it was down, a legacy
        import). Blocking is fine here: nothing else is running yet."""
        _write_all(self.fd, data)
        _fsync(self.fd)
        self.size += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            if self._dirty and self.failed is None:
                try:
                    _fsync(self.fd)
                except OSError as exc:
                    log.error("final fsync of %s failed: %s", self.path, _describe(exc))
            os.close(self.fd)
            self.fd = -1

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
        self._seq += 1
        batch = _Batch(data, undo, self._seq)
        if self._idle_for_inline_write():
            await self._write_inline(batch)
            return
        self._queue.append(batch)
        self._wake.set()
        await batch.done.wait()
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

    async def _write_inline(self, batch: _Batch) -> None:
        start, generation = self.size, self._generation
        try:
            _write_all(self.fd, batch.data)
        except OSError as exc:
            self._fail(exc, "write", [batch])
            # Cut what did land, off the loop, unless a compaction has
            # replaced the file meanwhile (then it is gone anyway).
            async with self._io_lock:
                if self._generation == generation:
                    await anyio.to_thread.run_sync(_cut, self.fd, start)
            assert batch.error is not None
            raise batch.error from exc
        self.size += len(batch.data)
        self._dirty = True
        if self._capture is not None:
            self._capture.append(batch.data)
        self._settle(batch.seq)

    async def run_flusher(self) -> None:
        """Write queued batches: one write (and for ``always`` one fsync) per
        group of batches that queued while the previous group was on disk."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._queue and not self._holding:
                group, self._queue = self._queue, []
                data = b"".join(b.data for b in group)
                sync = self.policy == "always"
                async with self._io_lock:
                    try:
                        await anyio.to_thread.run_sync(
                            self._write_sync, self.fd, data, sync, self.size
                        )
                    except _DiskError as exc:
                        self._fail(exc.error, exc.what, group)
                        continue
                    self.size += len(data)
                    if sync:
                        self.fsyncs += 1
                    else:
                        self._dirty = True
                    if self._capture is not None:
                        # Captured only once written: a refused batch must not
                        # reach the compacted file either.
                        self._capture.append(data)
                for b in group:
                    b.done.set()
                self._settle(group[-1].seq)

    @staticmethod
    def _write_sync(fd: int, data: bytes, sync: bool, start: int) -> None:
        try:
            _write_all(fd, data)
        except OSError as exc:
            _cut(fd, start)
            raise _DiskError("write", exc) from exc
        if sync:
            try:
                _fsync(fd)
            except OSError as exc:
                _cut(fd, start)
                raise _DiskError("fsync", exc) from exc

    async def run_syncer(self) -> None:
        """``everysec``: fsync at most about a second behind the writes."""
        while True:
            await anyio.sleep(1)
            if self.policy != "everysec" or not self._dirty or self.failed is not None:
                continue
            self._dirty = False
            async with self._fd_lock:
                try:
                    await anyio.to_thread.run_sync(_fsync, self.fd)
                except OSError as exc:
                    # The writes it covered were acknowledged (that is what
                    # everysec means); the compaction that ends read-only
                    # mode writes them again from memory.
                    self._fail(exc, "fsync")
                    continue
                self.fsyncs += 1

    async def sync(self) -> None:
        """Flush everything written so far to disk (shutdown)."""
        if self._dirty and self.failed is None and self.fd >= 0:
            async with self._fd_lock:
                await anyio.to_thread.run_sync(_fsync, self.fd)
                self.fsyncs += 1
            self._dirty = False

    def _settle(self, seq: int) -> None:
        # max: a failure of the background fsync refuses the queue while an
        # older group may still be on its way to disk and settle after it.
        self._settled = max(self._settled, seq)
        event, self._settled_event = self._settled_event, anyio.Event()
        event.set()

    def _fail(self, exc: OSError, what: str, group: list[_Batch] | None = None) -> None:
        self.write_errors += 1
        self.failed = (
            f"journal {what} failed: {_describe(exc)}; writes are refused until the "
            f"journal has been rewritten in full (sessiond retries on its own; "
            f"'sessionctl compact' retries now)"
        )
        log.error("%s: %s", self.path, self.failed)
        refused = (group or []) + self._queue
        self._queue = []
        for b in reversed(refused):
            b.undo()
            b.error = ReadOnly(self.failed)
            b.done.set()
        if refused:
            self._settle(refused[-1].seq)
        if self.on_failure is not None:
            self.on_failure()

    # -- compaction ----------------------------------------------------

    def due_for_compaction(self, growth_percent: int, min_bytes: int) -> bool:
        grown = self.size > self.compacted_size * (100 + growth_percent) / 100
        return self.failed is None and grown and self.size >= min_bytes

    async def compact(self, snapshot: Callable[[], list[Session]]) -> CompactResult:
        """Rewrite the journal as one line per session in ``snapshot()``.

        Raises ``JournalError`` (the journal left as it was) on failure."""
        async with self._compact_lock:
            started = time.monotonic()
            before = self.size
            errors = self.write_errors
            tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
            records = snapshot()
            # The snapshot holds every batch accepted so far, written or not;
            # capture starts at the same instant, so every later write is
            # either in the snapshot or in the capture.
            snapshot_seq = self._seq
            self._capture = []
            try:
                await anyio.to_thread.run_sync(self._write_snapshot, tmp, records)
                # A batch the snapshot holds but that is still unwritten could
                # yet fail and be reverted: wait until each has settled.
                while self._settled < snapshot_seq:
                    await self._settled_event.wait()
                async with self._io_lock, self._fd_lock:
                    if self.write_errors != errors:
                        raise _Abandoned(
                            "a journal write failed while compacting, so the snapshot "
                            "may hold refused changes; it will be taken again"
                        )
                    self._holding = True
                    tail = b"".join(self._capture)
                    self._capture = None
                    fd, size, dir_error = await anyio.to_thread.run_sync(
                        self._finish, tmp, tail
                    )
                    # Swap while both locks are held: no thread uses the old fd.
                    old, self.fd = self.fd, fd
                    self._generation += 1
                    os.close(old)
                    self.size = self.compacted_size = size
                    self._dirty = False
                    self.fsyncs += 2 if tail else 1
            except (OSError, _Abandoned) as exc:
                why = _describe(exc) if isinstance(exc, OSError) else str(exc)
                if isinstance(exc, OSError):
                    self.write_errors += 1
                try:
                    tmp.unlink(missing_ok=True)
                except OSError as unlink_exc:
                    log.error("could not remove %s: %s", tmp, _describe(unlink_exc))
                raise JournalError(f"compaction failed: {why}") from exc
            finally:
                self._capture = None
                self._holding = False
                self._wake.set()
            self.changed_since_compaction = False
            if self.failed is not None:
                log.warning("journal rewritten in full: writes are accepted again")
            self.failed = None
            if dir_error is not None:
                self._fail(dir_error, "directory fsync")
            seconds = time.monotonic() - started
            self.last_compaction_at = time.time()
            self.last_compaction_seconds = seconds
            self.compactions += 1
            log.info(
                "compacted %s: %d -> %d bytes, %d sessions, %.3fs",
                self.path, before, size, len(records), seconds,
            )
            return CompactResult(
                bytes_before=before, bytes_after=size, sessions=len(records), seconds=seconds
            )

    @staticmethod
    def _write_snapshot(tmp: Path, records: list[Session]) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            chunk: list[bytes] = []
            for i, record in enumerate(records, 1):
                chunk.append(put_line(record))
                if i % 4096 == 0:
                    _write_all(fd, b"".join(chunk))
                    chunk.clear()
            _write_all(fd, b"".join(chunk))
            failpoint("compact-written")
            _fsync(fd)
            failpoint("compact-synced")
        finally:
            os.close(fd)

    def _finish(self, tmp: Path, tail: bytes) -> tuple[int, int, OSError | None]:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            if tail:
                _write_all(fd, tail)
                _fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        # From here the new file is the journal: whatever happens, switch to it.
        failpoint("compact-renamed")
        try:
            _fsync_dir(self.path.parent)
        except OSError as exc:
            return fd, os.fstat(fd).st_size, exc
        return fd, os.fstat(fd).st_size, None


def _cut(fd: int, size: int) -> None:
    """Remove the part of a failed write that did land (best effort: if this
    fails too, replay will find a torn tail or the next compaction replaces
    the file)."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        log.error("could not cut a failed write from the journal: %s", _describe(exc))
