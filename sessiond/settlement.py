"""The numbering of the journal's batches, which replies wait on.

Rules (the journal's part of the durability contract, ``sessiond.journal``):

* Batches are numbered as they are accepted, from 1 (``accepted``).
* ``settled``: every batch up to this one is written (synced, for
  ``always``) or refused; they settle in order.
* ``failures``: how many failures have refused batches (or turned the
  journal read-only). A reply computed while a batch it may have read was
  unsettled stands only if this has not moved once that batch settles
  (``standing.hold``).
* A batch refused by a failed background fsync while an older group is in
  the writer thread is newer than that group, which may yet be written or
  refused in turn: ``settled`` does not pass that group before it settles,
  and then takes the refused batches with it.

The journal owns one ``Settlement`` and moves it; the dispatcher and a
compaction read it and wait on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from sessiond.errors import ReadOnly

Undo = Callable[[], None]


class Batch:
    """One commit's lines, numbered, and how to take them back."""

    __slots__ = ("data", "undo", "seq", "done", "error")

    def __init__(
        self, data: bytes, undo: Undo, seq: int, done: asyncio.Future[None] | None
    ) -> None:
        self.data = data
        self.undo = undo
        self.seq = seq
        # Settled once written or refused; None for a batch written inline,
        # which nobody waits for (a future costs more than the write).
        self.done = done
        self.error: Exception | None = None

    def settle(self) -> None:
        done = self.done
        # Already done only if its waiter was cancelled (and the future with it).
        if done is not None and not done.done():
            done.set_result(None)


class Settlement:
    """Batches accepted, settled and refused, and the wait for them."""

    __slots__ = ("accepted", "settled", "failures", "in_flight", "_refused_behind", "_waiter")

    def __init__(self) -> None:
        self.accepted = 0
        self.settled = 0
        self.failures = 0
        # The last batch of the group in the writer thread (0: none), and the
        # last batch refused while it was there: see ``refuse``.
        self.in_flight = 0
        self._refused_behind = 0
        self._waiter: anyio.Event | None = None

    @property
    def event(self) -> anyio.Event:
        """Set at the next settlement. Made only when someone waits for one
        (a compaction, replies held back), not for every batch."""
        if self._waiter is None:
            self._waiter = anyio.Event()
        return self._waiter

    async def wait(self, seq: int) -> None:
        """Until every batch up to ``seq`` is written or refused."""
        while self.settled < seq:
            await self.event.wait()

    def settle(self, seq: int) -> None:
        """Every batch up to ``seq`` is written or refused."""
        # Batches refused while an older group was in the writer thread
        # settled then; they count once that group has (see ``refuse``).
        seq = max(seq, self._refused_behind)
        if seq > self.settled:
            self.settled = seq
        event = self._waiter
        if event is not None:
            self._waiter = None
            event.set()

    def refuse(self, batches: list[Batch], message: str, by_syncer: bool) -> None:
        """A failure (of the background fsync, ``by_syncer``, or of the
        write of a group) refuses ``batches``, oldest first: each is
        reverted, newest first, and settles with ``ReadOnly(message)``."""
        self.failures += 1
        for b in reversed(batches):
            b.undo()
            b.error = ReadOnly(message)
            b.settle()
        if not batches:
            return
        seq = batches[-1].seq
        if by_syncer and self.in_flight:
            # The background fsync failed while a group is in the writer
            # thread: what it refused is newer than that group, which may
            # yet be written, or refused in turn. ``settled`` must not
            # pass that group before it settles (then it takes these).
            self._refused_behind = seq
        else:
            self.settle(seq)
