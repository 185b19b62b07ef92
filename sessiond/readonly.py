"""The journal's read-only mode: why writes are refused, and leaving it.

Rules (the journal's part of the durability contract, ``sessiond.journal``):

* A failed write or fsync turns the journal read-only: every commit is
  refused with the message said here, which names what failed and how the
  journal leaves the mode.
* After a failed fsync it stays so until a compaction writes the whole
  in-memory state to a fresh file (PostgreSQL's "fsyncgate": the file's
  pages cannot be trusted).
* After the file was taken from its path while the daemon ran (removed,
  renamed, replaced: ``sessiond.datadir``), likewise until a compaction
  has written the whole state to the path again (``lose``).
* After a write the kernel refused for want of room (ENOSPC, EDQUOT, EFBIG:
  it took none of it, and the file is cut back to its last good size), as
  soon as space can be reserved after the lines again (``try_resume``):
  nothing written before is in doubt, and a disk that filled up and was
  then freed needs no restart. Also after a compaction that made the
  journal smaller; one that freed nothing (every line was live) leaves it
  read-only until there is room: otherwise the next write would fail the
  same way, and start the same compaction, for as long as writes come.

The journal owns one ``ReadOnlyMode``; it refuses and reverts the batches
itself (``Journal._fail``), and asks this part what to say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from sessiond.diskio import WRITE_ERRNOS, describe
from sessiond.journalfile import JournalFile

log = logging.getLogger("sessiond.journal")


class ReadOnlyMode:
    """Whether the journal refuses writes, why, and the failures so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Why writes are refused (the message every refusal carries); None
        # while they are accepted.
        self.failed: str | None = None
        # The failure was a write refused for want of room (see try_resume).
        self._room_failure = False
        # The file was taken from its path while the daemon ran (``lose``).
        self.file_lost = False
        self.write_errors = 0
        # Called after a failure, so that the owner can start the compaction
        # that leads out of read-only mode without waiting for its timer.
        self.on_failure: Callable[[], None] | None = None

    def enter(self, exc: OSError, what: str) -> str:
        """A ``what`` ("write", "fsync", ...) failed with ``exc``: refuse
        writes from now on; returns the message the refusals carry."""
        self.write_errors += 1
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
        return self.failed

    def lose(self, why: str) -> str:
        """The journal's file is no longer at its path (``why``:
        ``sessiond.datadir``): refuse writes until a compaction has written
        the whole state there again; returns the refusals' message."""
        self._room_failure = False
        self.file_lost = True
        self.failed = (
            f"{why}; writes are refused until the journal has been written again in full "
            f"from memory (sessiond retries on its own; 'sessionctl compact' retries now)"
        )
        log.error("%s", self.failed)
        return self.failed

    def figures(self) -> dict[str, Any]:
        """Read-only mode's part of ``stats``."""
        return {"write_errors": self.write_errors, "read_only": self.failed}

    def entered(self) -> None:
        """The batches a failure refused are settled: tell the owner."""
        if self.on_failure is not None:
            self.on_failure()

    async def try_resume(
        self, io_lock: anyio.Lock, fd_lock: anyio.Lock, file: Callable[[], JournalFile]
    ) -> bool:
        """After a write refused for want of room: reserve space after the
        lines of ``file()`` again (holding the journal's two locks) and, if
        there is room now, accept writes again (and log it). Returns whether
        writes are accepted. After any other failure (an fsync) it does
        nothing: only a compaction ends those (``rewritten``)."""
        if self.failed is None:
            return True
        if not self._room_failure:
            return False
        async with io_lock, fd_lock:
            if not self._room_failure or self.failed is None:  # compacted meanwhile
                return self.failed is None
            try:
                reserved = await anyio.to_thread.run_sync(file().reserve_again)
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

    def rewritten(self, freed: bool) -> None:
        """A compaction put a whole new file in place: writes are accepted
        again, unless they were refused for want of room and it ``freed``
        none (then room must be reserved after the new file's lines:
        ``try_resume``)."""
        if self._room_failure and not freed:
            return
        if self.failed is not None:
            log.warning("journal rewritten in full: writes are accepted again")
        self.failed = None
        self._room_failure = False
        self.file_lost = False
