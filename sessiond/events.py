"""Fan-out of session changes to ``watch`` clients.

A watcher that reads slowly must never slow the daemon, nor make it hold
without bound: each has a queue bounded in events (``watch_queue``) and in
bytes (``watch_queue_bytes``), and once it is full further events are
counted instead of kept; the watcher then receives one ``lagged`` event
saying how many it missed, in the place where they would have been, and
then events again.

An event is encoded once, as the frame every watcher is sent, when it is
published: watchers queue those bytes (shared by all of them), not sessions
with their metadata decoded, which take many times the room.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

import anyio

from sessiond.model import Change
from sessiond.protocol import Event, EventReply, frame

log = logging.getLogger("sessiond.server")


class EventSource(Protocol):
    """What the server streams to a ``watch`` client: frames of events,
    each call waiting for the next ones. ``next`` raises ``SessionError``
    when the events cannot be had (the shared engine away): the watch ends
    with that error."""

    async def next(self) -> bytes: ...

    def close(self) -> None: ...


class Watcher:
    """One ``watch`` client: what it asked for and what it has not read."""

    __slots__ = (
        "hub", "user", "capacity", "max_bytes", "queue", "queued_bytes", "dropped",
        "dropped_at", "ready",
    )

    def __init__(self, hub: Hub, user: str | None, capacity: int, max_bytes: int) -> None:
        self.hub = hub
        self.user = user
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.queue: deque[bytes] = deque()  # encoded frames
        self.queued_bytes = 0
        self.dropped = 0
        self.dropped_at = 0
        self.ready = anyio.Event()

    def offer(self, data: bytes, at: int) -> None:
        """Queue the frame ``data`` of an event that happened ``at``, or
        count it as dropped when the queue is full.

        Never blocks: the daemon's work must not wait on a slow reader. An
        empty queue takes any one event, so that a bound below the size of
        an event never silences a watcher for good."""
        queue = self.queue
        if self.dropped or (queue and (
            len(queue) >= self.capacity or self.queued_bytes + len(data) > self.max_bytes
        )):
            # Once one is dropped, all are until take(), which also emits
            # the marker: so the marker sits where the dropped events were.
            self.missed(at)
            return
        queue.append(data)
        self.queued_bytes += len(data)
        self.ready.set()

    def missed(self, at: int) -> None:
        """Count an event this watcher will not be sent."""
        self.dropped += 1
        self.dropped_at = at
        self.ready.set()

    async def next(self) -> bytes:
        """The frames queued once there are any (an ``EventSource``)."""
        await self.ready.wait()
        return self.take()

    def close(self) -> None:
        self.hub.unsubscribe(self)

    def take(self) -> bytes:
        """Every frame queued, then the lag marker if events were dropped."""
        items = list(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        if self.dropped:
            lagged = Event(kind="lagged", sid=None, at=self.dropped_at, dropped=self.dropped)
            items.append(frame(EventReply(id=0, event=lagged)))
            self.dropped = 0
        self.ready = anyio.Event()
        return b"".join(items)


class Hub:
    """Every watcher, and the publishing of changes to those that match."""

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()

    def subscribe(self, user: str | None, capacity: int, max_bytes: int) -> Watcher:
        watcher = Watcher(self, user, capacity, max_bytes)
        self.watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def publish(self, changes: list[Change], now: int) -> None:
        """Offer each change to the watchers it concerns, encoded once."""
        if not self.watchers:
            return
        for change in changes:
            record = change.after if change.after is not None else change.before
            user = record.user if record is not None else None
            data: bytes | None = None
            for watcher in self.watchers:
                if watcher.user is not None and watcher.user != user:
                    continue
                if data is None:
                    data = _encode(change, now)
                if data:
                    watcher.offer(data, now)
                else:
                    watcher.missed(now)


def _encode(change: Change, now: int) -> bytes:
    """The frame that tells a watcher of ``change``; empty if it cannot be
    encoded (a bug, logged: the change itself stands, and watchers are told
    they missed an event)."""
    record = change.after if change.after is not None else change.before
    try:
        session = record.to_session() if record is not None else None
        return frame(EventReply(id=0, event=Event(
            kind=change.kind, sid=change.sid, at=now, session=session
        )))
    except Exception:  # a bug: the commit that published it has succeeded
        log.exception("internal error encoding the %s event of %s for watchers",
                      change.kind, change.sid)
        return b""
