"""A heap of deadlines with lazy invalidation.

Refresh, delete and expire do not search the heap: they leave the old entry
behind, and whoever pops it checks it against the live record (the caller
passes that check in as ``is_live``). When stale entries outnumber live ones
the heap is pruned, so memory stays proportional to the sessions that can
still fall due.

The queue knows nothing of clocks: deadlines are plain integers (the store
uses wall-clock microseconds, because they are persisted).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

Check = Callable[[str, int], bool]

# Below this many stale entries pruning is not worth a pass over the heap.
PRUNE_SLACK = 1024


class DeadlineQueue:
    """Deadlines (integers) keyed by session id; stale entries allowed."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def push(self, deadline: int, sid: str) -> None:
        heapq.heappush(self._heap, (deadline, sid))

    def peek(self) -> int | None:
        """The earliest deadline, stale or not; ``None`` when empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int, limit: int | None = None) -> Iterator[tuple[int, str]]:
        """Pop entries with ``deadline <= now``, earliest first, at most
        ``limit`` of them. Entries are popped as the caller iterates, so the
        caller may stop early and leave the rest queued."""
        heap = self._heap
        popped = 0
        while heap and heap[0][0] <= now and (limit is None or popped < limit):
            popped += 1
            yield heapq.heappop(heap)

    def drop_stale_head(self, is_live: Check) -> None:
        """Discard stale entries at the top so ``peek`` tells the truth."""
        heap = self._heap
        while heap and not is_live(heap[0][1], heap[0][0]):
            heapq.heappop(heap)

    def count_due_before(self, limit: int, is_live: Check) -> int:
        """Live entries with ``deadline <= limit``.

        Walks only the part of the heap at or before ``limit``: a node later
        than ``limit`` has no earlier descendants, so its subtree is skipped.
        The cost is proportional to the entries due (live or stale), not to
        the size of the heap. An entry pushed twice with the same deadline
        (a session revived onto its old deadline) is counted once."""
        heap = self._heap
        if not heap or heap[0][0] > limit:
            return 0
        seen: set[tuple[int, str]] = set()
        stack = [0]
        size = len(heap)
        while stack:
            i = stack.pop()
            entry = heap[i]
            if entry[0] > limit:
                continue
            if entry not in seen and is_live(entry[1], entry[0]):
                seen.add(entry)
            left = 2 * i + 1
            if left < size:
                stack.append(left)
                if left + 1 < size:
                    stack.append(left + 1)
        return len(seen)

    def needs_prune(self, live: int) -> bool:
        """True when stale entries outnumber ``live`` ones (by a margin that
        keeps small heaps from being pruned over and over)."""
        return len(self._heap) - live > live + PRUNE_SLACK

    def prune(self, is_live: Check) -> None:
        """Keep only live entries, each once. Linear in the heap's size, so
        pruning only when stale entries outnumber live ones keeps the
        amortised cost of a push constant."""
        self._heap = list({e for e in self._heap if is_live(e[1], e[0])})
        heapq.heapify(self._heap)
