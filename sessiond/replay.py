"""Reading the journal back, and fixing it: replay, damage, repair.

``scan`` feeds the lines to a loader a block at a time, and tells a torn
final line (a write cut short by a crash) from damage; ``repair`` rewrites
the file without its unreadable lines, after a backup; ``remove_leftovers``
deletes what an interrupted compaction or repair left behind.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sessiond import snapshot
from sessiond.blocks import read_block, read_line
from sessiond.diskio import atomic_write, fsync_dir, write_all
from sessiond.errors import JournalError
from sessiond.model import Record, Session
from sessiond.records import LineError, line_id
from sessiond.rules import Rules
from sessiond.store import ReplayRefused, Store

log = logging.getLogger("sessiond")

TMP_SUFFIX = ".compact.tmp"
# Editors on some systems begin a UTF-8 file with one; it is no line.
BOM = b"\xef\xbb\xbf"
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


@dataclass
class Scan:
    """What a pass over a journal found."""

    records: int = 0
    valid_end: int = 0
    needs_newline: bool = False
    torn_bytes: int = 0
    # Zeros that end the file: space the daemon reserved ahead of its writes.
    reserved_bytes: int = 0
    damaged: list[Damage] = field(default_factory=list)
    # The first unreadable line holding zeros (number, offset): where a
    # write was lost to a power cut. With ``cut_at_zeros``, where the tail
    # that ``torn_bytes`` counts begins. None when there is none.
    zeros_at: tuple[int, int] | None = None


Item = Record | Session | str
# Applies items in order. Refusing one (LineError with its ``index``), it
# has applied those before it and none after.
Loader = Callable[[Sequence[Item]], None]
# Lines are read a block at a time: a few thousand lines, decoded and applied
# together, while a block's temporaries still fit in the CPU's caches.
BLOCK_BYTES = 1 << 18


def _noop(_: object) -> None:
    return None


def per_item(
    on_put: Callable[[Record | Session], None], on_delete: Callable[[str], None]
) -> Loader:
    """A loader that hands each item to a callback (which may raise
    ``LineError`` to refuse it)."""

    def load(items: Sequence[Item]) -> None:
        for i, item in enumerate(items):
            try:
                if isinstance(item, str):
                    on_delete(item)
                else:
                    on_put(item)
            except LineError as exc:
                exc.index = i
                raise

    return load


def scan(
    path: Path,
    on_put: Callable[[Record | Session], None] = _noop,
    on_delete: Callable[[str], None] = _noop,
    stop_on_damage: bool = True,
    keep: Callable[[bytes], None] | None = None,
    *,
    load: Loader | None = None,
    start: int = 0,
    lineno: int = 0,
    cut_at_zeros: bool = False,
) -> Scan:
    """Read every line, feeding puts and deletes to ``load`` (or to the
    callbacks), in order; from byte offset ``start`` on (the end of the
    part a snapshot stood for, ``lineno`` lines), when given.

    A put is a ``Record`` when the line is in the form the daemon writes,
    else a ``Session`` for the rules to check (see ``sessiond.records``).
    Zeros that end the file are space reserved ahead of the writes
    (``reserved_bytes``), not lines. A final line with no newline that is
    not even JSON is a torn write: it is reported in ``torn_bytes`` and not
    fed. Any other unreadable line (including one that the loader
    refuses) raises ``JournalDamaged``, or with ``stop_on_damage`` false is
    listed in ``damaged``. ``keep`` receives every line that was read, as
    it was.

    ``cut_at_zeros`` (``repair``): an unreadable line holding zero bytes,
    which the daemon never writes inside a line, is where a write never
    reached the disk (a power cut): that line and every line after it,
    written later and so no more durable, are the torn tail
    (``torn_bytes``, ``zeros_at``), read no further."""
    result = Scan(valid_end=start)
    if not path.exists():
        return result
    reader = _Reader(path, load or per_item(on_put, on_delete), stop_on_damage, keep, result)
    reader.cut_at_zeros = cut_at_zeros
    # Damage after the start is reported as a whole scan would: numbered
    # and placed from the head of the file.
    reader.lineno, reader.offset = lineno, start
    with path.open("rb") as f:
        if not start and f.read(len(BOM)) == BOM:
            # Skipped as the bytes they are: offsets stay those of the file.
            start = reader.offset = result.valid_end = len(BOM)
        size = os.fstat(f.fileno()).st_size
        end = _lines_end(f.fileno(), start, size)
        result.reserved_bytes = size - end
        f.seek(start)
        try:
            reader.run(f, end)
        except _ZerosHere:
            result.zeros_at = (reader.lineno + 1, reader.offset)
            result.torn_bytes = end - reader.offset
    return result


class _ZerosHere(Exception):
    """The line being read holds zeros: the torn tail of a power cut
    begins here (``scan``'s ``cut_at_zeros``)."""


def _lines_end(fd: int, start: int, size: int) -> int:
    """Where the zeros that end the file begin (not before ``start``): the
    space a running daemon reserves after its lines (see
    ``sessiond.journal``). Zeros inside a line, or with data after them,
    are read as they always were: as damage."""
    end = size
    while end > start:
        block = os.pread(fd, min(BLOCK_BYTES, end - start), max(start, end - BLOCK_BYTES))
        kept = len(block.rstrip(b"\0"))
        if kept:
            return end - len(block) + kept
        end -= len(block)
    return end


class _Reader:
    """One pass of ``scan``: whole blocks of lines where it can, a line at a
    time where it must (to say which line is damaged, and how)."""

    def __init__(
        self,
        path: Path,
        load: Loader,
        stop_on_damage: bool,
        keep: Callable[[bytes], None] | None,
        result: Scan,
    ) -> None:
        self.path = path
        self.load = load
        self.stop_on_damage = stop_on_damage
        self.keep = keep
        self.result = result
        self.lineno = 0  # lines before the current one
        self.offset = 0  # bytes before the current line
        self.cut_at_zeros = False

    def run(self, f: io.BufferedIOBase, end: int) -> None:
        """Read the lines from where ``f`` stands up to ``end``."""
        carry = b""
        left = end - f.tell()
        while left > 0:
            chunk = f.read(min(BLOCK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            data = carry + chunk if carry else chunk
            # Iterating a binary file splits at b"\n" only, the same bytes
            # that end the lines we write: \r and other separators inside
            # garbage stay put. So does this.
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                self._block(data[:cut])
        if carry:
            self._one(carry, complete=False)

    def _block(self, block: bytes) -> None:
        """Whole lines (``block`` ends with a newline)."""
        items = read_block(block)
        if items is None:
            for line in block[:-1].split(b"\n"):
                self._one(line, complete=True)
            return
        lines: list[bytes] | None = None  # split only if a line must be named
        start = 0
        while start < len(items):
            try:
                self.load(items[start:] if start else items)
            except LineError as exc:
                if lines is None:
                    lines = block[:-1].split(b"\n")
                bad = start + exc.index
                self._advance(lines, start, bad)
                self._damage(lines[bad] + b"\n", str(exc), exc)
                start = bad + 1
            else:
                break
        if lines is None:
            lines = block[:-1].split(b"\n") if self.keep is not None else []
            self._read(len(items), len(block), lines)
        else:
            self._advance(lines, start, len(lines))

    def _advance(self, lines: list[bytes], start: int, stop: int) -> None:
        """Count lines ``start`` to ``stop`` of a block as read."""
        if start < stop:
            chosen = lines[start:stop]
            self._read(stop - start, sum(map(len, chosen)) + stop - start, chosen)

    def _read(self, count: int, size: int, lines: list[bytes]) -> None:
        """``count`` whole lines of ``size`` bytes were read (``lines``, for
        ``keep``)."""
        self.lineno += count
        self.offset += size
        result = self.result
        result.records += count
        result.valid_end = self.offset
        result.needs_newline = False
        if self.keep is not None:
            for line in lines:
                self.keep(line + b"\n")

    def _damage(self, raw: bytes, reason: str, exc: LineError) -> None:
        """A complete line that cannot be read (or that the loader refused)."""
        if b"\0" in raw:
            if self.cut_at_zeros:
                raise _ZerosHere
            if self.result.zeros_at is None:
                self.result.zeros_at = (self.lineno + 1, self.offset)
        self.lineno += 1
        if self.stop_on_damage:
            raise JournalDamaged(self.path, self.lineno, self.offset, reason) from exc
        self.result.damaged.append((self.lineno, self.offset, reason, line_id(raw)))
        self.offset += len(raw)

    def _one(self, line: bytes, complete: bool) -> bool:
        """One line (without its newline). False when it is a torn tail."""
        raw = line + b"\n" if complete else line
        result = self.result
        if not line.strip():
            self.lineno += 1
            self.offset += len(raw)
            result.valid_end = self.offset
            result.needs_newline = not complete
            if self.keep is not None:
                self.keep(raw)
            return True
        try:
            self.load([read_line(line)])
        except LineError as exc:
            if not complete and not exc.complete:
                result.torn_bytes = len(raw)
                return False
            self._damage(raw, str(exc), exc)
            return True
        self.lineno += 1
        self.offset += len(raw)
        result.records += 1
        result.valid_end = self.offset
        result.needs_newline = not complete
        if self.keep is not None:
            self.keep(raw)
        return True


def remove_leftovers(path: Path) -> list[Path]:
    """Delete temp files of a compaction (or repair) that was interrupted,
    the snapshot's among them."""
    removed = []
    leftovers = list(path.parent.glob(path.name + "*" + TMP_SUFFIX))
    if snapshot.temp_path(path).exists():
        leftovers.append(snapshot.temp_path(path))
    for tmp in leftovers:
        tmp.unlink()
        removed.append(tmp)
    return removed


def repair(path: Path, load: Loader | None = None) -> tuple[Path, list[Damage]]:
    """Back the journal up, then rewrite it without its unreadable lines.

    ``load`` applies the same checks as replay, so that what is kept will
    load. Returns the backup path and the dropped lines (line, offset,
    reason, id); a journal with nothing to drop is backed up but not
    rewritten."""
    if not path.exists():
        raise JournalError(f"there is no journal at {path}: nothing to repair")
    kept: list[bytes] = []
    # Lines after a write lost to a power cut are cut with it, not kept:
    # kept, they would make a state that never was (a later change without
    # an earlier one it may follow from). The backup holds them.
    report = scan(path, stop_on_damage=False, keep=kept.append, load=load, cut_at_zeros=True)
    data = path.read_bytes()
    backup = _backup_name(path)
    _write_new(backup, data)
    fsync_dir(path.parent)
    dropped = list(report.damaged)
    if report.torn_bytes:
        end = len(data) - report.reserved_bytes
        torn = data[end - report.torn_bytes : end]
        if report.zeros_at is None:
            why = "torn final line"
        else:
            lines = torn.count(b"\n") + (not torn.endswith(b"\n"))
            why = (f"zeros where a write never reached the disk (a power cut): cut with "
                   f"what follows, {lines} lines in all, written after it")
        dropped.append((
            data.count(b"\n", 0, end - report.torn_bytes) + 1, end - report.torn_bytes, why,
            line_id(torn),
        ))
    if not dropped:
        return backup, dropped
    clean = b"".join(kept)
    if clean and not clean.endswith(b"\n"):
        clean += b"\n"
    # Named so that ``remove_leftovers`` sweeps it if the repair is cut short.
    atomic_write(path, clean, prefix=path.name + ".", suffix=TMP_SUFFIX)
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


def _write_new(path: Path, data: bytes) -> None:
    """Write a file that must not exist yet (O_EXCL): a backup never
    replaces anything, so it gets no temp file and rename."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_damage(report: Scan) -> Iterator[str]:
    for lineno, offset, reason, sid in report.damaged:
        yield f"line {lineno} (byte offset {offset}): {reason}" + (f" [id {sid}]" if sid else "")


def loader(store: Store) -> Loader:
    """Replay's loader: an item the store refuses counts as a damaged line
    (``--check`` and ``--repair`` use it too, so they judge as replay does)."""
    def load(items: Sequence[Item]) -> None:
        try:
            store.replay(items)
        except ReplayRefused as exc:
            raise LineError(str(exc), index=exc.index) from exc

    return load


def load_snapshot(store: Store, journal_path: Path) -> snapshot.Header | None:
    """Load the records of the snapshot beside the journal into the empty
    ``store``, if it stands for the head of the journal byte for byte.

    ``None`` (saying why, unless there is no snapshot, and having loaded
    nothing) when the journal must be replayed in full."""
    try:
        return snapshot.load(journal_path, store.replay)
    except snapshot.SnapshotStale as exc:
        log.info("%s; replaying the journal in full", exc)
    except snapshot.SnapshotDamaged as exc:
        log.warning("%s; replaying the journal in full", exc)
    return None


def load_store(rules: Rules, journal_path: Path) -> tuple[Store, int, bool]:
    """The store the journal holds (by way of its snapshot where there is a
    sound one), and where the journal's valid part ends."""
    # Replay makes millions of objects and frees few: collections during it
    # would find nothing to free. Afterwards what it built is frozen, so
    # that later full collections do not walk it again and again.
    gc.disable()
    try:
        store = Store(rules)
        base = load_snapshot(store, journal_path)
        start, lines = (base.journal_bytes, base.lines) if base else (0, 0)
        result = scan(journal_path, load=loader(store), start=start, lineno=lines)
    finally:
        gc.enable()
    gc.freeze()
    if result.torn_bytes:
        log.warning("%s: final line is torn (%d bytes): cutting it",
                    journal_path, result.torn_bytes)
    if base is None:
        log.info("replayed %d journal lines: %d sessions", result.records, len(store))
    else:
        log.info(
            "loaded %d sessions from snapshot %s and %d journal lines after it: %d sessions",
            base.count, snapshot.snapshot_path(journal_path).name, result.records, len(store),
        )
    return store, result.valid_end, result.needs_newline
