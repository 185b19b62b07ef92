"""Every rule of sessions, and nothing else.

The store is pure and synchronous: it never reads a clock (callers pass
``now``, wall-clock microseconds), never touches a file or a socket. Each
operation returns its result and the list of ``Change`` records it made; the
daemon persists those to the journal, publishes them to watchers, and, if the
journal refuses them, hands them back to ``revert``. An operation that raises
has changed nothing. Replay feeds journal lines to ``replay`` (or single
records to ``load``/``remove``).

Sessions are held as ``Record``s (see ``sessiond.model``), sized for a
million of them; ``replay`` takes a journal's records in bulk, without a
Python loop per record.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from itertools import compress, repeat
from operator import add, and_, attrgetter, gt, is_
from typing import Any, NamedTuple, cast

import msgspec

from sessiond.errors import Conflict, InvalidRequest, SessionExpired, SessionNotFound, TooLarge
from sessiond.expiry import DeadlineQueue, Queue
from sessiond.model import (
    ACTIVE,
    DEFAULT_USER,
    EMPTY_META,
    EXPIRED,
    KEY_MAX,
    MAX_TTL,
    MAX_VERSION,
    META_MAX_BYTES,
    US,
    USER_MAX,
    ImportedSession,
    Record,
    Session,
    new_id,
    valid_id,
)
from sessiond.protocol import CleanupResult, ImportResult

META_MAX_DEPTH = 32
# msgpack carries integers from -2**63 to 2**64 - 1; a meta value outside
# that could be stored but never sent back to a client.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
TIME_MIN = -62135596800 * US  # 0001-01-01T00:00:00Z, in microseconds
TIME_MAX = 253402300800 * US - 1  # 9999-12-31T23:59:59.999999Z
# Removed sessions leave empty slots; they are packed away once they are this
# many and outnumber the live ones, so packing costs O(1) per removal.
PACK_SLACK = 1024
# Equal small metas and equal ttls are held once (sessions often share
# them); these bound what is remembered for that.
SHARED_META_BYTES = 128
SHARED_MAX = 4096

_replace = msgspec.structs.replace
_json_size = msgspec.json.encode
_ID = attrgetter("id")
_TTL = attrgetter("ttl")
_USER = attrgetter("user")
_EXPIRES = attrgetter("expires_at")
_EXPIRED_AT = attrgetter("expired_at")
_CREATED = attrgetter("created_at")
_SEQ = attrgetter("seq")


class Change(NamedTuple):
    """One transition of one session: ``before``/``after`` are ``None`` for
    absent. ``kind`` is created, updated, expired, deleted or purged. For a
    removal, ``seq`` is the record's place in creation order, so that
    ``revert`` can put it back there."""

    kind: str
    sid: str
    before: Record | None
    after: Record | None
    seq: int = -1


class ReplayRefused(InvalidRequest):
    """``Store.replay`` refused the item at ``index``; those before it are
    applied, those after it are not."""

    def __init__(self, index: int, reason: Exception) -> None:
        super().__init__(str(reason))
        self.index = index


class Rules(msgspec.Struct, kw_only=True):
    """The settings the rules depend on (seconds; 0 means none)."""

    default_ttl: int = 3600
    max_lifetime: int = 0
    expired_retention: int = 7 * 86400


# A list page's size, reckoned as its metas plus a session's other fields
# (about 200 bytes on the wire): well inside the default frame limit.
PAGE_MAX_BYTES = 1024 * 1024
RECORD_OVERHEAD_BYTES = 256


def check_ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise InvalidRequest(
            f"ttl must be a whole number of seconds from 1 to {MAX_TTL}, not {ttl!r}"
        )
    return ttl


# C0 controls and DEL: in a name they break the lines and tables it is shown
# in, or drive the terminal that shows it. Other characters are names'.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def check_user(user: object, new: bool = True) -> None:
    """``None`` means the default user; anything else must be a name (and a
    ``new`` one, that a client gives, without control characters: data
    that entered before that rule still loads)."""
    if user is not None and (not isinstance(user, str) or not 1 <= len(user) <= USER_MAX):
        raise InvalidRequest(f"user must be 1 to {USER_MAX} characters")
    if new and user is not None:
        _no_controls("user", user)


def check_key(key: object, new: bool = True) -> None:
    """A meta key (``new`` as for ``check_user``)."""
    if not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX:
        raise InvalidRequest(f"meta keys must be 1 to {KEY_MAX} characters")
    if new:
        _no_controls("meta key", key)


def _no_controls(what: str, name: str) -> None:
    # isprintable() is false for every control character, and fast: the
    # search runs only for the few names it does not clear.
    if not name.isprintable():
        found = _CONTROL.search(name)
        if found is not None:
            raise InvalidRequest(
                f"{what} {name!r} holds the control character U+{ord(found.group()):04X}; "
                f"names may not hold U+0000 to U+001F or U+007F"
            )


def _next_version(sid: str, version: int) -> int:
    """The version of a change a client asks for; refused at the top."""
    if version >= MAX_VERSION:
        raise InvalidRequest(
            f"session {sid} is at version {version}, the highest there is: it cannot be "
            f"changed any more; delete it and create it again"
        )
    return version + 1


def _bumped(version: int) -> int:
    """The version of a change the daemon makes on its own (an expiry, a
    lowered max_lifetime). At MAX_VERSION it stays: such a change must
    happen anyway, and nobody can compare-and-set on what it leaves (an
    expired session takes no set; a refresh needs its own version)."""
    return version + 1 if version < MAX_VERSION else version


def check_meta_value(value: Any, depth: int = 0) -> None:
    """JSON values only (the journal is JSON), bounded in depth."""
    if depth > META_MAX_DEPTH:
        raise InvalidRequest(f"meta value nested deeper than {META_MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidRequest(f"meta integers must be from {INT_MIN} to {INT_MAX}")
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


def check_meta(meta: dict[str, Any], new: bool = True) -> bytes:
    """The meta's JSON text, once it is found acceptable (``new`` as for
    ``check_user``)."""
    for key, value in meta.items():
        check_key(key, new)
        check_meta_value(value, 1)
    return _sized(meta)


def _sized(meta: dict[str, Any]) -> bytes:
    """The JSON text of a meta whose entries are acceptable, if not too big."""
    text = _json_size(meta)
    if len(text) > META_MAX_BYTES:
        raise TooLarge(f"meta of {len(text)} bytes exceeds the limit of {META_MAX_BYTES} bytes")
    return text


class Store:
    """Sessions in memory, in creation order, with their deadlines."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        # Slots keep creation order; a removed session leaves None until the
        # slots are packed. Each slot has a creation sequence number (always
        # increasing along the slots, and kept in its record as ``seq``), so
        # that a list cursor, a change or a revert finds its slot again by
        # bisection even after a packing moved every slot.
        self._index: dict[str, Record] = {}
        self._slots: list[Record | None] = []
        self._seqs = array("q")
        self._next_seq = 0
        # While a revert runs: where records put back out of order begin
        # (they are sorted into place once, when it ends), and packing waits.
        self._unsorted_from: int | None = None
        self._reverting = False
        self._active = 0
        self._ttl_sum = 0
        self._users: Counter[str] = Counter()
        # Active sessions by expires_at: their records themselves (they
        # order by it). Expired ones by expired_at.
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

    def sessions(self) -> Iterator[Record]:
        """Every record in creation order (for snapshots and exports)."""
        return (s for s in self._slots if s is not None)

    def snapshot(self) -> list[Record]:
        """A consistent copy: records are immutable, so a list of them is."""
        return list(filter(None, self._slots))  # a record is never false

    def live_slots(self) -> Sequence[Record | None]:
        """The records in creation order, ``None`` where one was removed:
        the store's own list, not a copy, for compaction to read a chunk at a
        time while the store goes on changing. (A million-record copy would
        stop the event loop for tens of milliseconds to make, to free, and
        at each pass of the garbage collector.) Read it, never change it.

        The list is only ever changed in place by appending and by replacing
        slots; packing and sorting make a new list and leave this one be."""
        return self._slots

    def _require(self, sid: str) -> Record:
        # A held id needs no check (the common case, and the check is a
        # regular expression); a miss is told apart from a malformed id.
        record = self._index.get(sid) if isinstance(sid, str) else None
        if record is None:
            if not valid_id(sid):
                raise InvalidRequest(
                    f"invalid session id {sid!r}: use 1-128 of A-Z a-z 0-9 . _ -"
                )
            raise SessionNotFound(f"session {sid} not found")
        return record

    def get(self, now: int, sid: str, touch: bool = False) -> tuple[Record, list[Change]]:
        """A session; past its deadline it is expired, whether or not the
        timer has got to it yet. ``touch`` records the access and slides the
        deadline to now + ttl (within ``max_lifetime``)."""
        changes: list[Change] = []
        record = self._lazy_expire(self._require(sid), now, changes)
        if touch and record.status is ACTIVE:
            version = _next_version(sid, record.version)
            deadline = self._deadline(record, now, record.ttl)
            if deadline <= now:
                # max_lifetime was lowered below this session's age: sliding
                # it would move its deadline into the past.
                return self._expire(record, now, changes), changes
            after = _replace(record, last_access=now, expires_at=deadline, version=version)
            self._put(sid, record, after)
            self._record(changes, Change("updated", sid, record, after))
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
        i = self._resume(cursor)
        changes: list[Change] = []
        page: list[Record] = []
        slots = self._slots
        size = 0
        while i < len(slots) and len(page) < limit and size < max_bytes:
            record = slots[i]
            i += 1
            if record is None or (user is not None and record.user != user):
                continue
            record = self._lazy_expire(record, now, changes)
            if status is None or record.status == status:
                page.append(record)
                size += len(record.meta_json) + RECORD_OVERHEAD_BYTES
        next_cursor = str(self._seqs[i - 1]) if i < len(slots) else None
        return page, next_cursor, changes

    def _resume(self, cursor: str | None) -> int:
        """The slot after the one a cursor names (by its sequence number,
        which survives packing; its record may since have been removed)."""
        if not cursor:
            return 0
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
            raise InvalidRequest(f"invalid list cursor {cursor!r}")
        return bisect_right(self._seqs, int(cursor))

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
    #
    # Every operation checks everything that can refuse it before it changes
    # anything: an error leaves the store exactly as it was, with no change
    # that nobody would persist.

    def create(
        self,
        now: int,
        *,
        user: str | None = None,
        ttl: int | None = None,
        meta: dict[str, Any] | None = None,
        sid: str | None = None,
    ) -> tuple[Record, list[Change]]:
        if sid is None:
            sid = new_id()
        elif not valid_id(sid):
            raise InvalidRequest(f"invalid session id {sid!r}: use 1-128 of A-Z a-z 0-9 . _ -")
        if sid in self._index:
            raise Conflict(f"session {sid} already exists")
        check_user(user)
        ttl = check_ttl(self.rules.default_ttl if ttl is None else ttl)
        meta_json = self._shared_meta(check_meta(meta)) if meta else EMPTY_META
        cap = self.rules.max_lifetime
        record = Record(
            expires_at=now + (min(ttl, cap) if cap else ttl) * US,
            id=sid,
            user=sys.intern(user) if user else DEFAULT_USER,
            ttl=self._shared_ttl(ttl),
            meta_json=meta_json,
            created_at=now,
            last_access=now,
            expired_at=None,
            version=1,
        )
        self._put(sid, None, record)
        return record, [Change("created", sid, None, record)]

    def set(
        self, now: int, sid: str, key: str, value: Any, expect_version: int | None = None
    ) -> tuple[Record, list[Change]]:
        record = self._writable(now, sid, expect_version)
        check_key(key)
        check_meta_value(value, 1)
        meta = record.meta
        meta[key] = value
        # The other entries passed the checks when they were stored.
        return self._update(record, now, _sized(meta))

    def unset(
        self, now: int, sid: str, key: str, expect_version: int | None = None
    ) -> tuple[Record, list[Change]]:
        # The key is not checked as a new one: unset is how a key that
        # entered before the rules refused it goes away.
        record = self._writable(now, sid, expect_version)
        meta = record.meta
        if key not in meta:
            raise SessionNotFound(f"session {sid} has no meta key {key!r}")
        del meta[key]
        return self._update(record, now, _sized(meta))

    def _writable(self, now: int, sid: str, expect_version: int | None) -> Record:
        record = self._require(sid)
        # A session past its deadline is refused without being expired here:
        # the refusal must change nothing, and the timer expires it anyway.
        if record.status is EXPIRED or record.expires_at <= now:
            raise SessionExpired(f"session {sid} has expired; refresh it with revive first")
        if expect_version is not None and record.version != expect_version:
            raise Conflict(
                f"session {sid} is at version {record.version}, not {expect_version}"
            )
        _next_version(sid, record.version)
        return record

    def _update(
        self, record: Record, now: int, meta_json: bytes
    ) -> tuple[Record, list[Change]]:
        after = _replace(
            record,
            meta_json=self._shared_meta(meta_json),
            last_access=now,
            version=record.version + 1,  # below MAX_VERSION: _writable saw to it
        )
        self._put(record.id, record, after)
        return after, [Change("updated", record.id, record, after)]

    def delete(self, now: int, sid: str) -> tuple[str, list[Change]]:
        record = self._require(sid)
        seq = self._put(sid, record, None)
        return sid, [Change("deleted", sid, record, None, seq)]

    def expire(self, now: int, sid: str) -> tuple[Record, list[Change]]:
        """Expire now (idempotent: an expired session is returned as it is)."""
        record = self._require(sid)
        if record.status is EXPIRED:
            return record, []
        _next_version(sid, record.version)
        changes: list[Change] = []
        return self._expire(record, now, changes), changes

    def refresh(
        self, now: int, sid: str, ttl: int | None = None, revive: bool = False
    ) -> tuple[Record, list[Change]]:
        """Deadline = now + ttl (the session's own ttl unless given), capped
        by ``max_lifetime``. An expired session needs ``revive``."""
        record = self._require(sid)
        ttl = check_ttl(record.ttl if ttl is None else ttl)
        if (record.status is EXPIRED or record.expires_at <= now) and not revive:
            raise SessionExpired(f"session {sid} has expired; pass revive to bring it back")
        # Reviving a session the timer has not got to yet expires it first,
        # a version of its own: the refresh's must still fit after it.
        lazy = record.status is ACTIVE and record.expires_at <= now
        _next_version(sid, _bumped(record.version) if lazy else record.version)
        deadline = self._deadline(record, now, ttl)
        if deadline <= now:
            raise SessionExpired(
                f"session {sid} has reached max_lifetime ({self.rules.max_lifetime}s "
                f"from its creation); it cannot be refreshed"
            )
        changes: list[Change] = []
        # Reviving a session the timer has not got to yet: it did expire, and
        # watchers and counters should hear so before it comes back.
        record = self._lazy_expire(record, now, changes)
        after = _replace(
            record,
            ttl=self._shared_ttl(ttl),
            last_access=now,
            expires_at=deadline,
            expired_at=None,
            # Its retention will count from its next expiry, which is later.
            imported_at=None,
            version=record.version + 1,
        )
        self._put(sid, record, after)
        changes.append(Change("updated", sid, record, after))
        return after, changes

    def cleanup(
        self, now: int, before: int | None = None, dry_run: bool = False
    ) -> tuple[CleanupResult, list[Change]]:
        """Remove sessions that are expired (or past their deadline), and
        with ``before`` also those whose deadline is earlier than it."""
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
            raise InvalidRequest(f"before must be a timestamp in microseconds, not {before!r}")
        doomed = [
            s for s in self._slots
            if s is not None and (
                s.status is EXPIRED
                or s.expires_at <= now
                or (before is not None and s.expires_at < before)
            )
        ]
        changes: list[Change] = []
        if not dry_run:
            for record in doomed:
                seq = self._put(record.id, record, None)
                self._record(changes, Change("purged", record.id, record, None, seq))
        result = CleanupResult(
            dry_run=dry_run,
            removed_count=len(doomed),
            remaining_count=len(self._index) - (len(doomed) if dry_run else 0),
            removed_ids=[s.id for s in doomed],
        )
        return result, changes

    def import_sessions(
        self, now: int, sessions: list[Session]
    ) -> tuple[ImportResult, list[Change]]:
        """Merge records from elsewhere: new ids are imported, a record with
        a higher version (or the same version and a later ``last_access``)
        replaces ours, anything else is skipped with its reason.

        A record is brought within ``max_lifetime``. One that comes in
        expired, or past its deadline, is kept for ``expired_retention``
        from now (``Record.imported_at``) however long ago it expired: an
        import must not purge at once what it reports as imported."""
        result = ImportResult(reasons=[])
        changes: list[Change] = []
        cap = self.rules.max_lifetime * US
        for session in sessions:
            try:
                rec = self._normalise(session)
            except (InvalidRequest, TooLarge) as exc:
                result.skipped += 1
                result.reasons.append(f"{session.id}: {exc}")
                continue
            if cap and rec.expired_at is None and rec.expires_at > rec.created_at + cap:
                rec = _replace(rec, expires_at=rec.created_at + cap)
            late = rec.expired_at is not None or rec.expires_at <= now
            if late:
                rec = _replace(rec, imported_at=now)
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
                continue
            result.already_expired += late
        return result, changes

    def _normalise(self, rec: Session) -> Record:
        """A record that enters from a file, another daemon or a journal
        line not in the daemon's own form: the one check of the rules for
        records that enter, as ``create`` checks (but names written before
        control characters were refused still load), with ``expired_at``
        filled in.

        A ttl of 0 or less (the legacy tool wrote some) means a session
        expired at its deadline; it keeps ``default_ttl`` as its ttl, so
        that a revive gives it a sensible life."""
        if not valid_id(rec.id):
            raise InvalidRequest(f"invalid session id {rec.id!r}")
        if rec.status not in (ACTIVE, EXPIRED):
            raise InvalidRequest(f"unknown status {rec.status!r}")
        check_user(rec.user or None, new=False)
        ttl, status = rec.ttl, rec.status
        if isinstance(ttl, int) and ttl <= 0:
            ttl, status = self.rules.default_ttl, EXPIRED
        check_ttl(ttl)
        if not isinstance(rec.meta, dict):
            raise InvalidRequest(f"meta must be an object, not {type(rec.meta).__name__}")
        meta_json = check_meta(rec.meta, new=False)
        version = rec.version
        if not 1 <= version <= MAX_VERSION:
            raise InvalidRequest(f"version {version} is out of range (1 to {MAX_VERSION})")
        imported_at = rec.imported_at if isinstance(rec, ImportedSession) else None
        for name, value in (
            ("created_at", rec.created_at), ("last_access", rec.last_access),
            ("expires_at", rec.expires_at), ("expired_at", rec.expired_at),
            ("imported_at", imported_at),
        ):
            # Outside years 1..9999 a time cannot be written to the journal
            # in a form that reads back, so accepting it would brick replay.
            if value is not None and not TIME_MIN <= value <= TIME_MAX:
                raise InvalidRequest(f"{name} {value} is outside the years 1 to 9999")
        expired_at = None
        if status != ACTIVE:
            expired_at = rec.expires_at if rec.expired_at is None else rec.expired_at
        return Record(
            expires_at=rec.expires_at,
            id=rec.id,
            user=sys.intern(rec.user or DEFAULT_USER),
            ttl=self._shared_ttl(ttl),
            meta_json=self._shared_meta(meta_json),
            created_at=rec.created_at,
            last_access=rec.last_access,
            expired_at=expired_at,
            version=version,
            imported_at=imported_at,
        )

    def _shared_meta(self, meta_json: bytes) -> bytes:
        if len(meta_json) > SHARED_META_BYTES:
            return meta_json
        held = self._metas.get(meta_json)
        if held is None:
            if len(self._metas) >= SHARED_MAX:
                self._metas = {EMPTY_META: EMPTY_META}
            held = self._metas[meta_json] = meta_json
        return held

    def _shared_ttl(self, ttl: int) -> int:
        held = self._ttls.get(ttl)
        if held is None:
            if len(self._ttls) >= SHARED_MAX:
                self._ttls = {}
            held = self._ttls[ttl] = ttl
        return held

    # -- time ------------------------------------------------------------

    def _deadline(self, record: Record, now: int, ttl: int) -> int:
        deadline = now + ttl * US
        cap = self.rules.max_lifetime
        if cap:
            deadline = min(deadline, record.created_at + cap * US)
        return deadline

    def _lazy_expire(self, record: Record, now: int, out: list[Change]) -> Record:
        """Expire ``record`` if its deadline has come."""
        if record.status is ACTIVE and record.expires_at <= now:
            return self._expire(record, now, out)
        return record

    def _expire(self, record: Record, now: int, out: list[Change]) -> Record:
        # A session expires at its deadline, not when someone notices: the
        # record reads the same whether the timer, a get, or a replay after
        # downtime expired it, and retention counts from the real expiry.
        expired_at = min(now, record.expires_at)
        after = _replace(record, expired_at=expired_at, version=_bumped(record.version))
        self._put(record.id, record, after)
        self._record(out, Change("expired", record.id, record, after))
        return after

    def _is_due_entry(self, sid: str, deadline: int) -> bool:
        record = self.peek(sid)
        return record is not None and record.expired_at is None and record.expires_at == deadline

    def _is_purge_entry(self, sid: str, expired_at: int) -> bool:
        record = self.peek(sid)
        return (
            record is not None and record.status is EXPIRED and _purge_key(record) == expired_at
        )

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
                record = self.peek(entry.id)
                assert record is not None
                self._expire(record, now, changes)
        return changes

    def purge_due(self, now: int, limit: int | None = None) -> list[Change]:
        """Remove expired sessions kept longer than ``expired_retention``
        (0: kept until cleanup); at most ``limit`` queue entries examined."""
        retention = self.rules.expired_retention
        if not retention:
            return []
        changes: list[Change] = []
        for expired_at, sid in self._purge.pop_due(now - retention * US, limit):
            if self._is_purge_entry(sid, expired_at):
                record = self.peek(sid)
                assert record is not None
                seq = self._put(sid, record, None)
                self._record(changes, Change("purged", sid, record, None, seq))
        return changes

    def change_rules(self, now: int, rules: Rules) -> list[Change]:
        """Adopt new settings. When ``max_lifetime`` comes down (or is set
        where there was none), every session is brought within it at once,
        so that every read agrees with the cap in force: the changes that
        does are returned, to be persisted (or handed to ``revert``, and
        the old rules put back, if the journal refuses them)."""
        old = self.rules.max_lifetime
        self.rules = rules
        cap = rules.max_lifetime
        if cap and (not old or cap < old):
            return self.cap_lifetimes(now)
        return []

    def cap_lifetimes(self, now: int) -> list[Change]:
        """Bring every active session within ``max_lifetime``: a deadline
        later than creation + cap comes forward to it, and a session past
        that already expires, at that moment. For a lowered cap, and at
        start (the config file may have lowered it while the daemon was
        down). The version goes up as for any change the daemon makes on
        its own."""
        cap = self.rules.max_lifetime * US
        if not cap:
            return []
        live = list(filter(None, self._slots))
        ends = map(add, map(_CREATED, live), repeat(cap))
        over = compress(live, map(
            and_, map(gt, map(_EXPIRES, live), ends), map(is_, map(_EXPIRED_AT, live), repeat(None))
        ))
        changes: list[Change] = []
        for record in list(over):
            end = record.created_at + cap
            version = _bumped(record.version)
            if end <= now:
                after = _replace(record, expires_at=end, expired_at=end, version=version)
                self._put(record.id, record, after)
                self._record(changes, Change("expired", record.id, record, after))
            else:
                after = _replace(record, expires_at=end, version=version)
                self._put(record.id, record, after)
                changes.append(Change("updated", record.id, record, after))
        return changes

    # -- the one place state changes -------------------------------------

    def _record(self, out: list[Change], change: Change) -> None:
        """Append a change, keeping the counters that ``revert`` undoes."""
        if change.kind == "expired":
            self.expiries_done += 1
        elif change.kind == "purged":
            self.purges_done += 1
        out.append(change)

    def _put(self, sid: str, before: Record | None, after: Record | None) -> int:
        """Replace ``before`` by ``after`` (either may be ``None``), keeping
        every counter, index and queue in step. A new record goes at the end
        of creation order, a record being put back where its ``seq`` says.
        Returns the record's sequence number."""
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
            self._place(sid, before, after)
            return after.seq
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
            self._slots[self._slot_of(before.seq)] = None
            if not self._reverting:
                self._maybe_pack()
            return before.seq
        self._ttl_sum += after.ttl
        self._users[after.user] += 1
        active = after.expired_at is None
        if active:
            self._active += 1
        self._place(sid, before, after)
        # The queues are told last: pruning asks whether entries are live,
        # which reads the index just written.
        if active:
            new_deadline = (
                before is None
                or before.expired_at is not None
                or before.expires_at != after.expires_at
            )
            if new_deadline:
                self.deadlines_queued += 1
                self._expiry.add(after)
                if self._expiry.needs_prune(self._active):
                    self._expiry.prune(self._is_due_entry)
        else:
            key = _purge_key(after)
            if before is None or before.expired_at is None or _purge_key(before) != key:
                self.deadlines_queued += 1
                self._purge.push(key, sid)
                if self._purge.needs_prune(len(self._index) - self._active):
                    self._purge.prune(self._is_purge_entry)
        return after.seq

    def _place(self, sid: str, before: Record | None, after: Record) -> None:
        self._index[sid] = after
        if before is not None:
            # A record made here carries its session's seq already; one
            # read or imported is adopted into it.
            after.seq = before.seq
            self._slots[self._slot_of(before.seq)] = after
            return
        if after.seq < 0:
            after.seq = self._next_seq
            self._next_seq += 1
            self._slots.append(after)
            self._seqs.append(after.seq)
            return
        # Putting a removed record back where it was in creation order.
        end = len(self._seqs) if self._unsorted_from is None else self._unsorted_from
        slot = bisect_left(self._seqs, after.seq, 0, end)
        if slot < end and self._seqs[slot] == after.seq:
            assert self._slots[slot] is None
            self._slots[slot] = after
            return
        # Its empty slot was packed away since. Inserting in place would cost
        # O(n) per record; append now and sort once when the revert ends.
        if self._unsorted_from is None:
            self._unsorted_from = len(self._slots)
        self._slots.append(after)
        self._seqs.append(after.seq)

    def _slot_of(self, seq: int) -> int:
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

    def _maybe_pack(self) -> None:
        dead = len(self._slots) - len(self._index)
        if dead > PACK_SLACK and dead > len(self._index):
            self._slots = list(filter(None, self._slots))
            self._seqs = array("q", map(_SEQ, self._slots))

    def revert(self, changes: list[Change]) -> None:
        """Undo ``changes`` (newest first): the journal refused them. The
        store, its counters and creation order end as they were before."""
        self._reverting = True
        try:
            for change in reversed(changes):
                if change.kind == "expired":
                    self.expiries_done -= 1
                elif change.kind == "purged":
                    self.purges_done -= 1
                self._put(change.sid, change.after, change.before)
        finally:
            self._reverting = False
            if self._unsorted_from is not None:
                self._unsorted_from = None
                self._sort_slots()
            self._maybe_pack()

    def _sort_slots(self) -> None:
        # Two sorted runs (the slots, then what was put back): timsort
        # merges them in linear time.
        seqs = self._seqs
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        self._seqs = array("q", [seqs[i] for i in order])
        self._slots = [self._slots[i] for i in order]

    # -- replay ----------------------------------------------------------

    def load(self, session: Session) -> None:
        """Replay a journal put line: last line for an id wins."""
        record = self._normalise(session)
        self._put(record.id, self.peek(record.id), record)

    def remove(self, sid: str) -> None:
        """Replay a journal delete line (absent ids are fine: idempotent)."""
        current = self.peek(sid)
        if current is not None:
            self._put(sid, current, None)

    def replay(self, items: Sequence[Record | Session | str]) -> None:
        """Replay journal lines in order: a ``Record`` (a line in the form
        the daemon writes, see ``records.read_block``) is adopted as it is,
        a ``Session`` (any other put line) is checked as ``load`` checks, an
        id is removed. Last line for an id wins.

        Raises ``ReplayRefused`` for the first item the rules refuse."""
        if all(map(isinstance, items, repeat(Record))):
            if self._adopt_new(cast("Sequence[Record]", items)):
                return
        for i, item in enumerate(items):
            try:
                if isinstance(item, str):
                    self.remove(item)
                elif isinstance(item, Record):
                    self._put(item.id, self.peek(item.id), item)
                else:
                    self.load(item)
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
        first = self._next_seq
        self._next_seq += len(records)
        seqs = range(first, self._next_seq)
        deque(map(setattr, records, repeat("seq"), seqs), maxlen=0)
        self._slots.extend(records)
        self._seqs.extend(seqs)
        self._ttl_sum += sum(map(_TTL, records))
        self._users.update(map(_USER, records))
        active = list(compress(records, map(is_, map(_EXPIRED_AT, records), repeat(None))))
        self._active += len(active)
        self.deadlines_queued += len(records)
        self._expiry.add_many(active)
        if len(active) < len(records):
            self._purge.add_many(
                [(_purge_key(r), r.id) for r in records if r.expired_at is not None]
            )
        return True


def _purge_key(record: Record) -> int:
    """When a record's retention starts: its expiry, or its import if that
    was later (an import keeps what it brought in for a whole retention)."""
    if record.expired_at is None:
        return record.expires_at
    imported = record.imported_at
    return record.expired_at if imported is None or imported < record.expired_at else imported
