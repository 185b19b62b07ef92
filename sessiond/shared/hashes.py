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
from sessiond.errors import InternalError
from sessiond.model import EXPIRED, PURGED, Change, Record

# u user, t ttl, m meta JSON, c created, a last access, e expires, x expired
# (absent while active), v version, i imported (absent but on imports),
# q place in creation order (set by the engine).
FIELDS = ("u", "t", "m", "c", "a", "e", "x", "v", "i")
# What a read asks for, in this order (HMGET): a list of values in a known
# order makes a record without the dict an HGETALL's pairs need first.
READ = (*FIELDS, "q")
ABSENT = "-"
_encode = msgspec.msgpack.encode
# A meta is a JSON object (``rules.check_meta`` makes every one sessiond writes).
_meta_decoder = msgspec.json.Decoder(dict)


def record_of(sid: str, values: Any) -> Record | None:
    """The record an HMGET of ``READ`` answered (``None``: no such session).
    Raises ``InternalError`` for a hash changed outside sessiond so that it
    no longer makes a record: a field every record has is missing, one
    that holds a number does not, the version is not written as sessiond
    writes it, or the meta is not a JSON object (``_damage`` says which)."""
    u, t, m, c, a, e, x, v, i, q = values
    if u is None:
        if values.count(None) == len(READ):
            return None
        # Some fields without the user: no hash sessiond writes (it writes
        # every field at once). Read as absent, a create of its id would be
        # refused by the commit, which finds its version, for as long as
        # it tried.
        raise InternalError(f"session {sid} in the engine {_damage(values)}")
    try:
        record = Record(
            expires_at=int(e),
            id=sid,
            user=sys.intern(_text(u)),
            ttl=int(t),
            meta_json=bytes(m),
            created_at=int(c),
            last_access=int(a),
            expired_at=None if x is None else int(x),
            version=int(v),
            imported_at=None if i is None else int(i),
            seq=-1 if q is None else int(q),
        )
        # The meta is checked here, once, rather than where it is decoded:
        # replies, events (the expiry timer's commit among them) and rules
        # decode it, and an export writes it as it is. A decode of a small
        # meta costs a fraction of the rest of this function.
        _meta_decoder.decode(record.meta_json)
    except (TypeError, ValueError, msgspec.DecodeError) as exc:
        # int(None) and bytes(None) are TypeErrors; int(b"x") and a user
        # that is not UTF-8 are ValueErrors; a meta that is not JSON, or
        # not an object, a DecodeError.
        raise InternalError(f"session {sid} in the engine {_damage(values)}") from exc
    if (len(v) != len(str(record.version)) or (q is not None and len(q) != len(str(record.seq)))
            or not _in_range(record)):
        # int() takes "01", " 1", "+1" and "1_0"; the commit script compares
        # the version as text, with the one sessiond writes (such a record
        # would be refused at every commit), and removes the place in the
        # creation order by its text. And a number past 64 bits would fail
        # where the record is sent (a reply, an event).
        raise InternalError(f"session {sid} in the engine {_damage(values)}")
    return record


_LEAST, _MOST = -(2**63), 2**63 - 1


def _in_range(r: Record) -> bool:
    numbers = [r.expires_at, r.ttl, r.created_at, r.last_access, r.version, r.seq]
    if r.expired_at is not None:
        numbers.append(r.expired_at)
    if r.imported_at is not None:
        numbers.append(r.imported_at)
    return _LEAST <= min(numbers) and max(numbers) <= _MOST


# What a record needs of its hash: fields every record has, and those that
# hold integers when present.
_NEEDED = ("u", "t", "m", "c", "a", "e", "v")
_INTEGERS = ("t", "c", "a", "e", "x", "v", "i", "q")


def _damage(values: Any) -> str:
    """What is wrong with an HMGET of ``READ`` that makes no record, in
    words that follow "session ID in the engine"."""
    fields = dict(zip(READ, values, strict=True))
    lacking = [n for n in _NEEDED if fields[n] is None]
    if lacking:
        what = f"lacks the field(s) {', '.join(lacking)} every session has"
    else:
        bad = [n for n in _INTEGERS if fields[n] is not None and not _integer(fields[n])]
        if bad:
            what = f"holds something other than a whole number in the field(s) {', '.join(bad)}"
        elif big := [n for n in _INTEGERS if fields[n] is not None
                     and not _LEAST <= int(fields[n]) <= _MOST]:
            what = f"holds a number past 64 bits in the field(s) {', '.join(big)}"
        elif odd := [n for n in ("v", "q") if fields[n] is not None
                     and str(int(fields[n])) != _text(fields[n])]:
            what = (
                f"holds a number written otherwise than sessiond writes it (a leading "
                f"zero, a sign, a space or an underscore) in the field(s) {', '.join(odd)}"
            )
        elif (meta := _meta_fault(fields["m"])) is not None:
            what = f"holds a meta (field m) that is {meta}"
        else:
            what = "holds a user name that is not UTF-8 text"
    return what + ": its hash was changed outside sessiond"


def _integer(value: bytes | str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _meta_fault(value: bytes) -> str | None:
    """What is wrong with a stored meta (``None``: nothing)."""
    try:
        meta = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return "not JSON"
    if not isinstance(meta, dict):
        return f"JSON but not an object ({type(meta).__name__})"
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _values(record: Record) -> list[Any]:
    """A record's FIELDS, as stored ("": absent)."""
    x, i = record.expired_at, record.imported_at
    return [
        record.user, record.ttl, record.meta_json, record.created_at, record.last_access,
        record.expires_at, "" if x is None else x, record.version, "" if i is None else i,
    ]


def _index(record: Record) -> tuple[str, int]:
    """The index a record is in ("d" due, "p" purge) and its score there."""
    if record.expired_at is None:
        return "d", record.expires_at
    return "p", rules.purge_key(record)


def record_args(first: Record | None, record: Record | None) -> list[Any]:
    """A record's change from ``first`` (as read) to its final state, as
    the commit script reads it: "0" (removed), or "1", the fields to set
    (a count, then names and values), the fields to remove (a count, then
    names), the index to enter it in and the one to take it out of ("d",
    "p", "-": neither), and its score. Only what differs from ``first`` is
    sent: the commit applies it only if the record is still at
    ``first``'s version, and every change but an import of an equal
    version bumps it; for that one, and a new record, everything is."""
    if record is None:
        return ["0"]
    new = _values(record)
    if first is None or first.version == record.version:
        old: list[Any] = [None] * len(FIELDS)
    else:
        old = _values(first)
    puts: list[Any] = []
    gone: list[str] = []
    for name, value, was in zip(FIELDS, new, old, strict=True):
        if value == was:
            continue
        if value == "":
            if first is not None:
                gone.append(name)
        else:
            puts += [name, value]
    kind, score = _index(record)
    if first is None:
        put, drop = kind, "-"
    else:
        was_kind, was_score = _index(first)
        if (was_kind, was_score) == (kind, score):
            put, drop = "-", "-"
        else:
            put, drop = kind, (was_kind if was_kind != kind else "-")
    return ["1", len(puts) // 2, *puts, len(gone), *gone, put, drop, score]


def expected(record: Record) -> str:
    """What the commit script compares a record with before it writes:
    its version and its place in creation order (``q``). The version alone
    would let a change read from a session that was then deleted, and made
    again under its id up to the same version, land on the new one (the
    versions of an id start again at 1; its places never come again). A
    record made earlier in the same commit has no place yet: its version
    alone is compared, in a script that made it a moment before."""
    return f"{record.version}/{record.seq if record.seq >= 0 else ''}"


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
            out += [key_index[sid], sid, ABSENT if first is None else expected(first)]
            out += record_args(first, record)
        out += self.deltas
        users = [(u, n) for u, n in self.users.items() if n]
        out.append(len(users))
        for user, n in users:
            out += [user, n]
        out.append(len(self.events) // 5)
        out += self.events
        return out
