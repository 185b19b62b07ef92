"""One journal file: its descriptor, where its lines end, and the space
reserved after them.

The file runs ahead of the lines by up to ``RESERVE_BYTES`` of zeros,
allocated before the writes that fill them (``posix_fallocate``): an
fdatasync after a write that grows the file must also commit the new size
and blocks, and one after a write into space already allocated need not.
(PostgreSQL zero-fills its WAL segments, and etcd's wal preallocates its
files, for the same reason.) Replay takes the zeros that end the file for
the reserve (``sessiond.replay``); a clean stop cuts them off, so a stopped
daemon leaves plain JSONL. If space cannot be reserved (a full disk, a file
size limit) the file is appended to without, and that is said once per
file.

The journal (``sessiond.journal``) decides when to write and sync; this
holds the file. A compaction replaces the whole object (``adopt``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sessiond.diskio import (
    WRITE_ERRNOS,
    describe,
    fsync_dir,
    pwrite_all,
    pwrite_synced,
    sync_data,
)

log = logging.getLogger("sessiond.journal")

# Space allocated ahead of the writes. Small: on ext4 a reservation costs
# microseconds whatever its size, but where the filesystem has no fallocate
# glibc writes a byte into every block of it, on the event loop; and a killed
# daemon leaves it behind until its next start.
RESERVE_BYTES = 1 << 20
# The least room that lets a journal refused for want of room take writes
# again (``resume``): a few lines' worth, not the whole reserve.
RESUME_MIN_BYTES = 64 * 1024


class JournalFile:
    """The journal's file, open for writing at the end of its lines.

    Written on the event loop or in the journal's writer thread, never both
    at once (the journal sees to that)."""

    __slots__ = ("path", "fd", "size", "_file_size", "_reserving")

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size  # bytes of lines: where the next write goes
        # The file's size: the lines, then reserved zeros. Not reserving
        # after a failure to, until the next file (compaction) or start.
        self._file_size = size
        self._reserving = True

    @classmethod
    def open(cls, path: Path, valid_end: int, needs_newline: bool) -> JournalFile:
        """Open for appending after replay, cutting what follows the valid
        lines first (a torn final line, which replay reported, and the
        zeros a daemon that did not stop cleanly had reserved). Raises
        ``OSError``."""
        # Not O_APPEND: writes go to ``size``, inside the reserved zeros.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size > valid_end:
                os.ftruncate(fd, valid_end)
            if needs_newline:
                pwrite_all(fd, b"\n", valid_end)
            # Also what a killed daemon wrote and had not synced yet (under
            # everysec): the kernel holds it, but a power cut would lose it
            # behind lines that this daemon syncs, and an ``always`` commit
            # syncs its own bytes only.
            os.fsync(fd)
            # And the file's name, an entry of the directory that the file's
            # own fsync does not make durable: a journal made just now (or by
            # a daemon killed before anything synced its directory) could
            # otherwise vanish in a power cut, with every write acknowledged
            # (synced, under ``always``) into it.
            fsync_dir(path.parent)
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, size)

    def write_at(self, data: bytes, start: int, synced: bool = False) -> None:
        """Write ``data`` at ``start`` (the end of the lines), into reserved
        space, reserving more first where it would run past it; ``synced``,
        as an fdatasync leaves it. Raises ``OSError``; ``size`` is the
        caller's to move once the write counts."""
        end = start + len(data)
        if end > self._file_size and self._reserving:
            try:
                os.posix_fallocate(self.fd, start, len(data) + RESERVE_BYTES)
            except OSError as exc:
                self._reserving = False
                log.warning(
                    "could not reserve space ahead of %s: %s; appending without it "
                    "(each fsync costs more) until the journal is next rewritten",
                    self.path, describe(exc),
                )
            else:
                self._file_size = end + RESERVE_BYTES
        if synced:
            pwrite_synced(self.fd, data, start)
        else:
            pwrite_all(self.fd, data, start)
        if end > self._file_size:
            self._file_size = end

    def sync(self) -> None:
        sync_data(self.fd)

    def cut(self, size: int) -> None:
        """Remove the part of a failed write that did land (best effort: if
        this fails too, replay will find a torn tail or the next compaction
        replaces the file)."""
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            log.error("could not cut a failed write from the journal: %s", describe(exc))

    def reserve_again(self) -> int:
        """Cut whatever follows the lines (a failed write's remains, if its
        cut failed too), then reserve space after them: the whole reserve,
        or at least ``RESUME_MIN_BYTES``. Returns the bytes reserved; raises
        ``OSError`` when there is no room for even that."""
        os.ftruncate(self.fd, self.size)
        try:
            os.posix_fallocate(self.fd, self.size, RESERVE_BYTES)
            reserved = RESERVE_BYTES
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            os.posix_fallocate(self.fd, self.size, RESUME_MIN_BYTES)
            reserved = RESUME_MIN_BYTES
        self._file_size = self.size + reserved
        self._reserving = True
        return reserved

    def close(self, sync: bool) -> None:
        """Cut the reserve off (plain JSONL again: the zeros are for a
        running daemon's fsyncs, and another reader need not know of them),
        fsync if ``sync``, and close. Failures are logged: the next start
        cuts the reserve, and replay judges what is there."""
        try:
            # Asked of the file, not of _file_size: a reservation that failed
            # part way may have left some.
            if os.fstat(self.fd).st_size > self.size:
                os.ftruncate(self.fd, self.size)
        except OSError as exc:
            log.error("cutting the reserved space off %s failed: %s (the next start "
                      "cuts it)", self.path, describe(exc))
        if sync:
            try:
                sync_data(self.fd)
            except OSError as exc:
                log.error("final fsync of %s failed: %s", self.path, describe(exc))
        os.close(self.fd)
        self.fd = -1
