"""The journal's side of a compaction: the writes captured, the hold, the
figures of the rewrites done.

A compaction (``sessiond.compaction.compact``) rewrites the whole file from
memory while the daemon serves. Rules (the journal's part of the
durability contract, ``sessiond.journal``):

* From ``start_capture`` on, every write is captured once written (a
  refused batch never reaches the compacted file), so that the new file's
  last line for each session is its latest state.
* The swap happens while every write is held back (``holding_writes``:
  both of the journal's locks, so no thread writes or syncs the old file
  meanwhile), and only if no write failed since the capture began: the
  records could hold a refused change (``Abandoned``).
* A rewrite in full is what ends read-only mode after a failed fsync
  (``sessiond.readonly``).

The journal owns one ``Rewrites``; it appends to ``capture`` and stays off
the file while ``held``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from sessiond.model import US
from sessiond.readonly import ReadOnlyMode
from sessiond.settlement import Settlement


class Abandoned(Exception):
    """A compaction gave up before touching the journal."""


class Rewrites:
    """The capture and the hold a compaction uses, and its figures."""

    def __init__(
        self,
        settlement: Settlement,
        readonly: ReadOnlyMode,
        io_lock: anyio.Lock,
        fd_lock: anyio.Lock,
    ) -> None:
        self._settlement = settlement
        self._readonly = readonly
        self._io_lock = io_lock
        self._fd_lock = fd_lock
        # What the journal wrote since ``start_capture``; None: no capture.
        self.capture: list[bytes] | None = None
        # Writes are held back: commits queue until ``end_capture``.
        self.held = False
        # One compaction at a time (``sessiond.compaction.compact``).
        self.lock = anyio.Lock()
        self.compacted_size = 0
        self.last_at: float | None = None
        self.last_seconds: float | None = None
        self.count = 0
        # Batches accepted when the last rewrite ended: any since are changes.
        self._accepted_then = 0

    @property
    def changed(self) -> bool:
        """Whether a batch was accepted since the last rewrite."""
        return self._settlement.accepted != self._accepted_then

    def due(self, size: int, growth_percent: int, min_bytes: int) -> bool:
        """Whether the journal, now ``size`` bytes of lines, grew by
        ``growth_percent`` since the last rewrite, to ``min_bytes`` at
        least, and takes writes."""
        grown = size > self.compacted_size * (100 + growth_percent) / 100
        return self._readonly.failed is None and grown and size >= min_bytes

    def figures(self) -> dict[str, Any]:
        """The rewrites' part of ``stats``."""
        at = self.last_at
        return {
            "compacted_bytes": self.compacted_size,
            "last_compaction_at": None if at is None else int(at * US),
            "last_compaction_seconds": self.last_seconds,
            "compactions": self.count,
        }

    def start_capture(self) -> tuple[int, int]:
        """Capture every write from now on, for a compaction: the batches
        accepted so far (the store holds them all, written or not), and the
        count of write errors, which the swap checks has not moved."""
        self.capture = []
        return self._settlement.accepted, self._readonly.write_errors

    @asynccontextmanager
    async def holding_writes(self, errors: int) -> AsyncIterator[bytes]:
        """Hold every write back (both locks: no thread writes or syncs the
        file meanwhile) and give what was captured since ``start_capture``.
        Raises ``Abandoned`` when a write failed since, so that the new file
        could hold refused changes."""
        async with self._io_lock, self._fd_lock:
            if self._readonly.write_errors != errors:
                raise Abandoned(
                    "a journal write failed while compacting, so the snapshot "
                    "may hold refused changes; it will be taken again"
                )
            self.held = True
            tail = b"".join(self.capture or [])
            self.capture = None
            yield tail

    def end_capture(self) -> None:
        """The compaction is over, done or not: nothing held, nothing
        captured (the journal then wakes its flusher)."""
        self.capture = None
        self.held = False

    def rewritten(self, seconds: float, freed: bool) -> None:
        """A whole new file is in place (smaller than the old one if
        ``freed``): read-only mode ends (``ReadOnlyMode.rewritten``), and the
        figures count it."""
        self._accepted_then = self._settlement.accepted
        self._readonly.rewritten(freed)
        self.last_at = time.time()
        self.last_seconds = seconds
        self.count += 1
