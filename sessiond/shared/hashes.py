"""A session in the shared engine: its hash, its index entry, its changes.

A session is one hash of short fields, its meta kept as the JSON text the
daemon holds (the engine never parses it: Lua's JSON would change numbers
and key order). A request's changes reach the engine as one group
(``group``): each record's expected version and final state, the counters
they move, and the events they make.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from sessiond import rules
from sessiond.model import EXPIRED, PURGED, Change, Record

# u user, t ttl, m meta JSON, c created, a last access, e expires, x expired
# (absent while active), v version, i imported (absent but on imports),
# q place in creation order (set by the engine).
FIELDS = ("u", "t", "m", "c", "a", "e", "x", "v", "i")
ABSENT = "-"
_encode = msgspec.msgpack.encode


def record_of(sid: str, reply: Any) -> Record | None:
    """The record an HGETALL answered (``None``: no such session)."""
    if not reply:
        return None
    if isinstance(reply, dict):
        fields = {_text(k): v for k, v in reply.items()}
    else:
        it = iter(reply)
        fields = {_text(k): v for k, v in zip(it, it, strict=True)}
    x, i = fields.get("x"), fields.get("i")
    return Record(
        expires_at=int(fields["e"]),
        id=sid,
        user=sys.intern(_text(fields["u"])),
        ttl=int(fields["t"]),
        meta_json=bytes(fields["m"]),
        created_at=int(fields["c"]),
        last_access=int(fields["a"]),
        expired_at=None if x is None else int(x),
        version=int(fields["v"]),
        imported_at=None if i is None else int(i),
        seq=int(fields.get("q", -1)),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def record_args(sid: str, record: Record | None) -> list[Any]:
    """A record's final state as the commit script reads it."""
    if record is None:
        return ["0"]
    x, i = record.expired_at, record.imported_at
    index = ("d", record.expires_at) if x is None else ("p", rules.purge_key(record))
    return [
        "1", record.user, record.ttl, record.meta_json, record.created_at,
        record.last_access, record.expires_at, "" if x is None else x,
        record.version, "" if i is None else i, *index,
    ]


class Group:
    """One request's changes, as the commit script takes them."""

    __slots__ = ("first", "final", "deltas", "users", "events")

    def __init__(self, changes: list[Change], now: int) -> None:
        # Per session: what it was when read (its first change's before)
        # and what it ends as (its last change's after).
        self.first: dict[str, Record | None] = {}
        self.final: dict[str, Record | None] = {}
        self.deltas = [0, 0, 0, 0, 0]  # total, active, ttl_sum, expiries, purges
        self.users: dict[str, int] = {}
        self.events: list[Any] = []
        for c in changes:
            self.first.setdefault(c.sid, c.before)
            self.final[c.sid] = c.after
            self._count(c)
            record = c.after if c.after is not None else c.before
            assert record is not None
            session = _encode(record.to_session())
            self.events += [c.kind, c.sid, now, record.user, session]

    def _count(self, c: Change) -> None:
        before, after, d = c.before, c.after, self.deltas
        d[0] += (after is not None) - (before is not None)
        d[1] += (after is not None and after.expired_at is None) - (
            before is not None and before.expired_at is None
        )
        d[2] += (after.ttl if after is not None else 0) - (before.ttl if before is not None else 0)
        d[3] += c.kind == EXPIRED
        d[4] += c.kind == PURGED
        for record, step in ((before, -1), (after, 1)):
            if record is not None:
                self.users[record.user] = self.users.get(record.user, 0) + step

    def args(self, key_index: dict[str, int]) -> list[Any]:
        """The group's part of the commit script's ARGV (``key_index``: a
        session's place in KEYS)."""
        out: list[Any] = [len(self.final)]
        for sid, record in self.final.items():
            first = self.first[sid]
            out += [key_index[sid], sid, ABSENT if first is None else first.version]
            out += record_args(sid, record)
        out += self.deltas
        users = [(u, n) for u, n in self.users.items() if n]
        out.append(len(users))
        for user, n in users:
            out += [user, n]
        out.append(len(self.events) // 5)
        out += self.events
        return out
