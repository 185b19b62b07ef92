"""The in-memory store's creation order: a table of slots, one per record.

A removed record leaves an empty slot (``None``) until the slots are
packed. Each slot has a creation sequence number, always increasing along
the slots and kept in its record as ``seq``, so that a list cursor, a
change or a revert finds its slot again by bisection even after a packing
moved every slot.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter

from sessiond.errors import InvalidRequest
from sessiond.model import Record

# Removed sessions leave empty slots; they are packed away once they are this
# many and outnumber the live ones, so packing costs O(1) per removal.
PACK_SLACK = 1024
_SEQ = attrgetter("seq")


class Slots:
    """Records in creation order, with the sequence numbers that find them."""

    __slots__ = ("records", "_seqs", "_next_seq", "_unsorted_from", "_reverting")

    def __init__(self) -> None:
        self.records: list[Record | None] = []
        self._seqs = array("q")
        self._next_seq = 0
        # While a revert runs: where records put back out of order begin
        # (they are sorted into place once, when it ends), and packing waits.
        self._unsorted_from: int | None = None
        self._reverting = False

    def __len__(self) -> int:
        """Slots, empty ones included."""
        return len(self.records)

    def live(self) -> Sequence[Record | None]:
        """The records in creation order, ``None`` where one was removed:
        the table's own list, not a copy, for compaction to read a chunk at
        a time while the store goes on changing. (A million-record copy
        would stop the event loop for tens of milliseconds to make, to free,
        and at each pass of the garbage collector.) Read it, never change it.

        The list is only ever changed in place by appending and by replacing
        slots; packing and sorting make a new list and leave this one be."""
        return self.records

    def add(self, record: Record) -> None:
        """A new record, at the end of creation order."""
        record.seq = self._next_seq
        self._next_seq += 1
        self.records.append(record)
        self._seqs.append(record.seq)

    def extend(self, records: Sequence[Record]) -> None:
        """Many new records at the end, numbered without a loop in Python."""
        first = self._next_seq
        self._next_seq += len(records)
        seqs = range(first, self._next_seq)
        deque(map(setattr, records, repeat("seq"), seqs), maxlen=0)
        self.records.extend(records)
        self._seqs.extend(seqs)

    def replace(self, before: Record, after: Record) -> None:
        """``after`` takes the slot of ``before`` (and its sequence number)."""
        after.seq = before.seq
        self.records[self.slot_of(before.seq)] = after

    def put_back(self, record: Record) -> None:
        """A removed record back where its ``seq`` says (during a revert)."""
        end = len(self._seqs) if self._unsorted_from is None else self._unsorted_from
        slot = bisect_left(self._seqs, record.seq, 0, end)
        if slot < end and self._seqs[slot] == record.seq:
            assert self.records[slot] is None
            self.records[slot] = record
            return
        # Its empty slot was packed away since. Inserting in place would cost
        # O(n) per record; append now and sort once when the revert ends.
        if self._unsorted_from is None:
            self._unsorted_from = len(self.records)
        self.records.append(record)
        self._seqs.append(record.seq)

    def clear(self, record: Record, live: int) -> None:
        """Empty ``record``'s slot; ``live`` records are left."""
        self.records[self.slot_of(record.seq)] = None
        if not self._reverting:
            self._maybe_pack(live)

    def slot_of(self, seq: int) -> int:
        seqs = self._seqs
        end = len(seqs) if self._unsorted_from is None else self._unsorted_from
        # Until slots are packed, seqs run without gaps: the slot is the
        # offset from the first, with no search.
        guess = seq - seqs[0] if end else -1
        if 0 <= guess < end and seqs[guess] == seq:
            return guess
        slot = bisect_left(seqs, seq, 0, end)
        if slot < end and seqs[slot] == seq:
            return slot
        # Put back out of order by the revert under way.
        return seqs.index(seq, end)

    def _maybe_pack(self, live: int) -> None:
        dead = len(self.records) - live
        if dead > PACK_SLACK and dead > live:
            self.records = list(filter(None, self.records))
            self._seqs = array("q", map(_SEQ, self.records))

    def begin_revert(self) -> None:
        self._reverting = True

    def end_revert(self, live: int) -> None:
        self._reverting = False
        if self._unsorted_from is not None:
            self._unsorted_from = None
            # Two sorted runs (the slots, then what was put back): timsort
            # merges them in linear time.
            seqs = self._seqs
            order = sorted(range(len(seqs)), key=seqs.__getitem__)
            self._seqs = array("q", [seqs[i] for i in order])
            self.records = [self.records[i] for i in order]
        self._maybe_pack(live)

    def resume(self, cursor: str | None) -> int:
        """The slot after the one a list cursor names (by its sequence
        number, which survives packing; its record may since have been
        removed)."""
        if not cursor:
            return 0
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
            raise InvalidRequest(f"invalid list cursor {cursor!r}")
        return self.after(int(cursor))

    def after(self, seq: int) -> int:
        """The first slot whose sequence number is above ``seq``."""
        return bisect_right(self._seqs, seq)

    def seq_at(self, slot: int) -> int:
        return self._seqs[slot]

    def last_seq(self) -> int:
        """The highest sequence number given so far (-1: none): a record
        made from now on comes after it."""
        return self._next_seq - 1

    def cursor(self, slot: int) -> str | None:
        """The cursor of a page that ended before ``slot`` (``None`` at the end)."""
        return str(self._seqs[slot - 1]) if slot < len(self.records) else None
