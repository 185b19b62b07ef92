"""The session record, ids and time helpers.

Timestamps are integers: microseconds since the Unix epoch, UTC. They are
compact in memory (the daemon may hold millions), exact (legacy files carry
microseconds) and cheap to compare; they become ISO 8601 text only at the
edges (journal lines, JSON output).

``Session`` is the record as clients see it (its meta a dict). The daemon
holds ``Record`` instead, a form of the same data sized for millions: see
there.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Final

import msgspec

ACTIVE: Final = sys.intern("active")
EXPIRED: Final = sys.intern("expired")
STATUSES: Final = (ACTIVE, EXPIRED)
DEFAULT_USER: Final = sys.intern("anonymous")

US: Final = 1_000_000
# What a change did to a session: the kinds of ``Change`` and of watch
# events (an expiry's kind is the status it leaves, ``EXPIRED``).
CREATED: Final = sys.intern("created")
UPDATED: Final = sys.intern("updated")
DELETED: Final = sys.intern("deleted")
PURGED: Final = sys.intern("purged")


class Session(msgspec.Struct, kw_only=True, gc=False):
    """One session. Treated as immutable: every change makes a new record,
    so a shallow copy of the store is a consistent snapshot for compaction."""

    id: str
    user: str
    status: str
    ttl: int
    meta: dict[str, Any]
    created_at: int
    last_access: int
    expires_at: int
    expired_at: int | None = None
    version: int = 1

    def seconds_left(self, now: int) -> float:
        """Seconds until the deadline (negative once past it)."""
        return (self.expires_at - now) / US


class ImportedSession(Session, kw_only=True, gc=False):
    """A session read from a journal line that says when it was imported
    (see ``Record.imported_at``). Only the journal's reader makes one: a
    client never sees the field, so the wire form of ``Session`` is as it
    was."""

    imported_at: int


EMPTY_META: Final = b"{}"
# Untyped: a record's meta is an object by construction, and the CLI imports
# this module, so no decoder is built at import.
_decode_meta = msgspec.json.decode


class Record(msgspec.Struct, order=True, gc=False):
    """One session as the daemon holds it: immutable, every change makes a
    new record, so a list of records is a consistent snapshot.

    Sized for millions. Meta is kept as its JSON text: one bytes object
    instead of a dict and its values, invisible to the garbage collector
    (``gc=False`` keeps the record itself out of it too), and what the
    journal writes as it is. The status is not stored: a record is expired
    exactly when it has an ``expired_at``. ``seq`` is the record's place in
    the store's creation order; the store sets it when it adopts the record.

    ``imported_at`` is set only on a record that was imported (legacy
    migration, ``sessionctl import``) already expired or past its deadline:
    the moment of the import, from which its retention counts as well, so
    that an import never purges at once what it has just brought in.

    Records order by deadline first, so the expiry queue can hold them
    directly instead of a (deadline, id) entry for each.
    """

    expires_at: int
    id: str
    user: str
    ttl: int
    meta_json: bytes
    created_at: int
    last_access: int
    expired_at: int | None
    version: int
    imported_at: int | None = None
    seq: int = -1

    @property
    def status(self) -> str:
        return ACTIVE if self.expired_at is None else EXPIRED

    @property
    def meta(self) -> dict[str, Any]:
        """A fresh dict of the meta (the record keeps only its JSON)."""
        return {} if self.meta_json is EMPTY_META else _decode_meta(self.meta_json)

    def seconds_left(self, now: int) -> float:
        """Seconds until the deadline (negative once past it)."""
        return (self.expires_at - now) / US

    def to_session(self) -> Session:
        """The record as clients see it."""
        return Session(
            id=self.id,
            user=self.user,
            status=ACTIVE if self.expired_at is None else EXPIRED,
            ttl=self.ttl,
            meta={} if self.meta_json is EMPTY_META else _decode_meta(self.meta_json),
            created_at=self.created_at,
            last_access=self.last_access,
            expires_at=self.expires_at,
            expired_at=self.expired_at,
            version=self.version,
        )


class Change(msgspec.Struct, frozen=True, gc=False):
    """One transition of one session: ``before``/``after`` are ``None`` for
    absent. ``kind`` is created, updated, expired, deleted or purged. For a
    removal, ``seq`` is the record's place in creation order, so that a
    revert can put it back there.

    A Struct, not a NamedTuple: every write makes one, and a NamedTuple's
    constructor is Python code, several times dearer. ``gc=False``: it
    holds strings and records, which hold nothing that could make a cycle."""

    kind: str
    sid: str
    before: Record | None
    after: Record | None
    seq: int = -1


def now_us() -> int:
    """The wall clock, in microseconds since the epoch."""
    return time.time_ns() // 1000


if os.environ.get("SESSIOND_CLOCK_OFFSET_FILE"):
    # Tests only: a wall clock a test can step while the daemon runs (see
    # sessiond.failpoints.offset_clock). Chosen here, once, so that every
    # other process pays nothing.
    from sessiond.failpoints import offset_clock

    now_us = offset_clock(now_us)  # noqa: F811


def new_id() -> str:
    """128 random bits as 32 hex characters."""
    return os.urandom(16).hex()


def iso(us: int) -> str:
    """``2026-11-24T09:13:42.067680Z``: the legacy tool's timestamp shape."""
    secs, frac = divmod(us, US)
    t = time.gmtime(secs)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{frac:06d}Z"
    )


def format_duration(seconds: float) -> str:
    """``1d 2h``, ``59m 58s``, ``12s``: two units at most, for people."""
    s = int(abs(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return " ".join(parts)
