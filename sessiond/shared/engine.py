"""The shared engine: a namespace's sessions in Redis or Valkey.

The second implementation of the storage interface (docs/architecture.md):
the rules run in the daemon, as in the local mode, on records read from the
engine (``fetch``, with the engine's clock: every daemon of the fleet uses
the one clock); what they change is committed back with a compare and set
on each record's version (``commit``), in one script a request, so that two
daemons racing on one session never lose an update: the loser's commit is
refused, and it runs its request again on what the winner left.

Every key of a namespace carries the namespace as its hash tag, so all of
them are in one slot of a Cluster: a script touches only its own slot.

    sd:{NS}:s:<id>    a session (``sessiond.shared.hashes``)
    sd:{NS}:o:<n>     creation order, in buckets: sequence number -> id, for
                      the numbers n * 128 to n * 128 + 127 (a small hash is
                      packed by the engine: a fraction of a sorted set's
                      cost a member; a list pages through them in order)
    sd:{NS}:due       active sessions by deadline
    sd:{NS}:purge     expired sessions by when their retention starts
    sd:{NS}:users     sessions by user (counts)
    sd:{NS}:counters  total, active, ttl_sum, expiries, purges, seq, events,
                      layout (``LAYOUT``, this list's)
    sd:{NS}:events    the stream of events (watch, settings changes)
    sd:{NS}:config    the namespace's settings (JSON values)
    sd:{NS}:lease     which daemon runs the expiry timer
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sessiond.errors import Conflict, EngineError, InternalError
from sessiond.model import US, Change, Record
from sessiond.shared import scripts
from sessiond.shared.hashes import READ, Group, record_of
from sessiond.shared.link import Link

# A scan looks at this many records at most per round trip.
SCAN_MOST = 2000
# The layout of the keys above. The first (a sorted set ``sd:{NS}:order``,
# never in a release) is refused by name at start.
LAYOUT = 2
# How the commit script's refusal of a damaged key begins.
DAMAGED = "DAMAGED "


# An index entry that makes no record: its id as the engine answered it
# (which may not be UTF-8 text), and what is wrong with it, in words.
Aside = tuple[str | bytes, str]


class Damaged(NamedTuple):
    """A session a scan met that the engine holds damaged (changed outside
    sessiond), in its place in the creation order."""

    seq: int
    sid: str | bytes
    why: str


def _now(reply: Sequence[Any]) -> int:
    """TIME's answer, in microseconds."""
    return int(reply[0]) * US + int(reply[1])


class Due(NamedTuple):
    """What falls due (``SharedStore.falling_due``), on the engine's clock."""

    now: int
    expiring: list[Record]
    next_due: int | None
    purging: list[Record]
    next_purge: int | None
    # Entries of the indexes that make no record: (id, what is wrong).
    aside: list[Aside]


class SharedStore:
    """One namespace on one engine."""

    def __init__(self, link: Link, namespace: str) -> None:
        self.link = link
        self.namespace = namespace
        tag = "sd:{" + namespace + "}:"
        self.prefix = tag + "s:"
        self.order, self.due, self.purge = tag + "o:", tag + "due", tag + "purge"
        self.first_order = tag + "order"
        self.users, self.counters = tag + "users", tag + "counters"
        self.events, self.config, self.lease = tag + "events", tag + "config", tag + "lease"
        self._tag = tag
        link.kinds = self.kind_of
        self._commit = link.script(scripts.COMMIT)
        self._page = link.script(scripts.PAGE)
        self._due = link.script(scripts.DUE)
        self._set_aside = link.script(scripts.SET_ASIDE)
        self._stats = link.script(scripts.STATS)
        self._config_set = link.script(scripts.CONFIG_SET)
        self._lease = link.script(scripts.LEASE)
        self._release = link.script(scripts.RELEASE)
        self._layout = link.script(scripts.LAYOUT)
        # Events kept in the stream for watchers that fall behind or come
        # back (the event_retention setting, kept up to date by the engine).
        self.maxlen = 100_000
        # This daemon's mark on the events it adds: its own stream reader
        # skips them, having heard of them here (``on_deadline``).
        self.origin = os.urandom(6).hex()
        self.on_deadline: Callable[[int], None] = _nobody

    def key(self, sid: str) -> str:
        return self.prefix + sid

    def kind_of(self, key: str) -> str | None:
        """The type ``key`` holds in this layout, as TYPE names it
        (``None``: not a key of the namespace's)."""
        if not key.startswith(self._tag):
            return None
        name = key[len(self._tag):]
        if name.startswith(("s:", "o:")):
            return "hash"
        return _KINDS.get(name)

    # -- reading -----------------------------------------------------------

    async def time(self) -> int:
        (reply,) = await self.link.call([("TIME",)])
        return _now(reply)

    async def fetch(
        self, sids: Sequence[str], damaged: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Record | None]]:
        """The engine's time and the records of ``sids``, in one round trip.
        A session the engine holds damaged (changed outside sessiond: a
        hash that makes no record, a key that is no hash) raises
        ``InternalError`` naming it; given ``damaged``, it is put there
        instead (its id, and those words), and left out of the records."""
        replies = await self.link.call(
            [("TIME",)] + [("HMGET", self.key(sid), *READ) for sid in sids]
        )
        wrong = [
            sid for sid, reply in zip(sids, replies[1:], strict=True)
            if isinstance(reply, EngineError) and reply.text.startswith("WRONGTYPE")
        ]
        said: dict[str, str] = {}
        if wrong:
            kinds = await self._calls([("TYPE", self.key(sid)) for sid in wrong])
            said = {sid: self._not_a_hash(sid, kind)
                    for sid, kind in zip(wrong, kinds, strict=True)}
            if damaged is None:
                raise InternalError(said[wrong[0]])
        rest = replies[1:]
        _raise_errors([r for sid, r in zip(sids, rest, strict=True) if sid not in said]
                      if said else rest)
        if damaged is None:
            # The hot path (every read and change): no damage to set aside.
            return _now(replies[0]), {
                sid: record_of(sid, r) for sid, r in zip(sids, rest, strict=True)
            }
        records: dict[str, Record | None] = {}
        for sid, reply in zip(sids, rest, strict=True):
            why = said.get(sid)
            if why is None:
                try:
                    records[sid] = record_of(sid, reply)
                    continue
                except InternalError as exc:
                    why = str(exc)
            damaged[sid] = why
        return _now(replies[0]), records

    def _not_a_hash(self, sid: str | bytes, kind: bytes | str) -> str:
        """What is wrong with a session's key that holds ``kind`` (as TYPE
        names it) rather than a hash: in the words a damaged hash is named
        in (``hashes.record_of``)."""
        name = _name(sid)
        return (f"session {name} in the engine is not a hash (its key {self.prefix}{name} holds "
                f"a {_text(kind)}): it was changed outside sessiond; delete or repair that key "
                f"in the engine")

    async def page(
        self, after: int, want: int, user: str | None, most: int = SCAN_MOST,
        cursor: bool = False,
    ) -> tuple[int, int, bool, list[Record | Damaged]]:
        """The engine's time, then up to ``want`` records (of ``user``) after
        sequence number ``after`` in creation order: the last sequence number
        looked at, whether records follow it, and the records, a session
        the engine holds damaged (which cannot be told from another user's
        when its key is no hash) in its place as a ``Damaged``. Raises
        ``Conflict`` for an ``after`` that is a list's ``cursor`` past every
        sequence number given: the engine lost the sessions made since."""
        time, (last, more, flat, top) = await self._calls([
            ("TIME",),
            ("EVALSHA", self._page, 2, self.order, self.counters, self.prefix, after, want,
             max(most, want), user or ""),
        ])
        if cursor and after > int(top):
            # The page after it would be empty, and the list seem done,
            # while sessions made since the loss take the places it passed.
            raise Conflict(
                f"the list cursor {after} is past the namespace's last session ({top}): the "
                f"shared engine {self.link.node} lost the sessions made since the list "
                f"began (FLUSHALL, a restart from an older save or without persistence, or a "
                f"failover to a replica that lacked the last), and what changed with them "
                f"cannot be told; list again from the start"
            )
        entries: list[Record | Damaged] = []
        it = iter(flat)
        for sid, seq, fields in zip(it, it, it, strict=True):
            try:
                record = self._record(sid, fields)
            except InternalError as exc:
                entries.append(Damaged(int(seq), sid, str(exc)))
                continue
            if record is not None:  # a hash deleted by hand: as deleted
                entries.append(record)
        return _now(time), int(last), bool(int(more)), entries

    async def falling_due(self, most: int, retention: int) -> Due:
        """In one round trip: the engine's time, up to ``most`` active
        records whose deadline has come and up to ``most`` expired ones
        whose ``retention`` (microseconds; 0: none is purged by time) has
        run out, earliest first, when the next of each falls due, and the
        entries among them that make no record (``Due.aside``), those of
        score -inf among them."""
        (reply,) = await self._calls([
            ("EVALSHA", self._due, 2, self.due, self.purge, self.prefix, most, retention),
        ])
        secs, micros, expiring, next_due, due_none, purging, next_purge, purge_none = reply
        aside: list[Aside] = []
        due = Due(
            _now([secs, micros]), self._records(expiring, aside), _score_of(next_due),
            self._records(purging, aside), _score_of(next_purge), aside,
        )
        for index, score, unbounded in (
            (self.due, next_due, due_none), (self.purge, next_purge, purge_none),
        ):
            aside += [_no_time(sid, "-inf", index) for sid in unbounded]
            if score is not None and float(score) == math.inf:
                await self._unbounded(index, aside)
        return due

    async def _unbounded(self, index: str, aside: list[Aside]) -> None:
        """Entries of ``index`` whose score is +inf (put there by hand: the
        engine refuses NaN), added to ``aside``: they would never fall due,
        and next to the finite scores one would be read as the next
        deadline. Looked up only when the next score is +inf; those of
        -inf come with what is due (``scripts.DUE``)."""
        (ids,) = await self._calls([
            ("ZRANGE", index, "+inf", "+inf", "BYSCORE", "LIMIT", 0, SCAN_MOST),
        ])
        aside += [_no_time(sid, "+inf", index) for sid in ids]

    async def set_aside(self, sids: Sequence[str | bytes]) -> None:
        """Take ``sids`` off the indexes of deadlines, which only the
        expiry timer reads: sessions whose hashes make no record, which
        would otherwise come first in every look at what is due."""
        await self._calls([("EVALSHA", self._set_aside, 2, self.due, self.purge, *sids)])

    async def stats(self) -> tuple[int, dict[str, int], int, int]:
        """The engine's time, the counters, the users, and how many are due
        in the next minute."""
        now = await self.time()
        (reply,) = await self._calls([
            ("EVALSHA", self._stats, 3, self.counters, self.users, self.due,
             now, now + 60 * US),
        ])
        counts, users, soon = reply
        it = iter(counts)
        counters = {_text(k): int(v) for k, v in zip(it, it, strict=True)}
        return now, counters, int(users), int(soon)

    async def layout(self) -> int:
        """The namespace's layout of keys (``LAYOUT`` for a new one, or one
        whose mark the engine lost, which this marks: again if its answer
        was lost). Raises ``ReadOnly`` when one cannot be marked."""
        (reply,) = await self.link.call([
            ("EVALSHA", self._layout, 2, self.counters, self.first_order, LAYOUT),
        ])
        if isinstance(reply, Exception):
            raise reply
        return int(reply)

    async def settings(self) -> dict[str, bytes]:
        """The namespace's settings as stored (JSON text by key)."""
        (reply,) = await self._calls([("HGETALL", self.config)])
        it = iter(reply)
        return {_text(k): bytes(v) for k, v in zip(it, it, strict=True)}

    async def engine_setting(self, name: str) -> str | None:
        """One of the engine's own settings (``CONFIG GET``), or ``None``
        where the engine does not say (a managed one may refuse CONFIG)."""
        (reply,) = await self.link.call([("CONFIG", "GET", name)])
        if isinstance(reply, Exception) or not reply:
            return None
        if isinstance(reply, dict):
            value = next(iter(reply.values()))
        else:
            value = reply[1]
        return _text(value)

    # -- writing -----------------------------------------------------------

    async def commit(self, groups: Sequence[list[Change]], now: int) -> list[bool]:
        """Each group (one request's changes) applied all or nothing, in
        order, if every record it changes is still as it was read; a later
        group on a record of a refused one is refused too. Returns which
        were applied."""
        sids: dict[str, int] = {}
        made = [Group(changes, now) for changes in groups]
        for group in made:
            for sid in group.final:
                sids.setdefault(sid, len(sids) + 7)
        keys = [self.order, self.due, self.purge, self.users, self.counters, self.events]
        keys += [self.key(sid) for sid in sids]
        args: list[Any] = [self.maxlen, self.origin, len(made)]
        for group in made:
            args += group.args(sids)
        (reply,) = await self.link.call(
            [("EVALSHA", self._commit, len(keys), *keys, *args)], writes=True
        )
        if isinstance(reply, Exception):
            raise _refusal(reply)
        applied = [bool(int(r)) for r in reply]
        deadlines = [
            r.expires_at for group, ok in zip(made, applied, strict=True) if ok
            for r in group.final.values() if r is not None and r.expired_at is None
        ]
        if deadlines:
            self.on_deadline(min(deadlines))
        return applied

    async def set_setting(
        self, key: str, value: bytes, now: int, replicas: int | None = None
    ) -> None:
        """Store a setting of the namespace (``replicas``: acknowledged once
        that many replicas have it, rather than the setting's count)."""
        (reply,) = await self.link.call([(
            "EVALSHA", self._config_set, 3, self.config, self.counters, self.events,
            key, value, self.maxlen, now,
        )], writes=True, replicas=replicas)
        if isinstance(reply, Exception):
            raise reply

    async def hold_lease(self, holder: str, ms: int) -> tuple[bool, str | None]:
        """Whether ``holder`` holds the expiry lease (taken or extended for
        ``ms``), and, when another's had no end or one further than ``ms``
        (set by hand, or by a stranger: expiry would stop for as long),
        what was cut to ``ms``: its holder and how long it had left."""
        (reply,) = await self._calls([("EVALSHA", self._lease, 1, self.lease, holder, ms)])
        if not isinstance(reply, list):
            return bool(int(reply)), None
        _, other, left = reply
        had = "no end" if int(left) < 0 else f"{round(int(left) / 1000)}s left"
        return False, f"the expiry lease of {_text(other)!r} ({self.lease}) had {had}"

    async def release_lease(self, holder: str) -> None:
        await self._calls([("EVALSHA", self._release, 1, self.lease, holder)])

    async def _calls(self, commands: Sequence[Any]) -> list[Any]:
        replies = await self.link.call(commands)
        _raise_errors(replies)
        return replies

    def _record(self, sid: bytes | str, fields: Any) -> Record | None:
        """The record of a session a script returned as its id and HMGET of
        ``READ`` (``None``: it has none). Raises ``InternalError`` naming
        what is wrong with one the engine holds damaged: its hash changed
        outside sessiond so that it makes no record, its key no hash (the
        script answered its type), its id not text."""
        try:
            name = _text(sid)
        except UnicodeDecodeError:
            # Not an id sessiond makes (they are ASCII): named as it can be.
            raise InternalError(f"session {_name(sid)} in the engine has an id that is not "
                                f"UTF-8 text: it was written outside sessiond") from None
        if isinstance(fields, bytes):
            raise InternalError(self._not_a_hash(name, fields))
        return record_of(name, fields)

    def _records(self, flat: list[Any], aside: list[Aside]) -> list[Record]:
        """Records a script returned as ids and HMGETs of ``READ``; those
        that make none put in ``aside`` (their ids as the engine holds
        them, and what is wrong, said as a read would say it), an id whose
        hash is gone among them."""
        it = iter(flat)
        records = []
        for sid, fields in zip(it, it, strict=True):
            try:
                record = self._record(sid, fields)
            except InternalError as exc:
                aside.append((sid, str(exc)))
                continue
            if record is not None:
                records.append(record)
            else:
                aside.append((sid, f"session {_name(sid)} is in the engine's index of deadlines "
                                   f"but its hash is gone: it was deleted outside sessiond"))
        return records


def _nobody(deadline: int) -> None:
    """Where deadlines go until the expiry timer listens."""


def _refusal(reply: Exception) -> Exception:
    """The commit script's error reply: its refusal of a key changed outside
    sessiond (``scripts.COMMIT``, "DAMAGED <key> <what>") in words, any other
    as it came."""
    text = reply.text if isinstance(reply, EngineError) else str(reply)
    if not text.startswith(DAMAGED):
        return reply
    return InternalError(
        f"the engine's key {text[len(DAMAGED):]}: it was changed outside sessiond; "
        "nothing of this request was written"
    )


def _raise_errors(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _name(sid: str | bytes) -> str:
    """An id as the engine holds it, as text however it was written."""
    return sid.decode(errors="backslashreplace") if isinstance(sid, bytes) else sid


def _no_time(sid: str | bytes, bound: str, index: str) -> Aside:
    return (sid, f"session {_name(sid)} has the score {bound} in the engine's index {index}, "
                 f"which is no time: the index was changed outside sessiond")


def _score_of(score: Any) -> int | None:
    """A score a script returned (``None``: there was none, or it is no
    time: ``SharedStore._unbounded`` sets such entries aside)."""
    if score is None:
        return None
    value = float(score)
    return int(value) if math.isfinite(value) else None


# The types of the namespace's keys but sessions' and the order's buckets
# (hashes), as TYPE names them: a key of another type is named in errors.
_KINDS = {
    "due": "zset", "purge": "zset", "users": "hash", "counters": "hash",
    "events": "stream", "config": "hash", "lease": "string",
}
