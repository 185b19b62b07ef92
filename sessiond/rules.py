"""The rules of sessions, written once, against the storage interface.

Every operation on one session (and the per-session steps of those on many)
is here, as a function of a ``Sessions`` (the storage interface, below),
the time (``now``, wall-clock microseconds, passed in: nothing here reads a
clock or does I/O) and the request's arguments. An operation checks
everything that can refuse it before it changes anything, so one that
raises has changed nothing; it returns its result and the ``Change``s it
made, which the caller persists (and, if that fails, hands back to the
engine to revert).

Two engines implement ``Sessions``: the in-memory store
(``sessiond.store.Store``, the default), where ``put`` applies a change at
once; and the shared one over Redis/Valkey, where ``peek`` reads the
records a batch fetched and ``put`` collects what to commit
(docs/architecture.md, "The storage interface").
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

import msgspec

from sessiond.errors import Conflict, InvalidRequest, SessionExpired, SessionNotFound
from sessiond.limits import (
    MAX_VERSION,
    TIME_MAX,
    check_key,
    check_meta,
    check_meta_value,
    check_sid,
    check_time,
    check_ttl,
    check_user,
    check_version,
    sized_meta,
    valid_id,
)
from sessiond.model import (
    ACTIVE,
    CREATED,
    DEFAULT_USER,
    DELETED,
    EMPTY_META,
    EXPIRED,
    UPDATED,
    US,
    Change,
    ImportedSession,
    Record,
    Session,
    new_id,
)

_replace = msgspec.structs.replace


class Rules(msgspec.Struct, kw_only=True):
    """The settings the rules depend on (seconds; 0 means none)."""

    default_ttl: int = 3600
    max_lifetime: int = 0
    expired_retention: int = 7 * 86400


class Sessions(Protocol):
    """The storage interface: what the rules need of an engine."""

    rules: Rules

    def peek(self, sid: str) -> Record | None:
        """The stored record as it is, with no rule applied."""

    def put(
        self, out: list[Change], kind: str, before: Record | None, after: Record | None
    ) -> None:
        """Replace ``before`` by ``after`` (``None``: absent), and append the
        ``Change`` to ``out``."""

    def shared_meta(self, meta_json: bytes) -> bytes:
        """``meta_json``, or an equal one the engine holds already."""

    def shared_ttl(self, ttl: int) -> int:
        """``ttl``, or an equal one the engine holds already."""


# -- reading ---------------------------------------------------------------


def require(s: Sessions, sid: str) -> Record:
    # A held id needs no check (the common case, and the check is a regular
    # expression); a miss is told apart from a malformed id.
    record = s.peek(sid) if isinstance(sid, str) else None
    if record is None:
        check_sid(sid)
        raise SessionNotFound(f"session {sid} not found")
    return record


def get(s: Sessions, now: int, sid: str, touch: bool = False) -> tuple[Record, list[Change]]:
    """A session; past its deadline it is expired, whether or not the timer
    has got to it yet. ``touch`` records the access and slides the deadline
    to now + ttl (within ``max_lifetime``)."""
    changes: list[Change] = []
    record = lazy_expire(s, require(s, sid), now, changes)
    if touch and record.expired_at is None:
        version = next_version(sid, record.version)
        deadline = capped_deadline(s.rules, record, now, record.ttl)
        if deadline <= now:
            # max_lifetime was lowered below this session's age: sliding it
            # would move its deadline into the past.
            return expire_record(s, record, now, changes), changes
        after = _replace(
            record, last_access=moment(record, now), expires_at=deadline, version=version
        )
        s.put(changes, UPDATED, record, after)
        record = after
    return record, changes


# -- writing ---------------------------------------------------------------


def create(
    s: Sessions,
    now: int,
    *,
    user: str | None = None,
    ttl: int | None = None,
    meta: dict[str, Any] | None = None,
    sid: str | None = None,
) -> tuple[Record, list[Change]]:
    if sid is None:
        sid = new_id()
    else:
        check_sid(sid)
    if s.peek(sid) is not None:
        raise Conflict(f"session {sid} already exists")
    check_user(user)
    rules = s.rules
    ttl = check_ttl(rules.default_ttl if ttl is None else ttl)
    meta_json = s.shared_meta(check_meta(meta)) if meta else EMPTY_META
    cap = rules.max_lifetime
    record = Record(
        expires_at=min(now + (min(ttl, cap) if cap else ttl) * US, TIME_MAX),
        id=sid,
        user=sys.intern(user) if user else DEFAULT_USER,
        ttl=s.shared_ttl(ttl),
        meta_json=meta_json,
        created_at=now,
        last_access=now,
        expired_at=None,
        version=1,
    )
    changes: list[Change] = []
    s.put(changes, CREATED, None, record)
    return record, changes


def set(
    s: Sessions, now: int, sid: str, key: str, value: Any, expect_version: int | None = None
) -> tuple[Record, list[Change]]:
    record = writable(s, now, sid, expect_version)
    check_key(key)
    check_meta_value(value, 1)
    meta = record.meta
    meta[key] = value
    # The other entries passed the checks when they were stored.
    return _update(s, record, now, sized_meta(meta))


def unset(
    s: Sessions, now: int, sid: str, key: str, expect_version: int | None = None
) -> tuple[Record, list[Change]]:
    # The key is not checked as a new one: unset is how a key that entered
    # before the rules refused it goes away.
    record = writable(s, now, sid, expect_version)
    meta = record.meta
    if key not in meta:
        raise SessionNotFound(f"session {sid} has no meta key {key!r}")
    del meta[key]
    return _update(s, record, now, sized_meta(meta))


def writable(s: Sessions, now: int, sid: str, expect_version: int | None) -> Record:
    """The record a meta change may be made to, or the refusal."""
    record = require(s, sid)
    # A session past its deadline is refused without being expired here:
    # the refusal must change nothing, and the timer expires it anyway.
    if record.expired_at is not None or record.expires_at <= now:
        raise SessionExpired(f"session {sid} has expired; refresh it with revive first")
    if expect_version is not None and record.version != expect_version:
        raise Conflict(f"session {sid} is at version {record.version}, not {expect_version}")
    next_version(sid, record.version)
    return record


def _update(
    s: Sessions, record: Record, now: int, meta_json: bytes
) -> tuple[Record, list[Change]]:
    after = _replace(
        record,
        meta_json=s.shared_meta(meta_json),
        # moment(record, now), inline: every set and unset comes here.
        last_access=now if now >= record.last_access else record.last_access,
        version=record.version + 1,  # below MAX_VERSION: writable() saw to it
    )
    changes: list[Change] = []
    s.put(changes, UPDATED, record, after)
    return after, changes


def delete(s: Sessions, now: int, sid: str) -> tuple[str, list[Change]]:
    record = require(s, sid)
    changes: list[Change] = []
    s.put(changes, DELETED, record, None)
    return sid, changes


def expire(s: Sessions, now: int, sid: str) -> tuple[Record, list[Change]]:
    """Expire now (idempotent: an expired session is returned as it is)."""
    record = require(s, sid)
    if record.expired_at is not None:
        return record, []
    next_version(sid, record.version)
    changes: list[Change] = []
    return expire_record(s, record, now, changes), changes


def refresh(
    s: Sessions, now: int, sid: str, ttl: int | None = None, revive: bool = False
) -> tuple[Record, list[Change]]:
    """Deadline = now + ttl (the session's own ttl unless given), capped by
    ``max_lifetime``. An expired session needs ``revive``."""
    record = require(s, sid)
    ttl = check_ttl(record.ttl if ttl is None else ttl)
    due = record.expired_at is None and record.expires_at <= now
    if (record.expired_at is not None or due) and not revive:
        raise SessionExpired(f"session {sid} has expired; pass revive to bring it back")
    # Reviving a session the timer has not got to yet expires it first, a
    # version of its own: the refresh's must still fit after it.
    next_version(sid, bumped(record.version) if due else record.version)
    deadline = capped_deadline(s.rules, record, now, ttl)
    if deadline <= now:
        raise SessionExpired(
            f"session {sid} has reached max_lifetime ({s.rules.max_lifetime}s "
            f"from its creation); it cannot be refreshed"
        )
    changes: list[Change] = []
    # Reviving a session the timer has not got to yet: it did expire, and
    # watchers and counters should hear so before it comes back.
    record = lazy_expire(s, record, now, changes)
    after = _replace(
        record,
        ttl=s.shared_ttl(ttl),
        last_access=moment(record, now),
        expires_at=deadline,
        expired_at=None,
        # Its retention will count from its next expiry, which is later.
        imported_at=None,
        version=record.version + 1,
    )
    s.put(changes, UPDATED, record, after)
    return after, changes


def admit(s: Sessions, now: int, session: Session, out: list[Change]) -> tuple[str, bool]:
    """Import one record from elsewhere: a new id is imported, a record with
    a higher version (or the same version and a later ``last_access``)
    replaces ours, anything else is skipped, and so is a record created
    before ours (an earlier session under the same id). Returns what happened
    (``created``, ``updated``, or the reason it was skipped) and whether it
    came in already expired; raises ``InvalidRequest`` if the rules refuse
    it.

    A record is brought within ``max_lifetime``. One that comes in expired,
    or past its deadline, is kept for ``expired_retention`` from now
    (``Record.imported_at``) however long ago it expired: an import must
    not purge at once what it reports as imported."""
    rec = normalise(s, session)
    cap = s.rules.max_lifetime * US
    if cap and rec.expired_at is None and rec.expires_at > rec.created_at + cap:
        rec = _replace(rec, expires_at=rec.created_at + cap)
    late = rec.expired_at is not None or rec.expires_at <= now
    if late:
        rec = _replace(rec, imported_at=now)
    current = s.peek(rec.id)
    if current is None:
        s.put(out, CREATED, None, rec)
        return CREATED, late
    if rec.created_at < current.created_at:
        # A session that held this id before the one here (deleted since,
        # and the id made again): its versions count apart, and a high one
        # must not bring the deleted session back over the new one.
        return "an earlier session under this id (created before the one held)", False
    if (rec.version, rec.last_access) > (current.version, current.last_access):
        s.put(out, UPDATED, current, rec)
        return UPDATED, late
    return "already present and not newer", False


class Imported:
    """What an import did, each record counted once (``count`` or
    ``refuse`` after ``admit``)."""

    __slots__ = ("imported", "updated", "skipped", "already_expired", "reasons")

    def __init__(self) -> None:
        self.imported = self.updated = self.skipped = self.already_expired = 0
        self.reasons: list[str] = []

    def count(self, sid: str, outcome: str, late: bool) -> None:
        if outcome == CREATED:
            self.imported += 1
        elif outcome == UPDATED:
            self.updated += 1
        else:
            self.skipped += 1
            self.reasons.append(f"{sid}: {outcome}")
        self.already_expired += late

    def refuse(self, sid: str, reason: Exception) -> None:
        self.skipped += 1
        self.reasons.append(f"{sid}: {reason}")


def normalise(s: Sessions, rec: Session) -> Record:
    """A record that enters from a file, another daemon or a journal line
    not in the daemon's own form: the one check of the rules for records
    that enter, as ``create`` checks (but names written before control
    characters were refused still load), with ``expired_at`` filled in.

    A ttl of 0 or less (the legacy tool wrote some) means a session expired
    at its deadline; it keeps ``default_ttl`` as its ttl, so that a revive
    gives it a sensible life."""
    if not valid_id(rec.id):
        raise InvalidRequest(f"invalid session id {rec.id!r}")
    if rec.status not in (ACTIVE, EXPIRED):
        raise InvalidRequest(f"unknown status {rec.status!r}")
    check_user(rec.user or None, new=False)
    ttl, status = rec.ttl, rec.status
    if isinstance(ttl, int) and ttl <= 0:
        ttl, status = s.rules.default_ttl, EXPIRED
    check_ttl(ttl)
    if not isinstance(rec.meta, dict):
        raise InvalidRequest(f"meta must be an object, not {type(rec.meta).__name__}")
    meta_json = check_meta(rec.meta, new=False)
    version = check_version(rec.version)
    imported_at = rec.imported_at if isinstance(rec, ImportedSession) else None
    check_time("created_at", rec.created_at)
    check_time("last_access", rec.last_access)
    check_time("expires_at", rec.expires_at)
    check_time("expired_at", rec.expired_at)
    check_time("imported_at", imported_at)
    expired_at = None
    if status != ACTIVE:
        expired_at = rec.expires_at if rec.expired_at is None else rec.expired_at
    return Record(
        expires_at=rec.expires_at,
        id=rec.id,
        user=sys.intern(rec.user or DEFAULT_USER),
        ttl=s.shared_ttl(ttl),
        meta_json=s.shared_meta(meta_json),
        created_at=rec.created_at,
        last_access=rec.last_access,
        expired_at=expired_at,
        version=version,
        imported_at=imported_at,
    )


# -- time ------------------------------------------------------------------


def moment(record: Record, now: int) -> int:
    """The stamp of a change to ``record`` (its ``last_access``, an
    ``expired_at``): ``now``, but never before the session's last access,
    so that a wall clock stepped back (NTP, a restored VM) does not move a
    session's history back (a ``last_access`` before its ``created_at``,
    or before an earlier access). Deadlines are not stamps: they stay
    ``now + ttl`` by the wall clock, so that a session stamped while the
    clock was ahead does not outlive its ttl by the size of the step."""
    return now if now >= record.last_access else record.last_access


def capped_deadline(rules: Rules, record: Record, now: int, ttl: int) -> int:
    """``now + ttl``, within ``max_lifetime`` and the end of 9999: a stamp
    past that (a clock far ahead, a session imported with stamps there)
    would make a journal line no reader takes, and the daemon would not
    start again."""
    deadline = now + ttl * US
    cap = rules.max_lifetime
    if cap:
        deadline = min(deadline, record.created_at + cap * US)
    return min(deadline, TIME_MAX)


def lazy_expire(s: Sessions, record: Record, now: int, out: list[Change]) -> Record:
    """``record``, expired if its deadline has come."""
    if record.expired_at is None and record.expires_at <= now:
        return expire_record(s, record, now, out)
    return record


def expire_record(s: Sessions, record: Record, now: int, out: list[Change]) -> Record:
    # A session expires at its deadline, not when someone notices: the
    # record reads the same whether the timer, a get, or a replay after
    # downtime expired it, and retention counts from the real expiry. One
    # expired before its deadline (``expire``) expires now, stamped as any
    # change (``moment``).
    after = _replace(
        record,
        expired_at=record.expires_at if record.expires_at <= now else moment(record, now),
        version=bumped(record.version),
    )
    s.put(out, EXPIRED, record, after)
    return after


def cap_record(s: Sessions, record: Record, now: int, out: list[Change]) -> None:
    """Bring an active ``record`` within ``max_lifetime``: a deadline later
    than creation + cap comes forward to it, and a session past that
    already expires, at that moment. The version goes up as for any change
    the daemon makes on its own."""
    cap = s.rules.max_lifetime * US
    end = record.created_at + cap
    if not cap or record.expired_at is not None or record.expires_at <= end:
        return
    version = bumped(record.version)
    if end <= now:
        s.put(out, EXPIRED, record,
              _replace(record, expires_at=end, expired_at=end, version=version))
    else:
        s.put(out, UPDATED, record, _replace(record, expires_at=end, version=version))


def doomed(record: Record, now: int, before: int | None) -> bool:
    """Whether ``cleanup`` removes ``record``: expired (or past its
    deadline), or with ``before`` due earlier than it."""
    return (
        record.expired_at is not None
        or record.expires_at <= now
        or (before is not None and record.expires_at < before)
    )


def purge_key(record: Record) -> int:
    """When a record's retention starts: its expiry, or its import if that
    was later (an import keeps what it brought in for a whole retention)."""
    if record.expired_at is None:
        return record.expires_at
    imported = record.imported_at
    return record.expired_at if imported is None or imported < record.expired_at else imported


# -- versions --------------------------------------------------------------


def next_version(sid: str, version: int) -> int:
    """The version of a change a client asks for; refused at the top."""
    if version >= MAX_VERSION:
        # The state refuses it, not the request's shape: a conflict (exit 1),
        # with no pointer to the command's help.
        raise Conflict(
            f"session {sid} is at version {version}, the highest there is: it cannot be "
            f"changed any more; delete it and create it again"
        )
    return version + 1


def bumped(version: int) -> int:
    """The version of a change the daemon makes on its own (an expiry, a
    lowered max_lifetime). At MAX_VERSION it stays: such a change must
    happen anyway, and nobody can compare-and-set on what it leaves (an
    expired session takes no set; a refresh needs its own version)."""
    return version + 1 if version < MAX_VERSION else version
