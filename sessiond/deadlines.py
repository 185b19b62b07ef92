"""A heap of deadlines with lazy invalidation.

Refresh, delete and expire do not search the heap: they leave the old entry
behind, and whoever pops it checks it against the live record (the caller
passes that check in as ``is_live``). When stale entries outnumber live ones
the heap is pruned, so memory stays proportional to the sessions that can
still fall due.

Entries are any objects that order by their deadline first: ``(deadline,
id)`` pairs, or the store's records themselves (which saves an entry object
per session). The queue reads an entry's deadline and id through the two
functions it is given.

Many entries at once (a replay) are not heapified each time: they wait
unordered beside the heap, with their earliest deadline known, and join it
in one O(n) heapify only when something needs them in order.

The queue knows nothing of clocks: deadlines are plain integers (the store
uses wall-clock microseconds, because they are persisted).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

Check = Callable[[str, int], bool]
E = TypeVar("E", bound="SupportsRichComparison")

# Below this many stale entries pruning is not worth a pass over the heap.
PRUNE_SLACK = 1024


class Queue(Generic[E]):
    """Deadline-ordered entries keyed by session id; stale entries allowed."""

    __slots__ = ("_heap", "_waiting", "_waiting_min", "_deadline", "_ident")

    def __init__(self, deadline: Callable[[E], int], ident: Callable[[E], str]) -> None:
        self._heap: list[E] = []
        self._waiting: list[E] = []  # added in bulk, not yet in heap order
        self._waiting_min: int | None = None
        self._deadline = deadline
        self._ident = ident

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap) + len(self._waiting)

    def add(self, entry: E) -> None:
        heapq.heappush(self._heap, entry)

    def add_many(self, entries: list[E]) -> None:
        """Queue many entries at the cost of a list extend."""
        if not entries:
            return
        low = min(map(self._deadline, entries))
        if self._waiting_min is None or low < self._waiting_min:
            self._waiting_min = low
        self._waiting.extend(entries)

    def _order(self, before: int | None = None) -> None:
        """Heapify the waiting entries in, if any is due by ``before``
        (``None``: whatever their deadlines)."""
        low = self._waiting_min
        if low is None or (before is not None and low > before):
            return
        self._heap.extend(self._waiting)
        heapq.heapify(self._heap)
        self._waiting = []
        self._waiting_min = None

    def peek(self) -> int | None:
        """The earliest deadline, stale or not; ``None`` when empty. (Early
        rather than late when entries wait: their earliest deadline.)"""
        head = self._deadline(self._heap[0]) if self._heap else None
        low = self._waiting_min
        if low is not None and (head is None or low < head):
            return low
        return head

    def pop_due(self, now: int, limit: int | None = None) -> Iterator[E]:
        """Pop entries with ``deadline <= now``, earliest first, at most
        ``limit`` of them. Entries are popped as the caller iterates, so the
        caller may stop early and leave the rest queued."""
        self._order(now)
        heap = self._heap
        deadline = self._deadline
        popped = 0
        while heap and deadline(heap[0]) <= now and (limit is None or popped < limit):
            popped += 1
            yield heapq.heappop(heap)

    def drop_stale_head(self, is_live: Check) -> None:
        """Discard stale entries at the top so ``peek`` tells the truth
        (about the heap; waiting entries only bound it from below)."""
        heap = self._heap
        deadline, ident = self._deadline, self._ident
        while heap and not is_live(ident(heap[0]), deadline(heap[0])):
            heapq.heappop(heap)

    def count_due_before(self, limit: int, is_live: Check) -> int:
        """Live entries with ``deadline <= limit``.

        Walks only the part of the heap at or before ``limit``: a node later
        than ``limit`` has no earlier descendants, so its subtree is skipped.
        The cost is proportional to the entries due (live or stale), not to
        the size of the heap. An entry pushed twice with the same deadline
        (a session revived onto its old deadline) is counted once."""
        self._order(limit)
        heap = self._heap
        deadline, ident = self._deadline, self._ident
        if not heap or deadline(heap[0]) > limit:
            return 0
        seen: set[tuple[int, str]] = set()
        stack = [0]
        size = len(heap)
        while stack:
            i = stack.pop()
            entry = heap[i]
            due = deadline(entry)
            if due > limit:
                continue
            key = (due, ident(entry))
            if key not in seen and is_live(key[1], due):
                seen.add(key)
            left = 2 * i + 1
            if left < size:
                stack.append(left)
                if left + 1 < size:
                    stack.append(left + 1)
        return len(seen)

    def needs_prune(self, live: int) -> bool:
        """True when stale entries outnumber ``live`` ones (by a margin that
        keeps small heaps from being pruned over and over)."""
        return len(self) - live > live + PRUNE_SLACK

    def prune(self, is_live: Check) -> None:
        """Keep only live entries, each once. Linear in the heap's size, so
        pruning only when stale entries outnumber live ones keeps the
        amortised cost of a push constant."""
        self._order()
        deadline, ident = self._deadline, self._ident
        kept: dict[tuple[int, str], E] = {}
        for entry in self._heap:
            key = (deadline(entry), ident(entry))
            if key not in kept and is_live(key[1], key[0]):
                kept[key] = entry
        self._heap = list(kept.values())
        heapq.heapify(self._heap)


_first: Callable[[Any], int] = itemgetter(0)
_second: Callable[[Any], str] = itemgetter(1)


class DeadlineQueue(Queue[tuple[int, str]]):
    """Deadlines (integers) keyed by session id, as ``(deadline, id)``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(_first, _second)

    def push(self, deadline: int, sid: str) -> None:
        self.add((deadline, sid))
