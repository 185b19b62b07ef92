"""A binary snapshot of the compacted journal's records, for a fast start.

The JSONL journal stays the one source of truth. The records compaction
writes to it also go here, as msgpack columns that load several times faster
than JSON lines. The snapshot names the journal bytes it stands for by length
and CRC-32: a start that finds exactly those bytes at the head of the journal
loads the records from here and replays only the lines after them.

Layout (little-endian): magic, u32 format, u32 header length, u32 CRC-32 of
the header, the msgpack ``Header``, zeros up to HEAD_BYTES (the header is
written last, in place); then chunks, each a u32 length and a msgpack
``Chunk``: records as columns. Users, metas and ttls index tables that run
across chunks, timestamps the chunk's own (as ``blocks.read_block`` shares
them within a block), so that equal values load as one shared object.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, repeat
from operator import attrgetter, countOf, itemgetter
from pathlib import Path
from typing import Annotated, TypeVar, cast

import msgspec

from sessiond.diskio import describe, write_all
from sessiond.errors import JournalError
from sessiond.limits import MAX_VERSION
from sessiond.model import EMPTY_META, Record

log = logging.getLogger("sessiond.snapshot")

MAGIC = b"\x89SDSNAP\n"
# 2 added the imported_at column. A format 1 snapshot, without it, loads as
# it always did: no record had an imported_at then.
FORMAT = 2
READS = (1, 2)
HEAD_BYTES = 256
# Indices are 16 bits: the tables start over before they outgrow them, and
# a chunk's own table holds at most 5 timestamps a record, and None.
TABLE_MAX = 1 << 16
CHUNK_MAX = 8192
# Written back as it goes, as compaction does for the journal: one fsync of
# it all at the end keeps a small machine's disk busy for a long moment.
SYNC_BYTES = 32 << 20

_PREFIX = struct.Struct("<8sIII")
_LENGTH = struct.Struct("<I")
_BIG_ENDIAN = sys.byteorder == "big"
_STAMPS = list(map(attrgetter, (
    "expires_at", "created_at", "last_access", "expired_at", "imported_at"
)))
_ID, _USER, _META, _TTL, _VERSION = map(attrgetter, ("id", "user", "meta_json", "ttl", "version"))
T = TypeVar("T")
Index = Annotated[int, msgspec.Meta(ge=0)]
# As the rules bound it: a snapshot with a version outside is damaged (and
# the journal, replayed in full instead, names the line).
Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]


class SnapshotUnusable(JournalError):
    """The snapshot cannot stand for the journal: replay the journal in full."""


class SnapshotStale(SnapshotUnusable):
    """Sound, but of other journal bytes (rewritten, repaired, edited since)
    or of another format version."""


class SnapshotDamaged(SnapshotUnusable):
    """The snapshot file is damaged or cannot be read."""


class Header(msgspec.Struct, array_like=True):
    journal_bytes: int = 0  # the journal prefix it stands for: its length,
    journal_crc: int = 0  # its CRC-32,
    lines: int = 0  # and its lines (replay numbers the lines after it from there)
    count: int = 0  # records
    chunks: int = 0
    body_bytes: int = 0
    body_crc: int = 0


class Chunk(msgspec.Struct, array_like=True, gc=False):
    reset: bool  # empty the running tables first
    users: list[str]  # new entries of the running tables
    metas: list[bytes]
    ttls: list[int]
    stamps: list[int]  # this chunk's timestamps: index 0 is None, 1 the first
    ids: list[str]
    versions: list[Version]
    # Columns: one index for all the records, or u16 indices, one a record.
    user: Index | bytes
    meta: Index | bytes
    ttl: Index | bytes
    expires_at: Index | bytes
    created_at: Index | bytes
    last_access: Index | bytes
    expired_at: Index | bytes
    imported_at: Index | bytes = 0  # absent from format 1: None for all


_header_decoder = msgspec.msgpack.Decoder(Header)
_chunk_decoder = msgspec.msgpack.Decoder(Chunk)


def snapshot_path(journal: Path) -> Path:
    return journal.with_suffix(".snap")


def temp_path(journal: Path) -> Path:
    return journal.with_suffix(".snap.tmp")


def _column(values: list[T], table: dict[T, int], new: list[T]) -> Index | bytes:
    """``values`` as indices into ``table``, first adding the values it
    lacks (to it, and to ``new``, in order)."""
    first = values[0]
    same = countOf(values, first) == len(values)  # common, and cheap to write
    missing = [v for v in ((first,) if same else dict.fromkeys(values)) if v not in table]
    table.update(zip(missing, range(len(table), len(table) + len(missing)), strict=True))
    new += missing
    return table[first] if same else _indices(values, table)


def _indices(values: list[T], table: dict[T, int]) -> Index | bytes:
    """``values`` as indices into ``table``: one for all when they are equal."""
    if countOf(values, values[0]) == len(values):
        return table[values[0]]
    packed = array("H", itemgetter(*values)(table))  # a tuple: there are two values or more
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


class Writer:
    """One compaction's snapshot: written to a temp file beside the journal
    by the worker thread that writes the journal's lines, renamed into place
    once the new journal is.

    Never raises: a failure is logged, the temp file removed, and the
    compaction goes on without a snapshot (the journal holds everything)."""

    def __init__(self, journal: Path) -> None:
        self.path = snapshot_path(journal)
        self.tmp = temp_path(journal)
        self.sealed = False
        self._failed = False
        self._fd = -1
        self._old = -1  # the snapshot replaced, held open until ``release``
        self._head = Header()
        self._unsynced = 0
        self._tables: tuple[dict[str, int], dict[bytes, int], dict[int, int]] = ({}, {}, {})
        self._encode_into = msgspec.msgpack.Encoder().encode_into

    def add(self, records: Sequence[Record], lines: bytes) -> None:
        """Records that have just been written to the journal as ``lines``."""
        if self._failed:
            return
        head = self._head
        head.journal_crc = zlib.crc32(lines, head.journal_crc)
        head.journal_bytes += len(lines)
        head.lines += len(records)  # put_lines writes one line a record
        try:
            self._open()
            for start in range(0, len(records), CHUNK_MAX):
                self._write_chunk(records[start : start + CHUNK_MAX])
        except (OSError, msgspec.EncodeError) as exc:
            self.abandon(exc)

    def _open(self) -> None:
        if self._fd < 0:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            self._fd = os.open(self.tmp, flags, 0o600)
            write_all(self._fd, bytes(HEAD_BYTES))

    def _write_chunk(self, records: Sequence[Record]) -> None:
        n = len(records)
        users, metas, ttls = self._tables
        reset = any(len(table) + n > TABLE_MAX for table in self._tables)
        if reset:
            for table in self._tables:
                table.clear()
        new: tuple[list[str], list[bytes], list[int]] = ([], [], [])
        user = _column(list(map(_USER, records)), users, new[0])
        meta = _column(list(map(_META, records)), metas, new[1])
        ttl = _column(list(map(_TTL, records)), ttls, new[2])
        columns = [list(map(get, records)) for get in _STAMPS]
        # The chunk's own table: built at once (unlike the running tables,
        # it starts empty), in the order of first appearance.
        distinct = dict.fromkeys(chain.from_iterable(columns))
        distinct.pop(None, None)
        stamps: dict[int | None, int] = {None: 0}
        stamps.update(zip(distinct, range(1, len(distinct) + 1), strict=True))
        chunk = Chunk(
            reset, *new, list(cast("dict[int, None]", distinct)), list(map(_ID, records)),
            list(map(_VERSION, records)), user, meta, ttl,
            *(_indices(column, stamps) for column in columns),
        )
        buf = bytearray(_LENGTH.size)
        self._encode_into(chunk, buf, _LENGTH.size)
        _LENGTH.pack_into(buf, 0, len(buf) - _LENGTH.size)
        write_all(self._fd, buf)
        head = self._head
        head.body_crc = zlib.crc32(buf, head.body_crc)
        head.body_bytes += len(buf)
        head.count += n
        head.chunks += 1
        self._unsynced += len(buf)
        if self._unsynced >= SYNC_BYTES:
            os.fdatasync(self._fd)
            self._unsynced = 0

    def seal(self) -> None:
        """Write the header and fsync: the temp file is complete."""
        if self._failed:
            return
        header = msgspec.msgpack.encode(self._head)
        head = _PREFIX.pack(MAGIC, FORMAT, len(header), zlib.crc32(header)) + header
        assert len(head) <= HEAD_BYTES
        try:
            self._open()
            if os.pwrite(self._fd, head, 0) != len(head):
                raise OSError(errno.EIO, "short write of the header")
            os.fsync(self._fd)
            fd, self._fd = self._fd, -1
            os.close(fd)
        except OSError as exc:
            self.abandon(exc)
            return
        self.sealed = True

    def commit(self) -> bool:
        """Rename the sealed temp file over the snapshot (once the journal
        it stands for is in place). Without one, remove the old snapshot: it
        stands for the journal just replaced."""
        try:
            # Freeing a big file's blocks takes the kernel milliseconds: held
            # open, the old one is freed at ``release``, not while the
            # journal holds its writes back for the swap.
            self._old = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not open the old snapshot %s: %s", self.path, describe(exc))
        if self.sealed:
            try:
                os.replace(self.tmp, self.path)
                return True
            except OSError as exc:
                self.abandon(exc)
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("could not remove the stale snapshot %s: %s", self.path, describe(exc))
        return False

    def abandon(self, exc: BaseException) -> None:
        """Give this snapshot up, saying why; the compaction goes on."""
        if not self._failed:
            self._failed = True
            self.sealed = False
            log.error("snapshot %s not written: %s; the journal is complete without it "
                      "(the next start replays it in full)", self.tmp, describe(exc))
        self.discard()

    def release(self) -> None:
        """Let go of the snapshot that ``commit`` replaced."""
        if self._old >= 0:
            fd, self._old = self._old, -1
            try:
                os.close(fd)
            except OSError as exc:
                log.error("closing the old snapshot failed: %s", describe(exc))

    def discard(self) -> None:
        """Close and remove the temp file, unless renamed into place."""
        self.release()
        try:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)
            self.tmp.unlink(missing_ok=True)
        except OSError as exc:
            log.error("could not remove %s: %s", self.tmp, describe(exc))


def load(journal: Path, feed: Callable[[list[Record]], object]) -> Header | None:
    """Hand the snapshot's records to ``feed`` (in one go: the store adopts
    a million faster at once than in parts), in creation order, exactly as
    ``blocks.read_block`` makes them from the lines they stand for; then
    return its header (replay the journal after ``journal_bytes``). ``None``
    when there is no snapshot.

    Raises ``SnapshotStale`` or ``SnapshotDamaged``, having fed nothing,
    when it cannot stand for the journal."""
    path = snapshot_path(journal)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEAD_BYTES:
                raise SnapshotDamaged(f"snapshot {path} is cut short ({size} bytes)")
            snap = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotDamaged(f"snapshot {path} cannot be read: {describe(exc)}") from exc
    try:
        with memoryview(snap) as view:
            header = _header(path, view)
            if size != HEAD_BYTES + header.body_bytes:
                raise SnapshotDamaged(f"snapshot {path} is cut short or extended: {size} "
                                      f"bytes, not {HEAD_BYTES + header.body_bytes}")
            _check_size(path, journal, header.journal_bytes)
            # zlib lets go of the GIL: the journal is checked on the other
            # core while the records are built.
            with ThreadPoolExecutor(1, "sessiond-snapshot") as pool:
                journal_crc = pool.submit(_head_crc, journal, header.journal_bytes)
                if zlib.crc32(view[HEAD_BYTES:]) != header.body_crc:
                    raise SnapshotDamaged(f"snapshot {path}: checksum mismatch in its body")
                records = _records(path, view, header)
                try:
                    crc = journal_crc.result()
                except (OSError, ValueError) as exc:  # ValueError: the journal shrank
                    raise SnapshotDamaged(f"snapshot {path} could not be checked against "
                                          f"the journal: {describe(exc)}") from exc
    finally:
        snap.close()
    if crc != header.journal_crc:
        raise SnapshotStale(f"snapshot {path} is stale: the first {header.journal_bytes} bytes "
                            f"of {journal.name} have changed since it was written")
    feed(records)
    return header


def _check_size(path: Path, journal: Path, size: int) -> None:
    try:
        have = os.stat(journal).st_size
    except OSError as exc:
        raise SnapshotStale(f"snapshot {path} is stale: no journal beside it to "
                            f"stand for ({describe(exc)})") from exc
    if have < size:
        raise SnapshotStale(f"snapshot {path} is stale: it stands for {size} journal bytes, "
                            f"and {journal.name} has {have}")


def _head_crc(journal: Path, size: int) -> int:
    """The CRC-32 of the journal's first ``size`` bytes, read in place."""
    if not size:
        return 0
    with journal.open("rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        return zlib.crc32(m)


def _header(path: Path, view: memoryview) -> Header:
    magic, version, length, crc = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise SnapshotDamaged(f"snapshot {path}: not a sessiond snapshot (bad magic)")
    if version not in READS:
        raise SnapshotStale(f"snapshot {path} has format {version}; this sessiond reads "
                            f"{' and '.join(map(str, READS))}")
    # A copy: an exception must not keep a view of the map (it could not close).
    raw = bytes(view[_PREFIX.size : _PREFIX.size + length])
    if length > HEAD_BYTES - _PREFIX.size or zlib.crc32(raw) != crc:
        raise SnapshotDamaged(f"snapshot {path}: checksum mismatch in its header")
    try:
        return _header_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise SnapshotDamaged(f"snapshot {path}: unreadable header: {exc}") from exc


def _records(path: Path, view: memoryview, header: Header) -> list[Record]:
    users: list[str] = []
    metas: list[bytes] = []
    ttls: list[int] = []
    records: list[Record] = []
    pos, end = HEAD_BYTES, HEAD_BYTES + header.body_bytes
    chunks = 0
    while pos < end:
        try:
            (length,) = _LENGTH.unpack_from(view, pos)
            pos += _LENGTH.size + length
            if pos > end:
                raise ValueError("it runs past the end")
            chunk = _chunk_decoder.decode(view[pos - length : pos])
            if chunk.reset:
                users, metas, ttls = [], [], []
            users += map(sys.intern, chunk.users)
            metas += [EMPTY_META if m == EMPTY_META else m for m in chunk.metas]
            ttls += chunk.ttls
            n = len(chunk.ids)
            if len(chunk.versions) != n:
                raise ValueError("columns of different lengths")
            stamps: list[int | None] = [None, *chunk.stamps]
            records += map(
                Record,
                _values(chunk.expires_at, stamps, n),
                chunk.ids,
                _values(chunk.user, users, n),
                _values(chunk.ttl, ttls, n),
                _values(chunk.meta, metas, n),
                _values(chunk.created_at, stamps, n),
                _values(chunk.last_access, stamps, n),
                _values(chunk.expired_at, stamps, n),
                chunk.versions,
                _values(chunk.imported_at, stamps, n),
            )
        except (msgspec.DecodeError, ValueError, IndexError, struct.error) as exc:
            raise SnapshotDamaged(f"snapshot {path}: chunk {chunks + 1} is damaged: {exc}") from exc
        chunks += 1
    if (len(records), chunks) != (header.count, header.chunks):
        raise SnapshotDamaged(f"snapshot {path} holds {len(records)} records in {chunks} "
                              f"chunks, not {header.count} in {header.chunks} as its header says")
    return records


def _values(column: int | bytes, table: Sequence[T], n: int) -> Iterator[T]:
    if isinstance(column, int):
        return repeat(table[column], n)
    if len(column) != 2 * n:
        raise ValueError("columns of different lengths")
    indices = array("H")
    indices.frombytes(column)
    if _BIG_ENDIAN:
        indices.byteswap()
    return map(table.__getitem__, indices)
