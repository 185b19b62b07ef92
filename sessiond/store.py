"""The in-memory engine: sessions held in this process, for one machine.

The first implementation of the storage interface (``rules.Sessions``):
the rules of each operation are in ``sessiond.rules``, and run against this
store, whose ``put`` applies a change at once. Here: the records by id, in
creation order (``sessiond.slots``), the counters ``stats`` reports, the
deadline queues the expiry timer reads, and the operations on many
sessions (a list page, cleanup, import, what falls due), each a loop of the
rules' steps.

The store is pure and synchronous: it never reads a clock (callers pass
``now``, wall-clock microseconds), never touches a file or a socket. The
daemon persists the changes an operation returns to the journal and, if
the journal refuses them, hands them back to ``revert``. Replay feeds
journal lines to ``replay``.

Sessions are held as ``Record``s (see ``sessiond.model``), sized for a
million of them; ``replay`` takes a journal's records in bulk, without a
Python loop per record.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from itertools import compress, repeat
from operator import add, and_, attrgetter, gt, is_
from typing import Any, NamedTuple, cast

from sessiond import rules
from sessiond.deadlines import DeadlineQueue, Queue
from sessiond.errors import InvalidRequest, TooLarge
from sessiond.model import ACTIVE, EMPTY_META, EXPIRED, PURGED, US, Change, Record, Session
from sessiond.rules import Imported, Rules
from sessiond.slots import Slots

# Equal small metas and equal ttls are held once (sessions often share
# them); these bound what is remembered for that.
SHARED_META_BYTES = 128
SHARED_MAX = 4096
# A list page's size, reckoned as its metas plus a session's other fields
# (about 200 bytes on the wire): well inside the default frame limit.
PAGE_MAX_BYTES = 1024 * 1024
RECORD_OVERHEAD_BYTES = 256

_ID = attrgetter("id")
_TTL = attrgetter("ttl")
_USER = attrgetter("user")
_EXPIRES = attrgetter("expires_at")
_EXPIRED_AT = attrgetter("expired_at")
_CREATED = attrgetter("created_at")


class ReplayRefused(InvalidRequest):
    """``Store.replay`` refused the item at ``index``; those before it are
    applied, those after it are not."""

    def __init__(self, index: int, reason: Exception) -> None:
        super().__init__(str(reason))
        self.index = index


class Cleaned(NamedTuple):
    """What ``cleanup`` removed (or would, on a dry run), how many sessions
    remain (would, on a dry run, as far as this call looked), and the
    sequence number the next slice starts after (``None``: no slice left)."""

    removed: list[str]
    remaining: int
    resume: int | None = None


class Store:
    """Sessions in memory, in creation order, with their deadlines."""

    def __init__(self, settings: Rules | None = None) -> None:
        self.rules = settings or Rules()
        self._index: dict[str, Record] = {}
        self._slots = Slots()
        self._active = 0
        self._ttl_sum = 0
        self._users: Counter[str] = Counter()
        # Active sessions by expires_at: their records themselves (they
        # order by it). Expired ones by when their retention starts.
        self._expiry: Queue[Record] = Queue(_EXPIRES, _ID)
        self._purge = DeadlineQueue()
        self._metas: dict[bytes, bytes] = {EMPTY_META: EMPTY_META}
        self._ttls: dict[int, int] = {}
        self.expiries_done = 0
        self.purges_done = 0
        # Deadlines queued so far: the next deadline can come forward only
        # when this moves (removals and pops only ever put it later).
        self.deadlines_queued = 0

    # -- reading ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, sid: str) -> bool:
        return sid in self._index

    def peek(self, sid: str) -> Record | None:
        """The stored record as it is, with no rule applied."""
        return self._index.get(sid)

    def snapshot(self) -> list[Record]:
        """A consistent copy: records are immutable, so a list of them is."""
        return list(filter(None, self._slots.records))  # a record is never false

    def live_slots(self) -> Sequence[Record | None]:
        """The records in creation order, ``None`` where one was removed
        (``Slots.live``: the table's own list, read while it changes)."""
        return self._slots.live()

    def list_page(
        self,
        now: int,
        *,
        status: str | None = None,
        user: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        max_bytes: int = PAGE_MAX_BYTES,
    ) -> tuple[list[Record], str | None, list[Change]]:
        """Up to ``limit`` sessions after ``cursor`` in creation order, and
        the cursor of the next page (``None`` at the end).

        A page also ends once its metadata comes to ``max_bytes`` (it holds
        at least one session): a thousand sessions with the largest meta
        allowed would make a 64 MiB reply."""
        if status not in (None, ACTIVE, EXPIRED):
            raise InvalidRequest(f"unknown status {status!r}: use active or expired")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest(f"limit must be a positive whole number, not {limit!r}")
        i = self._slots.resume(cursor)
        changes: list[Change] = []
        page: list[Record] = []
        slots = self._slots.records
        size = 0
        while i < len(slots) and len(page) < limit and size < max_bytes:
            record = slots[i]
            i += 1
            if record is None or (user is not None and record.user != user):
                continue
            record = rules.lazy_expire(self, record, now, changes)
            if status is None or record.status == status:
                page.append(record)
                size += len(record.meta_json) + RECORD_OVERHEAD_BYTES
        return page, self._slots.cursor(i), changes

    def stats(self, now: int) -> dict[str, Any]:
        total = len(self._index)
        return {
            "total_sessions": total,
            "active": self._active,
            "expired": total - self._active,
            "unique_users": len(self._users),
            "average_ttl_seconds": round(self._ttl_sum / total, 1) if total else 0.0,
            "due_next_minute": self._expiry.count_due_before(now + 60 * US, self._is_due_entry),
            "expiries_done": self.expiries_done,
            "purges_done": self.purges_done,
        }

    # -- operations on many sessions -------------------------------------

    def cleanup(
        self,
        now: int,
        before: int | None = None,
        dry_run: bool = False,
        *,
        after: int = -1,
        upto: int | None = None,
        most: int | None = None,
    ) -> tuple[Cleaned, list[Change]]:
        """Remove sessions that are expired (or past their deadline), and
        with ``before`` also those whose deadline is earlier than it.

        All of them, or a slice: the sessions created after sequence number
        ``after`` and up to ``upto`` (``last_seq()`` when the cleanup
        began: none made since), at most ``most`` slots of them; the next
        slice starts after ``Cleaned.resume``. A session another request
        changes between slices is judged as it is when its slice comes."""
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
            raise InvalidRequest(f"before must be a timestamp in microseconds, not {before!r}")
        slots = self._slots
        start = slots.after(after)
        end = len(slots) if upto is None else slots.after(upto)
        stop = end if most is None else min(end, start + most)
        # Read before the removals below, which may pack the slots.
        resume = slots.seq_at(stop - 1) if start < stop < end else None
        doomed = [
            s for s in slots.records[start:stop] if s is not None and rules.doomed(s, now, before)
        ]
        changes: list[Change] = []
        if not dry_run:
            for record in doomed:
                self.put(changes, PURGED, record, None)
        remaining = len(self._index) - (len(doomed) if dry_run else 0)
        return Cleaned([s.id for s in doomed], remaining, resume), changes

    def last_seq(self) -> int:
        """The sequence number of the newest session made so far (-1:
        none): ``cleanup``'s ``upto``."""
        return self._slots.last_seq()

    def import_sessions(self, now: int, sessions: list[Session]) -> tuple[Imported, list[Change]]:
        """Merge records from elsewhere (``rules.admit`` each); a record the
        rules refuse is skipped with its reason."""
        tally = Imported()
        changes: list[Change] = []
        for session in sessions:
            try:
                outcome, late = rules.admit(self, now, session, changes)
            except (InvalidRequest, TooLarge) as exc:
                tally.refuse(session.id, exc)
                continue
            tally.count(session.id, outcome, late)
        return tally, changes

    def next_deadline(self) -> int | None:
        """When ``expire_due``/``purge_due`` next have work (wall-clock
        microseconds), or ``None`` when nothing is scheduled."""
        self._expiry.drop_stale_head(self._is_due_entry)
        candidates = [d for d in (self._expiry.peek(),) if d is not None]
        retention = self.rules.expired_retention
        if retention:
            self._purge.drop_stale_head(self._is_purge_entry)
            head = self._purge.peek()
            if head is not None:
                candidates.append(head + retention * US)
        return min(candidates) if candidates else None

    def expire_due(self, now: int, limit: int | None = None) -> list[Change]:
        """Expire active sessions whose deadline has come, earliest first;
        at most ``limit`` queue entries are examined (the rest stay due)."""
        changes: list[Change] = []
        for entry in self._expiry.pop_due(now, limit):
            if self._is_due_entry(entry.id, entry.expires_at):
                rules.expire_record(self, self._index[entry.id], now, changes)
        return changes

    def purge_due(self, now: int, limit: int | None = None) -> list[Change]:
        """Remove expired sessions kept longer than ``expired_retention``
        (0: kept until cleanup); at most ``limit`` queue entries examined."""
        retention = self.rules.expired_retention
        if not retention:
            return []
        changes: list[Change] = []
        for key, sid in self._purge.pop_due(now - retention * US, limit):
            if self._is_purge_entry(sid, key):
                self.put(changes, PURGED, self._index[sid], None)
        return changes

    def change_rules(self, now: int, settings: Rules) -> list[Change]:
        """Adopt new settings. When ``max_lifetime`` comes down (or is set
        where there was none), every session is brought within it at once,
        so that every read agrees with the cap in force: the changes that
        does are returned, to be persisted (or handed to ``revert``, and
        the old rules put back, if the journal refuses them)."""
        old = self.rules.max_lifetime
        self.rules = settings
        cap = settings.max_lifetime
        if cap and (not old or cap < old):
            return self.cap_lifetimes(now)
        return []

    def cap_lifetimes(self, now: int) -> list[Change]:
        """``rules.cap_record`` for every session over the cap: for a
        lowered cap, and at start (the config file may have lowered it while
        the daemon was down). Only those are looked at in Python."""
        cap = self.rules.max_lifetime * US
        if not cap:
            return []
        live = list(filter(None, self._slots.records))
        ends = map(add, map(_CREATED, live), repeat(cap))
        over = compress(live, map(
            and_, map(gt, map(_EXPIRES, live), ends), map(is_, map(_EXPIRED_AT, live), repeat(None))
        ))
        changes: list[Change] = []
        for record in list(over):
            rules.cap_record(self, record, now, changes)
        return changes

    def _is_due_entry(self, sid: str, deadline: int) -> bool:
        record = self._index.get(sid)
        return record is not None and record.expired_at is None and record.expires_at == deadline

    def _is_purge_entry(self, sid: str, key: int) -> bool:
        record = self._index.get(sid)
        return (
            record is not None
            and record.expired_at is not None
            and rules.purge_key(record) == key
        )

    # -- the storage interface: the one place state changes -------------

    def put(
        self, out: list[Change], kind: str, before: Record | None, after: Record | None
    ) -> None:
        """Apply a change, and append it to ``out``. A removal's change
        keeps the record's place in creation order, for ``revert``."""
        if after is not None:
            sid, seq = after.id, -1
        else:
            assert before is not None
            sid, seq = before.id, before.seq
        if kind == EXPIRED:
            self.expiries_done += 1
        elif kind == PURGED:
            self.purges_done += 1
        self._put(sid, before, after)
        out.append(Change(kind, sid, before, after, seq))

    def shared_meta(self, meta_json: bytes) -> bytes:
        if len(meta_json) > SHARED_META_BYTES:
            return meta_json
        held = self._metas.get(meta_json)
        if held is None:
            if len(self._metas) >= SHARED_MAX:
                self._metas = {EMPTY_META: EMPTY_META}
            held = self._metas[meta_json] = meta_json
        return held

    def shared_ttl(self, ttl: int) -> int:
        held = self._ttls.get(ttl)
        if held is None:
            if len(self._ttls) >= SHARED_MAX:
                self._ttls = {}
            held = self._ttls[ttl] = ttl
        return held

    def _put(self, sid: str, before: Record | None, after: Record | None) -> None:
        """Replace ``before`` by ``after`` (either may be ``None``), keeping
        every counter, index and queue in step. A new record goes at the end
        of creation order, a record being put back where its ``seq`` says."""
        if (
            before is not None
            and after is not None
            and before.user is after.user
            and before.ttl == after.ttl
            and before.expires_at == after.expires_at
            and before.expired_at is None
            and after.expired_at is None
        ):
            # An update that moves no counter and no deadline (set, unset,
            # a touch within the same deadline): only the record changes.
            self._index[sid] = after
            self._slots.replace(before, after)
            return
        if before is not None:
            self._ttl_sum -= before.ttl
            if before.expired_at is None:
                self._active -= 1
            left = self._users[before.user] - 1
            if left:
                self._users[before.user] = left
            else:
                del self._users[before.user]
        if after is None:
            assert before is not None
            del self._index[sid]
            self._slots.clear(before, len(self._index))
            return
        self._ttl_sum += after.ttl
        self._users[after.user] += 1
        active = after.expired_at is None
        if active:
            self._active += 1
        self._index[sid] = after
        if before is not None:
            self._slots.replace(before, after)
        elif after.seq < 0:
            self._slots.add(after)
        else:
            self._slots.put_back(after)
        # The queues are told last: pruning asks whether entries are live,
        # which reads the index just written.
        if active:
            if before is None or before.expired_at is not None or (
                before.expires_at != after.expires_at
            ):
                self.deadlines_queued += 1
                self._expiry.add(after)
                if self._expiry.needs_prune(self._active):
                    self._expiry.prune(self._is_due_entry)
        else:
            key = rules.purge_key(after)
            if before is None or before.expired_at is None or rules.purge_key(before) != key:
                self.deadlines_queued += 1
                self._purge.push(key, sid)
                if self._purge.needs_prune(len(self._index) - self._active):
                    self._purge.prune(self._is_purge_entry)

    def revert(self, changes: list[Change]) -> None:
        """Undo ``changes`` (newest first): they were refused. The store,
        its counters and creation order end as they were before."""
        self._slots.begin_revert()
        try:
            for change in reversed(changes):
                if change.kind == EXPIRED:
                    self.expiries_done -= 1
                elif change.kind == PURGED:
                    self.purges_done -= 1
                self._put(change.sid, change.after, change.before)
        finally:
            self._slots.end_revert(len(self._index))

    # -- replay ----------------------------------------------------------

    def replay(self, items: Sequence[Record | Session | str]) -> None:
        """Replay journal lines in order: a ``Record`` (a line in the form
        the daemon writes, see ``blocks.read_block``) is adopted as it is,
        a ``Session`` (any other put line) is checked by the rules for
        records that enter, an id is removed (absent ids are fine). Last
        line for an id wins.

        Raises ``ReplayRefused`` for the first item the rules refuse."""
        if all(map(isinstance, items, repeat(Record))):
            if self._adopt_new(cast("Sequence[Record]", items)):
                return
        for i, item in enumerate(items):
            try:
                if isinstance(item, str):
                    current = self._index.get(item)
                    if current is not None:
                        self._put(item, current, None)
                    continue
                record = item if isinstance(item, Record) else rules.normalise(self, item)
                self._put(record.id, self._index.get(record.id), record)
            except (InvalidRequest, TooLarge) as exc:
                raise ReplayRefused(i, exc) from exc

    def _adopt_new(self, records: Sequence[Record]) -> bool:
        """Add records, in bulk, when none of their ids is held and none
        repeats (a compacted journal); else change nothing, return False.

        The same as ``_put`` for each, without a Python loop over them."""
        index = self._index
        held = len(index)
        # setdefault leaves a held id's record in place: all new, or undo.
        deque(map(index.setdefault, map(_ID, records), records), maxlen=0)
        if len(index) - held != len(records):
            for record in records:
                if index.get(record.id) is record:
                    del index[record.id]
            return False
        self._slots.extend(records)
        self._ttl_sum += sum(map(_TTL, records))
        self._users.update(map(_USER, records))
        active = list(compress(records, map(is_, map(_EXPIRED_AT, records), repeat(None))))
        self._active += len(active)
        self.deadlines_queued += len(records)
        self._expiry.add_many(active)
        if len(active) < len(records):
            self._purge.add_many(
                [(rules.purge_key(r), r.id) for r in records if r.expired_at is not None]
            )
        return True
