"""Events in shared mode: a stream in the engine, read by every daemon.

Every change a daemon commits adds its event to the namespace's stream, in
the same script (``scripts.COMMIT``): replicated and persisted with the
sessions, in one order for the whole namespace, and kept for
``event_retention`` events. Keyspace notifications would be neither: they
are fire-and-forget, and a Cluster's node tells only of its own keys.

A ``watch`` reads the stream from where it starts (now, or after the
cursor of the last event it saw, given as ``Watch.after``: so a watcher
that comes back after its daemon restarted misses nothing still kept), as
fast as its client takes the events: a client that falls behind what the
stream keeps is told with a ``lagged`` event how many it missed, counted
by the events' numbers. ``NamespaceReader`` is the daemon's own reader: it
hears other daemons' changes to the namespace's settings, and deadlines
that may be earlier than the expiry timer knows of.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from sessiond.errors import BackendUnavailable, Conflict, InvalidRequest, SessionError
from sessiond.model import ACTIVE, Session, now_us
from sessiond.protocol import Event, EventReply, Response, frame
from sessiond.shared.engine import SharedStore

log = logging.getLogger("sessiond.shared")

BLOCK_MS = 500
COUNT = 256
# After a read that found events, the daemon's own reader lets more gather
# this long before it reads again: a busy stream costs it a read or so a
# pause, not one an event (nor one each of its own writes'). Others'
# settings and deadlines reach it that much later, well within a second.
GATHER = 0.1
CONFIG = "config"
_session = msgspec.msgpack.Decoder(Session)
# The fields of an event, as the commit script adds them (and the origin).
_FIELDS = ("n", "k", "s", "a", "u", "r")
# A stream id's parts and an event's number: 64-bit, as the engine keeps them.
_ID_MAX = 2**64 - 1
_NUMBER_MAX = 2**63 - 1


class Foreign(Exception):
    """An entry of the stream no sessiond added (``XADD`` by hand, another
    program): skipped by every reader. Its message says what is wrong, in
    words that do not depend on the entry, so that it is said once."""


class Entry:
    """One event of the stream. Raises ``Foreign`` for an entry that is
    not an event."""

    __slots__ = ("id", "number", "kind", "sid", "at", "user", "session")

    session: Session | None

    def __init__(self, entry_id: bytes | str, fields: Any) -> None:
        self.id = _text(entry_id)
        try:
            values = _fields(fields)
        except ValueError as exc:  # an odd number of fields, or not UTF-8
            raise Foreign("its fields are not names and values") from exc
        lacking = [n for n in _FIELDS if n not in values]
        if lacking:
            raise Foreign(f"it lacks the field(s) {', '.join(lacking)} every event has")
        try:
            self.number = int(values["n"])
            self.kind = _text(values["k"])
            self.sid = _text(values["s"])
            self.at = int(values["a"])
            self.user = _text(values["u"])
            raw = bytes(values["r"])
            self.session = _session.decode(raw) if raw else None
        except (ValueError, TypeError, msgspec.DecodeError) as exc:
            # int() of text, text that is not UTF-8, a session that is not one.
            raise Foreign("its fields do not hold an event's values") from exc

    @property
    def cursor(self) -> str:
        return f"{self.id}/{self.number}"

    def frame(self) -> bytes:
        return frame(EventReply(id=0, event=Event(
            kind=self.kind, sid=self.sid, at=self.at, session=self.session, cursor=self.cursor,
        )))


def parse_cursor(text: str) -> tuple[str, int]:
    """A cursor's stream id and event number. Raises ``InvalidRequest`` for
    one that no event can have (its numbers past what the engine keeps
    included: the engine would refuse to read after it)."""
    stream_id, _, number = text.partition("/")
    ms, _, seq = stream_id.partition("-")
    parts = (ms, seq, number)
    if not all(p.isascii() and p.isdigit() for p in parts) or not (
        int(ms) <= _ID_MAX and int(seq) <= _ID_MAX and int(number) <= _NUMBER_MAX
    ):
        raise InvalidRequest(f"invalid watch cursor {text!r} (a cursor is an event's own)")
    return stream_id, int(number)


class StreamWatcher:
    """A ``watch`` client's reading of the stream (an ``EventSource``)."""

    def __init__(
        self, store: SharedStore, user: str | None, after: str | None, registry: set[Any]
    ) -> None:
        self.store = store
        self.user = user
        self.after = after
        self.registry = registry
        self.last_id = "0-0"
        self.last_number = 0
        # Whether ``last_number`` is an event's this watch read or was
        # resumed after (not the stream's last as it started: with the
        # stream's newest entries deleted by hand, that may be behind the
        # count without any loss).
        self._anchored = False
        # Why the watch ends once what came before is sent: the namespace's
        # events numbered afresh (``_afresh``).
        self._ends: Conflict | None = None
        registry.add(self)

    async def hello(self, req_id: int) -> Response:
        """The first reply: watching, from the cursor given or from now.
        Raises ``InvalidRequest`` for a cursor no event can have,
        ``Conflict`` for one past the namespace's last event (the engine
        lost its events since)."""
        if self.after is not None:
            self.last_id, self.last_number = parse_cursor(self.after)
            events = self.store.events
            reply, at, first = await self.store.link.call([
                ("HGET", self.store.counters, "events"),
                ("XRANGE", events, self.last_id, self.last_id),
                ("XRANGE", events, "-", "+", "COUNT", 1),
            ])
            count = _number(reply)
            if count is not None and count < self.last_number:
                raise self._afresh(f"the cursor {self.after} is past the namespace's last "
                                   f"event ({count})")
            if self.last_number > 0 and not _holds(at, first, self.last_id, self.last_number):
                # Lost, and the count came back past it since: the new
                # events' ids may be behind the lost one's (the new
                # primary's clock behind the old one's), and a read after
                # it would pass over them, for as long as the difference.
                raise self._afresh(f"the event of the cursor {self.after} is not in the "
                                   f"namespace's stream, which holds later ones")
            self._anchored = self.last_number > 0
        else:
            self.last_id, self.last_number = await _last(self.store)
        start = f"{self.last_id}/{self.last_number}"
        return EventReply(id=req_id, event=Event(
            kind="watching", sid=None, at=now_us(), cursor=start,
        ))

    async def next(self) -> bytes:
        """Events after the last one sent (empty when none came within a
        short wait, so that the server can look whether it stops)."""
        if self._ends is not None:
            raise self._ends
        entries, count = await _read(self.store, self.last_id, counted=True)
        out: list[bytes] = []
        if count is not None and count < self.last_number:
            # Read before the wait: the engine lost its events meanwhile,
            # and the stream's new ids may even be behind this one.
            self._ends = self._afresh(f"after event {self.last_number} this watch saw, the "
                                      f"namespace's count of events is {count}")
            entries = []
        elif count is not None and count > self.last_number and not entries and self._anchored:
            # Events after the last one sent, and none of them after it in
            # the stream: their ids are behind its (the lost event added by
            # a primary whose clock was ahead of the one promoted since); a
            # read after it would pass over them until that clock caught up.
            self._ends = self._afresh(f"the namespace's count of events is {count}, and none "
                                      f"after event {self.last_number} this watch saw is after "
                                      f"it in the stream")
        for entry_id, fields in entries:
            try:
                entry = Entry(entry_id, fields)
            except Foreign:
                # Passed over (the daemon's own reader says so in its log):
                # an event's number counts events, and it is none.
                self.last_id = _text(entry_id)
                continue
            if entry.number <= self.last_number:
                # Numbers only grow, but in a namespace whose events the
                # engine lost: told, after what came before it.
                self._ends = self._afresh(f"the namespace's events are numbered again from "
                                          f"{entry.number} after event {self.last_number} "
                                          f"this watch saw")
                break
            gap = entry.number - self.last_number - 1
            if gap > 0:
                lagged = Event(kind="lagged", sid=None, at=entry.at, dropped=gap)
                out.append(frame(EventReply(id=0, event=lagged)))
            self.last_id, self.last_number = entry.id, entry.number
            self._anchored = True
            if entry.kind == CONFIG or (self.user is not None and entry.user != self.user):
                continue
            out.append(entry.frame())
        return b"".join(out)

    def _afresh(self, what: str) -> Conflict:
        """The end of a watch whose namespace's events were numbered
        afresh: the engine lost them (FLUSHALL, a restart without
        persistence, a failover to a replica that had not got the last
        of them), and the sessions' changes with them, without an event;
        the watcher cannot be told what it missed, nor how much."""
        return Conflict(
            f"{what}: the shared engine {self.store.link.node} lost the namespace's events "
            f"(FLUSHALL, a restart without persistence, or a failover to a replica that lacked "
            f"the last), and what changed with them cannot be told; read the sessions again "
            f"(list) and watch from now"
        )

    def close(self) -> None:
        self.registry.discard(self)


def _holds(at: Any, first: Any, entry_id: str, number: int) -> bool:
    """Whether the stream holds the event ``number`` a cursor names at
    ``entry_id`` (``at``: XRANGE of that id), or held it and trimmed it
    (``first``: its first entry, later than the cursor's), as it may: a
    watch resumed then is told how many it missed. An entry no sessiond
    added at that id is a cursor of a watch from now that began there."""
    for reply in (at, first):
        if isinstance(reply, Exception):
            raise reply
    if at:
        try:
            return bool(Entry(at[0][0], at[0][1]).number == number)
        except Foreign:
            return True
    return bool(first) and _order(entry_id) < _order(_text(first[0][0]))


def _order(entry_id: str) -> tuple[int, int]:
    """A stream id as the engine orders them."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _read(
    store: SharedStore, after: str, counted: bool = False
) -> tuple[list[Any], int | None]:
    """The stream's entries after ``after`` as the engine gave them: ids
    and fields; and, ``counted``, the namespace's count of events read
    just before (``None``: not asked, or not a count)."""
    read = ("XREAD", "COUNT", COUNT, "BLOCK", BLOCK_MS, "STREAMS", store.events, after)
    if counted:
        count, reply = await store.link.call([("HGET", store.counters, "events"), read])
    else:
        count, (reply,) = None, await store.link.call([read])
    if isinstance(reply, Exception):
        raise reply
    number = _number(count) if counted else None
    if not reply:
        return [], number
    # One stream asked for: its entries, however the reply is shaped.
    entries: list[Any] = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return entries, number


def _number(count: Any) -> int | None:
    """The count of events as the engine holds it: 0 while it holds none;
    ``None`` for something that is no count (damaged), not checked here."""
    if count is None:
        return 0
    try:
        return int(count)
    except (TypeError, ValueError):
        return None


async def _last_id(store: SharedStore) -> str:
    """The id of the stream's last entry ("0-0": none yet)."""
    (reply,) = await store.link.call([("XREVRANGE", store.events, "+", "-", "COUNT", 1)])
    if isinstance(reply, Exception):
        raise reply
    return _text(reply[0][0]) if reply else "0-0"


async def _last(store: SharedStore) -> tuple[str, int]:
    """The id of the stream's last entry and the number of the last event
    at or before it (entries added by hand have none): where a watch
    from now starts. ("0-0", 0: none yet.)"""
    (entries,) = await store.link.call([("XREVRANGE", store.events, "+", "-", "COUNT", 1)])
    if isinstance(entries, Exception):
        raise entries
    if not entries:
        return "0-0", 0
    last = _text(entries[0][0])
    while entries:
        for entry_id, fields in entries:
            try:
                return last, Entry(entry_id, fields).number
            except Foreign:
                continue
        # Foreign entries at the end (rare): back over them, a page at a time.
        (entries,) = await store.link.call([
            ("XREVRANGE", store.events, "(" + _text(entries[-1][0]), "-", "COUNT", COUNT),
        ])
        if isinstance(entries, Exception):
            raise entries
    return last, 0


class NamespaceReader:
    """The daemon's own reading of the stream: settings another daemon
    changed (``on_config``), deadlines it set (``on_deadline``). Its own
    events it skips: the store told the expiry timer of their deadlines
    as it committed them (``SharedStore.on_deadline``)."""

    def __init__(
        self,
        store: SharedStore,
        on_config: Callable[[], Any],
        on_deadline: Callable[[int], None],
    ) -> None:
        self.store = store
        self.on_config = on_config
        self.on_deadline = on_deadline
        self._down: str | None = None  # why the stream cannot be read, said once
        self._foreign: set[str] = set()  # what was wrong with entries skipped, said once
        # The highest count of events read, or number of an event heard;
        # and the number of the last event heard. Both only grow, unless
        # the engine lost events (``_went_back``).
        self.heard = 0
        self.last_number = 0
        self._anchored = False  # as ``StreamWatcher._anchored``

    async def run(self) -> None:
        # From the stream's last entry, by its id: "$" would mean the last
        # entry when each read reaches the engine, and an event added
        # between one read and the next would be missed.
        after: str | None = None
        while True:
            try:
                if after is None:
                    # Not counted in ``heard``: the stream's last event may
                    # be past the count (its key deleted by hand), which
                    # would then be taken for a loss at every read.
                    after, self.last_number = await _last(self.store)
                    self._anchored = False
                entries, count = await _read(self.store, after, counted=True)
            except SessionError as exc:
                # The engine is away (the expiry timer says so, and the
                # link to every request), or its stream is not one (a key
                # changed by hand: said here, once): tried again a little
                # later.
                if not isinstance(exc, BackendUnavailable) and self._down != str(exc):
                    log.error("events of other daemons not heard: %s", exc)
                    self._down = str(exc)
                await anyio.sleep(1)
                continue
            if self._down is not None:
                log.info("events of other daemons heard again")
                self._down = None
            lost = None if count is None else self._lost(count, bool(entries))
            if count is not None and lost is not None:
                # Read on from where the engine's stream ends now: the ids
                # of its new events may be behind the last heard.
                after = None
                await self._went_back(count, lost)
                continue
            if count is not None:
                self.heard = max(self.heard, count)
            own = self.store.origin.encode()
            for entry_id, fields in entries:
                after = _text(entry_id)
                number = _number_in(fields)
                if number is not None:
                    if number <= self.last_number:
                        # The count came back past the loss before this
                        # read: the numbers come again.
                        await self._went_back(
                            number, f"the namespace's events are numbered again from "
                                    f"{number} after event {self.last_number} this daemon heard")
                    self.last_number = number
                    self.heard = max(self.heard, number)
                    self._anchored = True
                # The origin is the last field the commit script adds: its
                # own events are passed over without being read further.
                if isinstance(fields, list) and fields[-2:] == [b"o", own]:
                    continue
                try:
                    entry = Entry(entry_id, fields)
                except Foreign as exc:
                    self._skipped(after, str(exc))
                    continue
                if entry.kind == CONFIG:
                    await self.on_config()
                elif entry.session is not None and entry.session.status == ACTIVE:
                    self.on_deadline(entry.session.expires_at)
            if entries and len(entries) < COUNT:
                await anyio.sleep(GATHER)

    def _lost(self, count: int, read: bool) -> str | None:
        """What says that the engine lost events this daemon heard, given
        the count of events read before a read that found events (or
        none): ``None`` when nothing does."""
        if count < self.heard:
            return (f"the namespace's count of events is {count}, after event {self.heard} "
                    f"this daemon heard")
        if count > self.last_number and not read and self._anchored:
            # Events after the last heard, and none after it in the stream:
            # their ids are behind its (a new primary's clock behind the
            # old one's, which added the lost events).
            return (f"the namespace's count of events is {count}, and none after event "
                    f"{self.last_number} this daemon heard is after it in the stream")
        return None

    async def _went_back(self, count: int, what: str) -> None:
        """The engine lost events this daemon heard, and the changes that
        made them: acknowledged writes, gone. Nothing here can bring them
        back, nor tell which sessions they were; it is said, and what this
        daemon holds from the engine is read again (the settings; what
        falls due, at the expiry timer's next turn) rather than trusted."""
        log.error(
            "the shared engine %s went back in time: %s; it lost changes that were acknowledged "
            "(FLUSHALL, a restart from an older save or without appendonly, the last second "
            "under appendfsync everysec, or a failover to a replica that lacked them, which the "
            "replicas setting guards against): the sessions, settings and events are served as "
            "it holds them now (the versions the lost changes had are given again), and "
            "watches that saw the lost events are ended",
            self.store.link.node, what,
        )
        self.heard = self.last_number = count
        await self.on_config()
        # A deadline as early as can be: the expiry timer looks at once.
        self.on_deadline(0)

    def _skipped(self, entry_id: str, why: str) -> None:
        """An entry that is no event, passed over by every reader of the
        stream (watchers too): said once for each thing wrong with one."""
        if why not in self._foreign:
            self._foreign.add(why)
            log.warning("the namespace's stream %s holds entries no sessiond added (%s, the "
                        "first): %s; passed over, here and by every watch",
                        self.store.events, entry_id, why)


def _number_in(fields: Any) -> int | None:
    """The number of an event as the commit script adds it (its first
    field), without reading the rest; ``None`` for an entry that is no
    event."""
    if isinstance(fields, list) and len(fields) >= 2 * len(_FIELDS) and fields[0] == b"n":
        try:
            return int(fields[1])
        except ValueError:
            return None
    return None


def _fields(fields: Any) -> dict[str, Any]:
    if isinstance(fields, dict):
        return {_text(k): v for k, v in fields.items()}
    it = iter(fields)
    return {_text(k): v for k, v in zip(it, it, strict=True)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
