"""The append-only journal: replay, appends under an fsync policy, compaction.

Durability rules:

* A batch is acknowledged only after its bytes are written (``everysec``,
  ``no``) or written and fsynced (``always``). Concurrent batches under
  ``always`` share one write and one fsync (group commit).
* A failed write or fsync is never retried and then acknowledged: the batches
  it carried, and every batch queued behind them, are reverted in memory
  (newest first) and refused; the journal turns read-only until a compaction
  writes the whole in-memory state to a fresh file.
* Compaction writes a snapshot to a temp file in a worker thread while the
  daemon keeps serving; whatever is committed meanwhile is captured and
  appended to the temp file before it is fsynced and renamed over the journal.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from sessiond.errors import JournalError, ReadOnly
from sessiond.model import Session
from sessiond.protocol import CompactResult
from sessiond.records import LineError, decode_line, line_id, put_line

log = logging.getLogger("sessiond.journal")

POLICIES = ("always", "everysec", "no")
TMP_SUFFIX = ".compact.tmp"
FAILPOINT_ENV = "SESSIOND_FAILPOINT"
Undo = Callable[[], None]


class JournalDamaged(JournalError):
    """A complete line before the tail cannot be read."""

    def __init__(self, path: Path, lineno: int, offset: int, reason: str) -> None:
        super().__init__(
            f"{path}: line {lineno} (byte offset {offset}) is damaged: {reason}; "
            f"run 'sessiond --check' for a report or 'sessiond --repair' to drop "
            f"unreadable lines (a backup is kept)"
        )
        self.path, self.lineno, self.offset, self.reason = path, lineno, offset, reason


def failpoint(name: str) -> None:
    """Die here, for real, if the environment names this step (tests)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# -- reading -------------------------------------------------------------


@dataclass
class Scan:
    """What a pass over a journal found."""

    records: int = 0
    valid_end: int = 0
    needs_newline: bool = False
    torn_bytes: int = 0
    damaged: list[tuple[int, int, str, str | None]] = field(default_factory=list)


def scan(
    path: Path,
    on_put: Callable[[Session], None],
    on_delete: Callable[[str], None],
    stop_on_damage: bool = True,
) -> Scan:
    """Read every line, feeding puts and deletes to the callbacks.

    A final line with no newline that cannot be read is a torn write: it is
    reported in ``torn_bytes`` and not fed. Any other unreadable line raises
    ``JournalDamaged`` (or, with ``stop_on_damage`` false, is listed in
    ``damaged`` as (line, offset, reason, id))."""
    result = Scan()
    if not path.exists():
        return result
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                offset += len(raw)
                result.valid_end = offset
                continue
            try:
                item = decode_line(raw)
                if isinstance(item, str):
                    on_delete(item)
                else:
                    on_put(item)
            except LineError as exc:
                if not raw.endswith(b"\n"):
                    result.torn_bytes = len(raw)
                    break
                if stop_on_damage:
                    raise JournalDamaged(path, lineno, offset, str(exc)) from exc
                result.damaged.append((lineno, offset, str(exc), line_id(raw)))
                offset += len(raw)
                continue
            result.records += 1
            offset += len(raw)
            result.valid_end = offset
            result.needs_newline = not raw.endswith(b"\n")
    return result


def remove_leftovers(path: Path) -> list[Path]:
    """Delete temp files of a compaction that was interrupted."""
    removed = []
    for tmp in path.parent.glob(path.name + "*" + TMP_SUFFIX):
        tmp.unlink()
        removed.append(tmp)
    return removed


def repair(path: Path) -> tuple[Path, list[tuple[int, int, str, str | None]]]:
    """Back the journal up, then rewrite it without its unreadable lines.

    Returns the backup path and the dropped lines (line, offset, reason, id)."""
    report = scan(path, lambda s: None, lambda s: None, stop_on_damage=False)
    backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%dT%H%M%S')}")
    data = path.read_bytes()
    _write_file(backup, data)
    lines = data.splitlines(keepends=True)
    if report.torn_bytes:
        lines.pop()
        report.damaged.append((len(lines) + 1, report.valid_end, "torn final line", None))
    bad = {lineno for lineno, *_ in report.damaged}
    end = b"".join(line for lineno, line in enumerate(lines, 1) if lineno not in bad)
    if end and not end.endswith(b"\n"):
        end += b"\n"
    tmp = path.with_name(path.name + TMP_SUFFIX)
    _write_file(tmp, end)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return backup, report.damaged


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    return f"{exc.strerror or exc} (errno {exc.errno})"


# -- writing -------------------------------------------------------------


class _Batch:
    __slots__ = ("data", "undo", "done", "error")

    def __init__(self, data: bytes, undo: Undo) -> None:
        self.data = data
        self.undo = undo
        self.done = anyio.Event()
        self.error: Exception | None = None


class Journal:
    """Appends to one journal file. Use from the event loop only."""

    def __init__(self, path: Path, policy: str) -> None:
        if policy not in POLICIES:
            raise JournalError(f"unknown fsync policy {policy!r}: use always, everysec or no")
        self.path = path
        self.policy = policy
        self.fd = -1
        self.size = 0
        self.compacted_size = 0
        self.last_compaction_at: float | None = None
        self.last_compaction_seconds: float | None = None
        self.compactions = 0
        self.write_errors = 0
        self.changed_since_compaction = False
        self.failed: str | None = None
        self._dirty = False
        self._queue: list[_Batch] = []
        self._wake = anyio.Event()
        self._holding = False
        self._capture: list[bytes] | None = None
        self._io_lock = anyio.Lock()
        self._compact_lock = anyio.Lock()

    def open(self, valid_end: int, needs_newline: bool) -> None:
        """Open for appending after replay, cutting a torn tail first."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
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
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.compacted_size = self.size

    def close(self) -> None:
        if self.fd >= 0:
            if self._dirty and self.failed is None:
                try:
                    os.fsync(self.fd)
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
            raise ReadOnly(self.failed)
        self.changed_since_compaction = True
        if self._capture is not None:
            self._capture.append(data)
        if self.policy != "always" and not self._holding and not self._queue:
            # Like Redis: the write lands in the page cache before the reply;
            # only the fsync (the slow, blocking part) runs off the loop.
            start = self.size
            try:
                _write_all(self.fd, data)
            except OSError as exc:
                self._truncate_to(start)
                undo()
                self._fail(exc, "write")
                raise ReadOnly(self.failed or "journal write failed") from exc
            self.size += len(data)
            self._dirty = True
            return
        batch = _Batch(data, undo)
        self._queue.append(batch)
        self._wake.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

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
                start = self.size
                async with self._io_lock:
                    try:
                        await anyio.to_thread.run_sync(self._write_sync, self.fd, data, sync)
                    except OSError as exc:
                        self._truncate_to(start)
                        self._fail(exc, "fsync" if sync else "write", group + self._queue)
                        self._queue = []
                        continue
                self.size += len(data)
                self._dirty = not sync
                for b in group:
                    b.done.set()

    @staticmethod
    def _write_sync(fd: int, data: bytes, sync: bool) -> None:
        _write_all(fd, data)
        if sync:
            if os.environ.get(FAILPOINT_ENV) == "fsync-error":
                raise OSError(5, "Input/output error (injected by failpoint)")
            os.fsync(fd)

    async def run_syncer(self) -> None:
        """``everysec``: fsync at most a second behind the writes."""
        while True:
            await anyio.sleep(1)
            if self._dirty and self.failed is None and self.fd >= 0:
                self._dirty = False
                try:
                    async with self._io_lock:
                        await anyio.to_thread.run_sync(self._fsync_once, self.fd)
                except OSError as exc:
                    self._fail(exc, "fsync")

    @staticmethod
    def _fsync_once(fd: int) -> None:
        if os.environ.get(FAILPOINT_ENV) == "fsync-error":
            raise OSError(5, "Input/output error (injected by failpoint)")
        os.fsync(fd)

    async def sync(self) -> None:
        """Flush everything written so far to disk (shutdown, tests)."""
        if self._dirty and self.failed is None and self.fd >= 0:
            async with self._io_lock:
                await anyio.to_thread.run_sync(os.fsync, self.fd)
            self._dirty = False

    def _truncate_to(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            log.error("could not cut the failed write from %s: %s", self.path, _describe(exc))

    def _fail(self, exc: OSError, what: str, batches: list[_Batch] | None = None) -> None:
        self.write_errors += 1
        self.failed = (
            f"journal {what} failed: {_describe(exc)}; writes are refused until a "
            f"compaction succeeds (free space, then run 'sessionctl compact')"
        )
        log.error("%s: %s", self.path, self.failed)
        for b in reversed(batches or []):
            b.undo()
            b.error = ReadOnly(self.failed)
            b.done.set()

    # -- compaction ----------------------------------------------------

    def due_for_compaction(self, growth_percent: int, min_bytes: int) -> bool:
        grown = self.size > self.compacted_size * (100 + growth_percent) / 100
        return self.failed is None and grown and self.size >= min_bytes

    async def compact(self, snapshot: Callable[[], list[Session]]) -> CompactResult:
        """Rewrite the journal as one line per session in ``snapshot()``."""
        async with self._compact_lock:
            started = time.monotonic()
            before = self.size
            tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
            records = snapshot()
            self._capture = []
            try:
                await anyio.to_thread.run_sync(self._write_snapshot, tmp, records)
                async with self._io_lock:
                    self._holding = True
                    tail = b"".join(self._capture)
                    self._capture = None
                    fd, size, dir_error = await anyio.to_thread.run_sync(
                        self._finish, tmp, tail
                    )
            except OSError as exc:
                self.write_errors += 1
                try:
                    tmp.unlink(missing_ok=True)
                except OSError as unlink_exc:
                    log.error("could not remove %s: %s", tmp, _describe(unlink_exc))
                raise JournalError(f"compaction failed: {_describe(exc)}") from exc
            finally:
                self._capture = None
                self._holding = False
                self._wake.set()
            old, self.fd = self.fd, fd
            os.close(old)
            self.size = self.compacted_size = size
            self._dirty = False
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            chunk: list[bytes] = []
            for i, record in enumerate(records, 1):
                chunk.append(put_line(record))
                if i % 4096 == 0:
                    _write_all(fd, b"".join(chunk))
                    chunk.clear()
            _write_all(fd, b"".join(chunk))
            failpoint("compact-written")
            os.fsync(fd)
            failpoint("compact-synced")
        finally:
            os.close(fd)

    def _finish(self, tmp: Path, tail: bytes) -> tuple[int, int, OSError | None]:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, tail)
            os.fsync(fd)
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


def iter_damage(report: Scan) -> Iterator[str]:
    for lineno, offset, reason, sid in report.damaged:
        yield f"line {lineno} (byte offset {offset}): {reason}" + (f" [id {sid}]" if sid else "")
