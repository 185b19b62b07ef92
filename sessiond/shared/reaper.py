"""Timed expiry in shared mode: exactly once, by whichever daemon holds
the lease.

Every daemon of a namespace runs a ``Reaper``; one at a time holds the
namespace's lease (a key with a short life that its holder keeps
extending), and only the holder expires and purges what falls due. When the
holder is killed its lease runs out within ``LEASE_MS`` and another daemon
takes it. An expiry is committed with the same compare and set as any
change, so even two holders (a lease lost to a long pause) could not
expire a session twice: the second commit finds the record changed.

Deadlines and the time they are compared with are the engine's: the one
clock of the fleet. An expiry is at its deadline (``expired_at`` = the
deadline), however late it is noticed: after an outage of the engine, the
holder catches up with the right stamps.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any

import anyio

from sessiond import rules
from sessiond.errors import SessionError
from sessiond.failpoints import EXPIRY_BUG, failpoints
from sessiond.live import Live, rules_of
from sessiond.model import US, Change
from sessiond.shared.engine import Aside, SharedStore
from sessiond.shared.scans import commit_each, each_alone, purges
from sessiond.timers import EXPIRY_BATCH, TIMER_MAX_SLEEP, Lateness

log = logging.getLogger("sessiond.shared")

LEASE_MS = 5000
# The holder extends its lease this often (seconds), not at every turn of
# its timer: turns follow each other closely while sessions fall due, and a
# round trip of its own each turn would make every expiry that much later. Far below
# LEASE_MS, so the lease never runs out under a holder that keeps up.
LEASE_RENEW = 1.0
# Sessions set aside (``Reaper._set_aside``) named one by one in the log, a
# turn; the rest are counted.
SAY_MOST = 10
# A commit refused again for a record read at the same version is no race
# (a change by another daemon bumps the version): the engine holds the
# record otherwise than it reads. Rather than look again at once, and spin
# at the engine, the timer waits before the next look, twice as long each
# time it is refused so, up to STUCK_MOST seconds.
STUCK_FIRST = 0.01
STUCK_MOST = 1.0


class Reaper:
    """The expiry timer of one daemon of a namespace."""

    def __init__(self, store: SharedStore, live: Live) -> None:
        self.store = store
        self.live = live
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.holding = False
        self.lateness = Lateness()
        self._target = math.inf  # the engine's time it next wakes at
        self._wake = anyio.Event()
        self._down: str | None = None  # the engine's trouble, said once
        self._leased = -math.inf  # when it last asked for the lease (monotonic)
        # Records (id, version) whose commit the last turn saw refused, and
        # how many turns in a row saw one of them refused again.
        self._refused: set[tuple[str, int]] = set()
        self._stuck = 0

    def hint(self, deadline: int) -> None:
        """A deadline set somewhere in the fleet: earlier than the timer's
        next wake, it wakes it. Only the lease's holder listens: another
        daemon's timer would only find the lease taken (and it looks at
        the heads of the indexes when it takes the lease)."""
        if self.holding and deadline < self._target:
            self._wake.set()

    def wake(self, *_: object) -> None:
        self._wake.set()

    def figures(self) -> dict[str, Any]:
        return {**self.lateness.figures(), "expiry_lease": self.holding}

    async def run(self) -> None:
        while True:
            delay = TIMER_MAX_SLEEP
            try:
                asked = time.monotonic()
                if not self.holding or asked - self._leased >= LEASE_RENEW:
                    self.holding, cut = await self.store.hold_lease(self.holder, LEASE_MS)
                    self._leased = asked
                    if cut is not None:
                        # Cut once: it then runs out as any lease does.
                        log.warning("%s: cut to %gs, so that expiry goes on when it runs out",
                                    cut, LEASE_MS / 1000)
                if self.holding:
                    delay = await self._reap()
                if self._down is not None:
                    log.info("expiry resumed")
                    self._down = None
            except SessionError as exc:
                # The engine away, or what it holds (a key of the wrong
                # type: the link words the engine's error): said once, and
                # tried again at the timer's pace until it works.
                self.holding = False
                if self._down != str(exc):
                    log.error("expiry paused: %s", exc)
                    self._down = str(exc)
            except Exception as exc:
                # A bug: said with its traceback, once while it lasts, and
                # tried again at the timer's pace. Ending the daemon would
                # hand the lease, and the same bug, to the next daemon of
                # the namespace, and so on through the fleet.
                if self._down != repr(exc):
                    log.exception("expiry paused by an internal error (a bug)")
                    self._down = repr(exc)
            self._wake = anyio.Event()
            if delay > 0:
                # At least every TIMER_MAX_SLEEP: the lease is extended, and a
                # daemon that lost it notices another's.
                with anyio.move_on_after(min(delay, TIMER_MAX_SLEEP)):
                    await self._wake.wait()
            else:
                await anyio.lowlevel.checkpoint()

    async def _reap(self) -> float:
        """Expire and purge what is due; seconds until more is (0: a batch
        was full). Two round trips: what is due (with the engine's time and
        the next deadlines), then one commit of the expiries and purges."""
        if failpoints().hit(EXPIRY_BUG):
            raise RuntimeError(f"injected by failpoint {EXPIRY_BUG}")
        settings = rules_of(self.live.settings)
        retention = settings.expired_retention * US
        asked = time.monotonic()
        due = await self.store.falling_due(EXPIRY_BATCH, retention)
        now = due.now
        if due.aside:
            await self._set_aside(due.aside)
        groups = each_alone(settings, due.expiring, rules.lazy_expire, now)
        expiries = len(groups)
        groups += purges(settings, [
            r for r in due.purging
            if r.expired_at is not None and rules.purge_key(r) <= now - retention
        ])
        applied = await commit_each(self.store, groups, now)
        pause = self._backoff(groups, applied)
        # The next wake: the next deadline, the next retention to run out,
        # the retention of what was expired just now included.
        candidates = [] if due.next_due is None else [due.next_due]
        if retention and due.next_purge is not None:
            candidates.append(due.next_purge + retention)
        if due.aside:
            # Behind entries just set aside: looked at again at once.
            candidates.append(now)
        if not all(applied):
            # Changed by another daemon since they were read: looked at
            # again at once (a session still due included, which the next
            # deadline above left out), unless refused turn after turn.
            candidates.append(now + round(pause * US))
        for made, ok in zip(groups[:expiries], applied, strict=False):
            before, after = made[0].before, made[-1].after
            if ok and before is not None:
                self.lateness.add(now, before.expires_at)
                if retention and after is not None:
                    candidates.append(rules.purge_key(after) + retention)
        if len(due.expiring) >= EXPIRY_BATCH or len(due.purging) >= EXPIRY_BATCH:
            return pause
        if all(applied):
            self.lateness.caught_up(asked)
        self._target = min(candidates) if candidates else math.inf
        if not candidates:
            return math.inf
        # ``now`` was the engine's time when it was asked; the commit has
        # taken some since (counted from the asking, so never too little).
        return max(0.0, (self._target - now) / US - (time.monotonic() - asked))

    def _backoff(self, groups: list[list[Change]], applied: list[bool]) -> float:
        """Seconds to wait before looking again at what this turn's commit
        refused: none for a race, longer each turn for records refused again
        at the version they were read at (said in the log the first time)."""
        refused = {
            (made[0].sid, made[0].before.version)
            for made, ok in zip(groups, applied, strict=True)
            if not ok and made[0].before is not None
        }
        again = refused & self._refused
        self._refused = refused
        if not again:
            self._stuck = 0
            return 0.0
        self._stuck += 1
        if self._stuck == 1:
            log.error(
                "expiry of session(s) %s was refused again at the version read: the engine "
                "holds them otherwise than they read; the timer backs off while it lasts",
                ", ".join(sorted(sid for sid, _ in again)[:SAY_MOST]),
            )
        return float(min(STUCK_MOST, STUCK_FIRST * 2 ** (self._stuck - 1)))

    async def _set_aside(self, aside: list[Aside]) -> None:
        """Take entries that make no record off the indexes of deadlines,
        saying which and why: left there, each would come first in every
        look at what is due, and a batch of them would stop expiry. The
        sessions' hashes stay as they are; reading one says what is wrong
        with it."""
        await self.store.set_aside([sid for sid, _ in aside])
        for _, why in aside[:SAY_MOST]:
            log.error(
                "%s; expiry sets it aside: once repaired, it expires on a read past its "
                "deadline, and on the timer again after a touch", why,
            )
        if len(aside) > SAY_MOST:
            log.error("expiry set %d more sessions aside for the same reasons",
                      len(aside) - SAY_MOST)

    async def release(self) -> None:
        """Give the lease up at a clean stop, so that another daemon takes it
        at once rather than when it runs out."""
        if self.holding:
            try:
                await self.store.release_lease(self.holder)
            except SessionError as exc:
                log.warning("could not give up the expiry lease: %s", exc)
