"""Every rule of sessions, and nothing else.

The store is pure and synchronous: it never reads a clock (callers pass
``now``), never touches a file or a socket. Each operation returns its result
and the list of ``Change`` records it made; the daemon persists those to the
journal, publishes them to watchers, and, if the journal refuses them, hands
them back to ``revert``. Replay feeds journal records to ``load``/``remove``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from sessiond.errors import Conflict, InvalidRequest, SessionExpired, SessionNotFound, TooLarge
from sessiond.expiry import DeadlineQueue
from sessiond.model import (
    ACTIVE,
    DEFAULT_USER,
    EXPIRED,
    KEY_MAX,
    MAX_TTL,
    US,
    Session,
    new_id,
    valid_id,
)
from sessiond.protocol import CleanupResult, ImportResult

META_MAX_BYTES = 64 * 1024
META_MAX_DEPTH = 32

_replace = msgspec.structs.replace
_json_size = msgspec.json.encode


class Change(NamedTuple):
    """One transition of one session: ``before``/``after`` are ``None`` for
    absent. ``kind`` is created, updated, expired, deleted or purged."""

    kind: str
    sid: str
    before: Session | None
    after: Session | None


class Rules(msgspec.Struct, kw_only=True):
    """The settings the rules depend on (seconds; 0 means none)."""

    default_ttl: int = 3600
    max_lifetime: int = 0
    expired_retention: int = 7 * 86400


def check_ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise InvalidRequest(f"ttl must be a whole number of seconds from 1 to {MAX_TTL}, not {ttl!r}")
    return ttl


def check_meta_value(value: Any, depth: int = 0) -> None:
    """JSON values only (the journal is JSON), bounded in depth."""
    if depth > META_MAX_DEPTH:
        raise InvalidRequest(f"meta value nested deeper than {META_MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest("meta values must be finite numbers")
        return
    if isinstance(value, list):
        for item in value:
            check_meta_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InvalidRequest("meta object keys must be strings")
            check_meta_value(item, depth + 1)
        return
    raise InvalidRequest(f"meta values must be JSON values, not {type(value).__name__}")


def check_meta(meta: dict[str, Any]) -> dict[str, Any]:
    for key, value in meta.items():
        if not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX:
            raise InvalidRequest(f"meta keys must be 1 to {KEY_MAX} characters")
        check_meta_value(value, 1)
    size = len(_json_size(meta))
    if size > META_MAX_BYTES:
        raise TooLarge(f"meta of {size} bytes exceeds the limit of {META_MAX_BYTES} bytes")
    return meta


class Store:
    """Sessions in memory, in creation order, with their deadlines."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        # Slots keep creation order and give list cursors an O(1) resume
        # point; a deleted session leaves None until the slots are packed.
        self._index: dict[str, int] = {}
        self._slots: list[Session | None] = []
        self._epoch = 0
        self._active = 0
        self._ttl_sum = 0
        self._users: dict[str, int] = {}
        self._expiry = DeadlineQueue()
        self._purge = DeadlineQueue()  # keyed by expired_at
        self.expiries_done = 0
        self.purges_done = 0

    # -- reading ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, sid: str) -> bool:
        return sid in self._index

    def peek(self, sid: str) -> Session | None:
        """The stored record as it is, with no rule applied."""
        slot = self._index.get(sid)
        return None if slot is None else self._slots[slot]

    def sessions(self) -> Iterator[Session]:
        """Every record in creation order (for snapshots and exports)."""
        return (s for s in self._slots if s is not None)

    def snapshot(self) -> list[Session]:
        """A consistent copy: records are immutable, so a list of them is."""
        return [s for s in self._slots if s is not None]

    def _require(self, sid: str) -> Session:
        if not valid_id(sid):
            raise InvalidRequest(f"invalid session id {sid!r}: use 1-128 of A-Z a-z 0-9 . _ -")
        slot = self._index.get(sid)
        if slot is None:
            raise SessionNotFound(f"session {sid} not found")
        record = self._slots[slot]
        assert record is not None
        return record

    def _lazy_expire(self, record: Session, now: int, out: list[Change]) -> Session:
        """A session past its deadline is expired, whether or not the timer
        has got to it yet."""
        if record.status is ACTIVE and record.expires_at <= now:
            after = _replace(record, status=EXPIRED, expired_at=now, version=record.version + 1)
            self._put(record.id, record, after)
            self.expiries_done += 1
            out.append(Change("expired", record.id, record, after))
            return after
        return record

    def get(self, now: int, sid: str, touch: bool = False) -> tuple[Session, list[Change]]:
        changes: list[Change] = []
        record = self._lazy_expire(self._require(sid), now, changes)
        if touch and record.status is ACTIVE:
            after = _replace(
                record,
                last_access=now,
                expires_at=self._deadline(record, now, record.ttl),
                version=record.version + 1,
            )
            self._put(sid, record, after)
            changes.append(Change("updated", sid, record, after))
            record = after
        return record, changes

    def list_page(
        self,
        now: int,
        *,
        status: str | None = None,
        user: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> tuple[list[Session], str | None, list[Change]]:
        """Up to ``limit`` sessions after ``cursor`` in creation order, and
        the cursor of the next page (``None`` at the end)."""
        if status not in (None, ACTIVE, EXPIRED):
            raise InvalidRequest(f"unknown status {status!r}: use active or expired")
        start = self._resume(cursor)
        changes: list[Change] = []
        page: list[Session] = []
        slots = self._slots
        i = start
        while i < len(slots) and len(page) < limit:
            record = slots[i]
            i += 1
            if record is None or (user is not None and record.user != user):
                continue
            record = self._lazy_expire(record, now, changes)
            if status is None or record.status == status:
                page.append(record)
        last = page[-1].id if page else ""
        next_cursor = f"{self._epoch}:{i}:{last}" if i < len(slots) else None
        return page, next_cursor, changes

    def _resume(self, cursor: str | None) -> int:
        if not cursor:
            return 0
        try:
            epoch_s, slot_s, last = cursor.split(":", 2)
            epoch, slot = int(epoch_s), int(slot_s)
        except ValueError:
            raise InvalidRequest(f"invalid list cursor {cursor!r}") from None
        if epoch == self._epoch:
            return slot
        # The slots were packed since this cursor was made: find our place
        # again by the last id seen.
        if last and last in self._index:
            return self._index[last] + 1
        raise Conflict("the listing was interrupted by a reorganisation; start it again")

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

    # -- writing ---------------------------------------------------------

    def create(
        self,
        now: int,
        *,
        user: str | None = None,
        ttl: int | None = None,
        meta: dict[str, Any] | None = None,
        sid: str | None = None,
    ) -> tuple[Session, list[Change]]:
        if sid is None:
            sid = new_id()
        elif not valid_id(sid):
            raise InvalidRequest(f"invalid session id {sid!r}: use 1-128 of A-Z a-z 0-9 . _ -")
        if sid in self._index:
            raise Conflict(f"session {sid} already exists")
        if user is not None and not 1 <= len(user) <= 256:
            raise InvalidRequest("user must be 1 to 256 characters")
        ttl = check_ttl(self.rules.default_ttl if ttl is None else ttl)
        record = Session(
            id=sid,
            user=sys.intern(user) if user else DEFAULT_USER,
            status=ACTIVE,
            ttl=ttl,
            meta=check_meta(dict(meta or {})),
            created_at=now,
            last_access=now,
            expires_at=0,
        )
        record.expires_at = self._deadline(record, now, ttl)
        self._put(sid, None, record)
        return record, [Change("created", sid, None, record)]

    def set(
        self, now: int, sid: str, key: str, value: Any, expect_version: int | None = None
    ) -> tuple[Session, list[Change]]:
        changes: list[Change] = []
        record = self._writable(now, sid, expect_version, changes)
        if not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX:
            raise InvalidRequest(f"meta keys must be 1 to {KEY_MAX} characters")
        check_meta_value(value, 1)
        meta = dict(record.meta)
        meta[key] = value
        check_meta(meta)
        return self._update(record, now, meta, changes)

    def unset(
        self, now: int, sid: str, key: str, expect_version: int | None = None
    ) -> tuple[Session, list[Change]]:
        changes: list[Change] = []
        record = self._writable(now, sid, expect_version, changes)
        if key not in record.meta:
            raise SessionNotFound(f"session {sid} has no meta key {key!r}")
        meta = dict(record.meta)
        del meta[key]
        return self._update(record, now, meta, changes)

    def _writable(
        self, now: int, sid: str, expect_version: int | None, changes: list[Change]
    ) -> Session:
        record = self._lazy_expire(self._require(sid), now, changes)
        if expect_version is not None and record.version != expect_version:
            raise Conflict(
                f"session {sid} is at version {record.version}, not {expect_version}"
            )
        if record.status is EXPIRED:
            raise SessionExpired(f"session {sid} has expired; refresh it with revive first")
        return record

    def _update(
        self, record: Session, now: int, meta: dict[str, Any], changes: list[Change]
    ) -> tuple[Session, list[Change]]:
        after = _replace(record, meta=meta, last_access=now, version=record.version + 1)
        self._put(record.id, record, after)
        changes.append(Change("updated", record.id, record, after))
        return after, changes

    def delete(self, now: int, sid: str) -> tuple[str, list[Change]]:
        record = self._require(sid)
        self._put(sid, record, None)
        return sid, [Change("deleted", sid, record, None)]

    def expire(self, now: int, sid: str) -> tuple[Session, list[Change]]:
        record = self._require(sid)
        if record.status is EXPIRED:
            return record, []
        after = _replace(record, status=EXPIRED, expired_at=now, version=record.version + 1)
        self._put(sid, record, after)
        self.expiries_done += 1
        return after, [Change("expired", sid, record, after)]

    def refresh(
        self, now: int, sid: str, ttl: int | None = None, revive: bool = False
    ) -> tuple[Session, list[Change]]:
        changes: list[Change] = []
        record = self._lazy_expire(self._require(sid), now, changes)
        if record.status is EXPIRED and not revive:
            raise SessionExpired(f"session {sid} has expired; pass revive to bring it back")
        ttl = check_ttl(record.ttl if ttl is None else ttl)
        deadline = self._deadline(record, now, ttl)
        if deadline <= now:
            raise SessionExpired(
                f"session {sid} has reached max_lifetime ({self.rules.max_lifetime}s)"
            )
        after = _replace(
            record,
            status=ACTIVE,
            ttl=ttl,
            last_access=now,
            expires_at=deadline,
            expired_at=None,
            version=record.version + 1,
        )
        self._put(sid, record, after)
        changes.append(Change("updated", sid, record, after))
        return after, changes

    def cleanup(
        self, now: int, before: int | None = None, dry_run: bool = False
    ) -> tuple[CleanupResult, list[Change]]:
        """Remove sessions that are expired or whose deadline is before
        ``before`` (default: now)."""
        cutoff = now if before is None else before
        doomed = [
            s for s in self._slots
            if s is not None and (s.status is EXPIRED or s.expires_at <= cutoff)
        ]
        changes: list[Change] = []
        if not dry_run:
            for record in doomed:
                self._put(record.id, record, None)
                changes.append(Change("purged", record.id, record, None))
            self.purges_done += len(doomed)
        result = CleanupResult(
            dry_run=dry_run,
            removed_count=len(doomed),
            remaining_count=len(self._index) - (len(doomed) if dry_run else 0),
            removed_ids=[s.id for s in doomed],
        )
        return result, changes

    def import_sessions(
        self, now: int, records: list[Session]
    ) -> tuple[ImportResult, list[Change]]:
        """Merge records from elsewhere: new ids are imported, a record with
        a higher version or later ``last_access`` replaces ours, anything
        else is skipped with its reason."""
        result = ImportResult(reasons=[])
        changes: list[Change] = []
        for rec in records:
            try:
                rec = self._normalise(rec)
            except InvalidRequest as exc:
                result.skipped += 1
                result.reasons.append(f"{rec.id}: {exc}")
                continue
            current = self.peek(rec.id)
            if current is None:
                self._put(rec.id, None, rec)
                changes.append(Change("created", rec.id, None, rec))
                result.imported += 1
            elif (rec.version, rec.last_access) > (current.version, current.last_access):
                self._put(rec.id, current, rec)
                changes.append(Change("updated", rec.id, current, rec))
                result.updated += 1
            else:
                result.skipped += 1
                result.reasons.append(f"{rec.id}: already present and not newer")
        return result, changes

    def _normalise(self, rec: Session) -> Session:
        if not valid_id(rec.id):
            raise InvalidRequest(f"invalid session id {rec.id!r}")
        if rec.status not in (ACTIVE, EXPIRED):
            raise InvalidRequest(f"unknown status {rec.status!r}")
        check_ttl(rec.ttl)
        check_meta(rec.meta)
        status = ACTIVE if rec.status == ACTIVE else EXPIRED
        expired_at = rec.expired_at
        if status is EXPIRED and expired_at is None:
            expired_at = rec.expires_at
        return _replace(
            rec,
            user=sys.intern(rec.user or DEFAULT_USER),
            status=status,
            expired_at=expired_at if status is EXPIRED else None,
        )

    # -- time ------------------------------------------------------------

    def _deadline(self, record: Session, now: int, ttl: int) -> int:
        deadline = now + ttl * US
        cap = self.rules.max_lifetime
        if cap:
            deadline = min(deadline, record.created_at + cap * US)
        return deadline

    def _is_due_entry(self, sid: str, deadline: int) -> bool:
        record = self.peek(sid)
        return record is not None and record.status is ACTIVE and record.expires_at == deadline

    def _is_purge_entry(self, sid: str, expired_at: int) -> bool:
        record = self.peek(sid)
        return record is not None and record.status is EXPIRED and record.expired_at == expired_at

    def next_deadline(self) -> int | None:
        """When ``expire_due``/``purge_due`` next have work (microseconds)."""
        self._expiry.drop_stale_head(self._is_due_entry)
        candidates = [d for d in (self._expiry.peek(),) if d is not None]
        retention = self.rules.expired_retention
        if retention:
            self._purge.drop_stale_head(self._is_purge_entry)
            head = self._purge.peek()
            if head is not None:
                candidates.append(head + retention * US)
        return min(candidates) if candidates else None

    def expire_due(self, now: int) -> list[Change]:
        """Expire every active session whose deadline has come."""
        changes: list[Change] = []
        for deadline, sid in self._expiry.pop_due(now):
            if self._is_due_entry(sid, deadline):
                record = self.peek(sid)
                assert record is not None
                self._lazy_expire(record, now, changes)
        return changes

    def purge_due(self, now: int) -> list[Change]:
        """Remove expired sessions kept longer than ``expired_retention``."""
        retention = self.rules.expired_retention
        if not retention:
            return []
        changes: list[Change] = []
        for expired_at, sid in self._purge.pop_due(now - retention * US):
            if self._is_purge_entry(sid, expired_at):
                record = self.peek(sid)
                assert record is not None
                self._put(sid, record, None)
                self.purges_done += 1
                changes.append(Change("purged", sid, record, None))
        return changes

    # -- the one place state changes -------------------------------------

    def _put(self, sid: str, before: Session | None, after: Session | None) -> None:
        if before is not None:
            self._ttl_sum -= before.ttl
            if before.status is ACTIVE:
                self._active -= 1
            left = self._users[before.user] - 1
            if left:
                self._users[before.user] = left
            else:
                del self._users[before.user]
        if after is None:
            slot = self._index.pop(sid)
            self._slots[slot] = None
            self._maybe_pack()
            return
        self._ttl_sum += after.ttl
        self._users[after.user] = self._users.get(after.user, 0) + 1
        if after.status is ACTIVE:
            self._active += 1
            if before is None or before.expires_at != after.expires_at or before.status is not ACTIVE:
                self._expiry.push(after.expires_at, sid)
                if self._expiry.needs_rebuild(self._active):
                    self._expiry.rebuild(
                        (s.expires_at, s.id) for s in self.sessions() if s.status is ACTIVE
                    )
        elif after.expired_at is not None and (before is None or before.status is ACTIVE):
            self._purge.push(after.expired_at, sid)
            expired = len(self._index) - self._active
            if self._purge.needs_rebuild(expired):
                self._purge.rebuild(
                    (s.expired_at, s.id)
                    for s in self.sessions()
                    if s.status is EXPIRED and s.expired_at is not None
                )
        slot = self._index.get(sid)
        if slot is None:
            self._index[sid] = len(self._slots)
            self._slots.append(after)
        else:
            self._slots[slot] = after

    def _maybe_pack(self) -> None:
        dead = len(self._slots) - len(self._index)
        if dead > 1024 and dead > len(self._index):
            self._slots = [s for s in self._slots if s is not None]
            self._index = {s.id: i for i, s in enumerate(self._slots) if s is not None}
            self._epoch += 1

    def revert(self, changes: list[Change]) -> None:
        """Undo ``changes`` (newest first): the journal refused them."""
        for change in reversed(changes):
            if change.kind in ("expired",):
                self.expiries_done -= 1
            elif change.kind == "purged":
                self.purges_done -= 1
            self._put(change.sid, change.after, change.before)

    # -- replay ----------------------------------------------------------

    def load(self, record: Session) -> None:
        """Replay a journal put line: last line for an id wins."""
        record = self._normalise(record)
        self._put(record.id, self.peek(record.id), record)

    def remove(self, sid: str) -> None:
        """Replay a journal delete line (absent ids are fine: idempotent)."""
        current = self.peek(sid)
        if current is not None:
            self._put(sid, current, None)
