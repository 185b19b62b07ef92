"""A heap of deadlines with lazy invalidation.

Refresh, delete and expire do not search the heap: they leave the old entry
behind, and whoever pops it checks it against the live record (the store
does). When stale entries outnumber live ones the heap is rebuilt, so memory
stays proportional to the sessions that can still fall due.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator

Check = Callable[[str, int], bool]


class DeadlineQueue:
    """Deadlines (integer microseconds) keyed by session id."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: int, sid: str) -> None:
        heapq.heappush(self._heap, (deadline, sid))

    def peek(self) -> int | None:
        """The earliest deadline, stale or not; ``None`` when empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int) -> Iterator[tuple[int, str]]:
        """Pop every entry with ``deadline <= now``, earliest first."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)

    def drop_stale_head(self, is_live: Check) -> None:
        """Discard stale entries at the top so ``peek`` tells the truth."""
        heap = self._heap
        while heap and not is_live(heap[0][1], heap[0][0]):
            heapq.heappop(heap)

    def count_due_before(self, limit: int, is_live: Check) -> int:
        """Live entries with ``deadline <= limit`` (walks the heap's prefix)."""
        heap = self._heap
        count = 0
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            deadline, sid = heap[i]
            if deadline > limit:
                continue
            if is_live(sid, deadline):
                count += 1
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    stack.append(child)
        return count

    def needs_rebuild(self, live: int) -> bool:
        return len(self._heap) > 2 * live + 1024

    def rebuild(self, entries: Iterable[tuple[int, str]]) -> None:
        self._heap = list(entries)
        heapq.heapify(self._heap)

