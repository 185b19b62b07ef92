"""Fan-out of session changes to ``watch`` clients.

A watcher that reads slowly must never slow the daemon: each has a bounded
queue, and when it is full further events are counted instead of kept; the
watcher then receives one ``lagged`` event saying how many it missed, in the
place where they would have been.
"""

from __future__ import annotations

from collections import deque

import anyio

from sessiond.protocol import Event
from sessiond.store import Change


class Watcher:
    """One ``watch`` client: what it asked for and what it has not read."""

    __slots__ = ("user", "capacity", "queue", "dropped", "dropped_at", "ready")

    def __init__(self, user: str | None, capacity: int) -> None:
        self.user = user
        self.capacity = capacity
        self.queue: deque[Event] = deque()
        self.dropped = 0
        self.dropped_at = 0
        self.ready = anyio.Event()

    def offer(self, event: Event) -> None:
        """Queue ``event``, or count it as dropped when the queue is full.

        Never blocks: the daemon's work must not wait on a slow reader."""
        if len(self.queue) >= self.capacity:
            # The queue only empties through take(), which also emits the
            # marker: so the marker always sits where the dropped events were.
            self.dropped += 1
            self.dropped_at = event.at
        else:
            self.queue.append(event)
        self.ready.set()

    def take(self) -> list[Event]:
        """Everything queued, then the lag marker if events were dropped."""
        items = list(self.queue)
        self.queue.clear()
        if self.dropped:
            items.append(
                Event(kind="lagged", sid=None, at=self.dropped_at, dropped=self.dropped)
            )
            self.dropped = 0
        self.ready = anyio.Event()
        return items


class Hub:
    """Every watcher, and the publishing of changes to those that match."""

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()

    def subscribe(self, user: str | None, capacity: int) -> Watcher:
        watcher = Watcher(user, capacity)
        self.watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def publish(self, changes: list[Change], now: int) -> None:
        if not self.watchers:
            return
        for change in changes:
            record = change.after if change.after is not None else change.before
            session = record.to_session() if record is not None else None
            event = Event(kind=change.kind, sid=change.sid, at=now, session=session)
            user = record.user if record is not None else None
            for watcher in self.watchers:
                if watcher.user is None or watcher.user == user:
                    watcher.offer(event)
