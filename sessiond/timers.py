"""The daemon's two timers: expiry (and purging), and compaction.

Each owns its state and its figures, sleeps until it has work, and is told
when a commit may have given it some (``notice``): the dispatcher calls
every part's ``notice`` after each commit.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

from sessiond import compaction
from sessiond.compaction import compacted_size
from sessiond.diskio import describe
from sessiond.errors import InternalError, JournalError, ReadOnly
from sessiond.journal import Journal
from sessiond.live import Live
from sessiond.model import US, Change, now_us
from sessiond.store import Store
from sessiond.ticks import until_tick

log = logging.getLogger("sessiond.server")

# The expiry timer persists at most this many expiries (and as many purges)
# per commit, and lets requests in between batches.
EXPIRY_BATCH = 4096
TIMER_RETRY = 1.0
# Deadlines are wall-clock, the sleep is monotonic: waking at least this
# often bounds how late a step of the wall clock can make an expiry. (The
# local timer wakes at each tick instead, ``sessiond.ticks``: as often, and
# together with the daemon's other looks.)
TIMER_MAX_SLEEP = 1.0
# How often a read-only journal is asked whether it can take writes again.
RESUME_INTERVAL = 1.0
LAGS_KEPT = 10_000

Commit = Callable[[list[Change]], Awaitable[None]]


class Lateness:
    """How late expiries were, in milliseconds past their deadlines: the
    latest ``LAGS_KEPT`` (for the p99) and the worst. Each expiry timer,
    local or shared, keeps one.

    How late the timer was, not how far the wall clock moved: a deadline
    expired after a look that left nothing due fell due after that look,
    so its lag is at most the monotonic time since. Without that bound a
    clock stepped an hour forward (NTP, a resumed laptop) would report an
    hour's lag, kept as the worst for good."""

    def __init__(self) -> None:
        self.lags: deque[float] = deque(maxlen=LAGS_KEPT)
        self.worst = 0.0
        self._clear: float | None = None  # time.monotonic() of that look

    def caught_up(self, looked: float) -> None:
        """A look begun at ``looked`` (``time.monotonic()``, taken no later
        than the clock it judged by) left nothing due."""
        self._clear = looked

    def add(self, now: int, deadline: int) -> None:
        """An expiry done at ``now`` of a session due at ``deadline``."""
        late = now - deadline
        if self._clear is not None:
            late = min(late, round((time.monotonic() - self._clear) * US))
        lag = late / 1000
        self.lags.append(lag)
        if lag > self.worst:
            self.worst = lag

    def figures(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
        return {"expiry_lag_max_ms": round(self.worst, 3), "expiry_lag_p99_ms": round(p99, 3)}


class ExpiryTimer:
    """Sleeps until the earliest deadline (or an earlier one arrives),
    expires and purges what is due, and keeps how late it was."""

    def __init__(self, store: Store, commit: Commit) -> None:
        self.store = store
        self._commit = commit
        self.lateness = Lateness()
        # When it next wakes by itself; a deadline earlier than this wakes it.
        self._target = math.inf
        self._wake = anyio.Event()
        self._deadlines_seen = -1

    def notice(self) -> None:
        """After a commit: one that queued a deadline may have brought the
        next one forward (a new or shorter session, an expiry whose
        retention ends before the timer wakes). Only those are looked at:
        looking costs a set a noticeable part of its time on the loop."""
        store = self.store
        if store.deadlines_queued != self._deadlines_seen:
            self._deadlines_seen = store.deadlines_queued
            deadline = store.next_deadline()
            if deadline is not None and deadline < self._target:
                self._wake.set()

    def wake(self, *_: object) -> None:
        """Look again now (the settings it depends on changed)."""
        self._wake.set()

    def figures(self) -> dict[str, Any]:
        return self.lateness.figures()

    async def run(self) -> None:
        store = self.store
        while True:
            looked = time.monotonic()
            now = now_us()
            expired = store.expire_due(now, EXPIRY_BATCH)
            purged = store.purge_due(now, EXPIRY_BATCH)
            failed = False
            if expired or purged:
                try:
                    await self._commit(expired + purged)
                except (ReadOnly, InternalError) as exc:
                    # Reverted, so still due: retry later, not in a hot loop.
                    log.error("could not persist %d expiries: %s",
                              len(expired) + len(purged), exc)
                    failed = True
                else:
                    for c in expired:
                        assert c.before is not None
                        self.lateness.add(now, c.before.expires_at)
            deadline = store.next_deadline()
            self._wake = anyio.Event()
            if deadline is None:
                self._target = math.inf
                delay = math.inf
            else:
                self._target = deadline
                delay = max(0.0, (deadline - now_us()) / US)
            if failed:
                delay = TIMER_RETRY
            elif deadline is None or deadline > now:
                self.lateness.caught_up(looked)
            if delay > 0:
                with anyio.move_on_after(min(delay, until_tick())):
                    await self._wake.wait()
            else:
                # More is due (a batch was full): let requests in between.
                await anyio.lowlevel.checkpoint()


class Compactor:
    """Rewrites the journal on growth, on the interval, and to leave
    read-only mode, backing off (1 s, doubled up to 30 s) while
    compactions fail: ``sessionctl compact`` still tries at once.

    While the journal is read-only: every ``RESUME_INTERVAL``, see whether
    an append fits again (after a write refused for want of room;
    ``Journal.try_resume``), and otherwise try a compaction."""

    def __init__(self, store: Store, journal: Journal, live: Live) -> None:
        self.store = store
        self.journal = journal
        self.rewrites = journal.rewrites
        self.live = live
        self._wake = anyio.Event()

    def notice(self) -> None:
        """After a commit: the journal may have grown enough."""
        s = self.live.settings
        if self.rewrites.due(self.journal.size, s.compact_growth_percent, s.compact_min_bytes):
            self._wake.set()

    def wake(self, *_: object) -> None:
        """Look again now (a failure to leave, or settings that changed)."""
        self._wake.set()

    def figures(self) -> dict[str, Any]:
        store = self.store
        return {"compaction_needs_bytes": compacted_size(store.live_slots(), len(store))}

    async def _short_of_room(self, journal: Journal) -> str | None:
        """Why the journal's filesystem lacks the room for a rewrite
        (``compaction.ROOM_FACTOR``), or ``None``. Only for a compaction of
        its own accord: one asked for (``compact``), or the way out of
        read-only mode, is tried whatever the free space, which it may find
        it needs less of."""
        need = compacted_size(self.store.live_slots(), len(self.store))
        try:
            return await anyio.to_thread.run_sync(compaction.room_short, journal.path, need)
        except OSError as exc:
            log.warning("cannot tell the free space for a compaction of %s (%s): trying it",
                        journal.path, describe(exc))
            return None

    async def run(self) -> None:
        retry = 1.0
        next_try = 0.0  # when a compaction may be tried again after failures
        last = time.monotonic()
        j = self.journal
        readonly, rewrites = j.readonly, j.rewrites
        while True:
            interval = self.live.settings.compact_interval or math.inf
            wait = RESUME_INTERVAL if readonly.failed else min(interval, 60.0)
            with anyio.move_on_after(wait):
                await self._wake.wait()
            self._wake = anyio.Event()
            s = self.live.settings
            if readonly.failed and await j.try_resume():
                retry, next_try = 1.0, 0.0
                continue
            timer_due = (
                s.compact_interval > 0
                and rewrites.changed
                and time.monotonic() - last >= s.compact_interval
            )
            grown = rewrites.due(j.size, s.compact_growth_percent, s.compact_min_bytes)
            if not (readonly.failed or timer_due or grown):
                continue
            if time.monotonic() < next_try:
                continue
            short = None if readonly.failed else await self._short_of_room(j)
            if short is not None:
                # As after a failure: the room is looked at again later.
                log.warning("automatic compaction of %s put off: %s; looking again in %gs",
                            j.path, short, retry)
                next_try = time.monotonic() + retry
                retry = min(retry * 2, 30.0)
                continue
            done = False
            try:
                await compaction.compact(j, self.store.live_slots)
                last = time.monotonic()
                done = True
            except JournalError as exc:
                log.error("%s", exc)
            if done and readonly.failed is None:
                retry, next_try = 1.0, 0.0
            else:
                # Failed, or done and the rewritten journal has no room to
                # append to either: as often again would only rewrite it
                # over and over. Room that appears meanwhile is found by
                # try_resume above, every RESUME_INTERVAL. (A compaction
                # that failed while appends still fit, on a disk with room
                # for the lines but not for a rewrite, was tried again at
                # every commit: the CPU of a core spent writing temp files
                # that took the room the appends needed.)
                next_try = time.monotonic() + retry
                retry = min(retry * 2, 30.0)
