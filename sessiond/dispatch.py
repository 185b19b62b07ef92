"""Dispatch: a batch of request bodies in, reply frames and one journal commit out.

The data path is one line: frame -> typed request (msgspec validates) ->
``Store`` applies it and returns changes -> ``Journal`` persists them ->
watchers hear of them -> response frame. Frames that arrive together are
handled as one batch with one journal commit, which is what makes pipelining
and group commit pay.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final, cast

import anyio
import anyio.to_thread
import msgspec

from sessiond import __version__, config
from sessiond.errors import (
    ConfigError,
    InternalError,
    ReadOnly,
    SessionError,
    Unsupported,
)
from sessiond.events import Hub, Watcher
from sessiond.journal import Journal
from sessiond.model import US, Record, now_us
from sessiond.protocol import (
    DECODE_ERRORS,
    HEADER,
    LENGTH,
    NO_LENGTH,
    PROTOCOL_VERSION,
    WRITES,
    Cleanup,
    CleanupReply,
    Compact,
    CompactReply,
    ConfigGet,
    ConfigReply,
    ConfigSet,
    Create,
    Delete,
    Deleted,
    ErrorReply,
    Event,
    EventReply,
    Expire,
    Get,
    Hello,
    HelloReply,
    Import,
    ImportReply,
    List,
    Page,
    Ping,
    Pong,
    Refresh,
    Request,
    Response,
    SessionReply,
    Set,
    Stats,
    StatsInfo,
    StatsReply,
    Unset,
    Watch,
    append_frame,
    encoder,
    error_frame,
    frame,
    request_decoder,
    request_error,
)
from sessiond.records import delete_line, put_line, put_lines
from sessiond.store import Change, Rules, Store

# The server's logger: splitting the server into modules changes no record.
log = logging.getLogger("sessiond.server")

# Runs one request at the given time: the reply, and the changes to persist.
Handler = Callable[[Any, int], tuple[Response, list[Change]]]
# Requests whose answer stands only once their changes are persisted. A
# read's only changes are lazy expiries: if the journal refuses them the
# answer still holds, so reads keep working.
_WRITES: Final = frozenset(WRITES)


class _IdOnly(msgspec.Struct):
    id: int = 0


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


_AFTER = attrgetter("after")


def journal_lines(changes: list[Change]) -> bytes:
    if len(changes) == 1:
        c = changes[0]
        return put_line(c.after) if c.after is not None else delete_line(c.sid)
    afters = list(map(_AFTER, changes))
    if None not in afters:
        # A pipelined batch of writes: the bulk encoder compaction uses,
        # a quarter cheaper a line than one put_line each. Updates write
        # stamps written before (the cache pays); creates, new ones only.
        recent = changes[0].before is not None
        return put_lines(cast("list[Record]", afters), recent=recent)
    return b"".join([
        put_line(c.after) if c.after is not None else delete_line(c.sid) for c in changes
    ])


class Dispatcher:
    """Runs requests against one store and one journal, and tells watchers.

    Holds what requests and the timers share: the store, the journal, the
    hub, the live settings (and the layers they come from), and the figures
    ``stats`` reports."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        layers: config.Layers,
        event_loop: str,
    ) -> None:
        self.store = store
        self.journal = journal
        self.layers = layers
        self.settings = layers.settings
        self.config_path = layers.path
        # One change of settings at a time: each reads the layers the one
        # before it left.
        self._config_lock = anyio.Lock()
        self.event_loop = event_loop
        self.hub = Hub()
        self._handlers = self._make_handlers()
        self.started = time.monotonic()
        # Counted by the server, as connections come and go.
        self.connections = 0
        # Kept by the expiry timer.
        self.lags: deque[float] = deque(maxlen=10_000)
        self.lag_max = 0.0
        self.timer_target = math.inf
        self._deadlines_seen = -1
        self.timer_wake = anyio.Event()
        self.compact_wake = anyio.Event()
        # A failed write turns the journal read-only: start the compaction
        # that ends it now, not when the compactor's timer next fires.
        journal.on_failure = lambda: self.compact_wake.set()
        self._init_state()

    def _init_state(self) -> None:
        """The state of the layers built on this one (``Connections``,
        ``Server``): each adds its own, so that only this class takes the
        constructor's arguments."""

    async def _batch(
        self, bodies: list[memoryview], bad: int, out: bytearray
    ) -> tuple[Watcher | None, int, int]:
        """Handle frames that arrived together; one journal commit for all.

        Appends the reply frames to ``out``. Stops early once they exceed
        ``max_reply_queue_bytes``, so a client that pipelines big reads
        without reading the answers never makes the daemon hold more than
        that (plus one reply) for it; the caller sends those and comes back
        for the rest. Returns the watcher if the batch ended in ``watch``,
        the count of bad frames in a row, and how many bodies were used."""
        budget = self.settings.max_reply_queue_bytes
        changes: list[Change] = []
        writes: list[tuple[int, int, int]] = []  # (start, end) of its reply in out, id
        watcher: Watcher | None = None
        # Looked up once: this loop runs for every request.
        handlers = self._handlers
        decode = request_decoder.decode
        encode_into = encoder.encode_into
        pack_length = LENGTH.pack_into
        used = 0
        for body in bodies:
            if len(out) > budget:
                break
            used += 1
            try:
                req = decode(body)
            except DECODE_ERRORS as exc:
                bad += 1
                append_frame(out, self._error_reply(self._guess_id(body), request_error(exc)))
                continue
            bad = 0
            kind = type(req)
            handler = handlers.get(kind)
            if handler is None:
                if not isinstance(req, (Compact, ConfigSet, Watch)):
                    unknown = Unsupported(f"unsupported operation {kind.__name__}")
                    append_frame(out, self._error_reply(req.id, unknown))
                    continue
                # These wait on I/O of their own: settle the batch so far first.
                if changes:
                    await self._commit(changes, writes, out)
                    changes, writes = [], []
                if isinstance(req, Watch):
                    watcher = self.hub.subscribe(req.user, self.settings.watch_queue)
                    append_frame(out, EventReply(id=req.id, event=_hello_event()))
                    break
                out += await self._slow(req)
                continue
            try:
                reply, made = handler(req, now_us())
            except SessionError as exc:
                append_frame(out, self._error_reply(req.id, exc))
                continue
            except Exception as exc:  # a bug: answer, log, keep serving
                log.exception("internal error handling %s", type(req).__name__)
                bug = InternalError(f"internal error: {exc!r}")
                append_frame(out, self._error_reply(req.id, bug))
                continue
            # append_frame, inline.
            start = len(out)
            out += NO_LENGTH
            encode_into(reply, out, -1)
            end = len(out)
            pack_length(out, start, end - start - HEADER)
            if made:
                changes.extend(made)
                if kind in _WRITES or (isinstance(req, Get) and req.touch):
                    writes.append((start, end, req.id))
        if changes:
            await self._commit(changes, writes, out)
        return watcher, bad, used

    async def _commit(
        self, changes: list[Change], writes: list[tuple[int, int, int]], out: bytearray
    ) -> None:
        try:
            await self.commit(changes)
        except ReadOnly as exc:
            # Every write's reply becomes the refusal, in its place.
            rebuilt = bytearray()
            pos = 0
            for start, end, req_id in writes:
                rebuilt += out[pos:start]
                append_frame(rebuilt, self._error_reply(req_id, exc))
                pos = end
            rebuilt += out[pos:]
            out[:] = rebuilt

    @staticmethod
    def _error_reply(req_id: int, exc: SessionError) -> ErrorReply:
        return ErrorReply(id=req_id, code=exc.code, message=str(exc))

    async def commit(self, changes: list[Change]) -> None:
        """Persist changes already applied to the store, then announce them."""
        store = self.store
        await self.journal.commit(journal_lines(changes), lambda: store.revert(changes))
        if self.hub.watchers:
            self.hub.publish(changes, now_us())
        # A change may bring the next deadline forward: a new or shorter
        # session, or an expiry whose retention ends before the timer wakes.
        # Only one that queued a deadline can (not a set, say): looking
        # costs a set ~10% of its time on the loop.
        if store.deadlines_queued != self._deadlines_seen:
            self._deadlines_seen = store.deadlines_queued
            deadline = store.next_deadline()
            if deadline is not None and deadline < self.timer_target:
                self.timer_wake.set()
        s = self.settings
        if self.journal.due_for_compaction(s.compact_growth_percent, s.compact_min_bytes):
            self.compact_wake.set()

    @staticmethod
    def _guess_id(body: memoryview) -> int:
        try:
            return _id_decoder.decode(body).id
        except DECODE_ERRORS:
            return 0

    def apply(self, req: Request) -> tuple[Response, list[Change]]:
        """Run one request against the store (synchronous, no I/O)."""
        handler = self._handlers.get(type(req))
        if handler is None:
            raise Unsupported(f"unsupported operation {type(req).__name__}")
        return handler(req, now_us())

    # One per request type that ``apply`` runs (a dict lookup instead of a
    # chain of isinstance checks). Each gets the request and the time.

    def _get(self, req: Get, now: int) -> tuple[Response, list[Change]]:
        session, made = self.store.get(now, req.sid, req.touch)
        return SessionReply(id=req.id, session=session.to_session()), made

    def _create(self, req: Create, now: int) -> tuple[Response, list[Change]]:
        session, made = self.store.create(
            now, user=req.user, ttl=req.ttl, meta=req.meta, sid=req.sid
        )
        return SessionReply(id=req.id, session=session.to_session()), made

    def _set(self, req: Set, now: int) -> tuple[Response, list[Change]]:
        session, made = self.store.set(now, req.sid, req.key, req.value, req.expect_version)
        return SessionReply(id=req.id, session=session.to_session()), made

    def _unset(self, req: Unset, now: int) -> tuple[Response, list[Change]]:
        session, made = self.store.unset(now, req.sid, req.key, req.expect_version)
        return SessionReply(id=req.id, session=session.to_session()), made

    def _delete(self, req: Delete, now: int) -> tuple[Response, list[Change]]:
        sid, made = self.store.delete(now, req.sid)
        return Deleted(id=req.id, sid=sid), made

    def _list(self, req: List, now: int) -> tuple[Response, list[Change]]:
        page, cursor, made = self.store.list_page(
            now, status=req.status, user=req.user, limit=req.limit, cursor=req.cursor
        )
        return Page(id=req.id, sessions=[s.to_session() for s in page], cursor=cursor), made

    def _expire(self, req: Expire, now: int) -> tuple[Response, list[Change]]:
        session, made = self.store.expire(now, req.sid)
        return SessionReply(id=req.id, session=session.to_session()), made

    def _refresh(self, req: Refresh, now: int) -> tuple[Response, list[Change]]:
        session, made = self.store.refresh(now, req.sid, req.ttl, req.revive)
        return SessionReply(id=req.id, session=session.to_session()), made

    def _cleanup(self, req: Cleanup, now: int) -> tuple[Response, list[Change]]:
        result, made = self.store.cleanup(now, req.before, req.dry_run)
        return CleanupReply(id=req.id, result=result), made

    def _import(self, req: Import, now: int) -> tuple[Response, list[Change]]:
        imported, made = self.store.import_sessions(now, req.sessions)
        return ImportReply(id=req.id, result=imported), made

    def _stats(self, req: Stats, now: int) -> tuple[Response, list[Change]]:
        return StatsReply(id=req.id, stats=self.stats(now)), []

    def _config(self, req: ConfigGet, now: int) -> tuple[Response, list[Change]]:
        data = self._config_get(req.key)
        sources = {key: self.layers.source(key) for key in data}
        return ConfigReply(id=req.id, config=data, sources=sources), []

    def _ping(self, req: Ping, now: int) -> tuple[Response, list[Change]]:
        return Pong(id=req.id, pid=os.getpid(), version=__version__,
                    uptime=time.monotonic() - self.started), []

    def _hello(self, req: Hello, now: int) -> tuple[Response, list[Change]]:
        if req.version != PROTOCOL_VERSION:
            raise Unsupported(
                f"protocol version {req.version} is not supported: this sessiond "
                f"({__version__}) speaks version {PROTOCOL_VERSION}"
            )
        return HelloReply(id=req.id, version=PROTOCOL_VERSION, server=__version__,
                          pid=os.getpid()), []

    def _make_handlers(self) -> dict[type[Request], Handler]:
        handlers: dict[type[Any], Callable[[Any, int], tuple[Response, list[Change]]]] = {
            Get: self._get, Create: self._create, Set: self._set, Unset: self._unset,
            Delete: self._delete, List: self._list, Expire: self._expire,
            Refresh: self._refresh, Cleanup: self._cleanup, Import: self._import,
            Stats: self._stats, ConfigGet: self._config, Ping: self._ping,
            Hello: self._hello,
        }
        # Compact, ConfigSet and Watch are not here: _batch runs them itself.
        return handlers

    async def _slow(self, req: Compact | ConfigSet) -> bytes:
        try:
            if isinstance(req, Compact):
                result = await self.journal.compact(self.store.live_slots)
                return frame(CompactReply(id=req.id, result=result))
            updated = await self.set_config(req.key, req.value)
            sources = {key: self.layers.source(key) for key in updated}
            return frame(ConfigReply(id=req.id, config=updated, sources=sources))
        except SessionError as exc:
            return error_frame(req.id, exc)

    def _config_get(self, key: str | None) -> dict[str, Any]:
        data = config.as_dict(self.settings)
        if key is None:
            return data
        if key not in data:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(config.KEYS)}")
        return {key: data[key]}

    async def set_config(self, key: str, value: Any) -> dict[str, Any]:
        """Validate, persist that one key atomically, then apply live.

        Raises ``ConfigError`` (a bad key or value), ``Conflict`` (a flag or
        an environment variable sets the key), ``ReadOnly`` (the changes
        the new value makes, such as a lowered max_lifetime's, could not
        be journaled: the file and the settings are as they were)."""
        async with self._config_lock:
            new = self.layers.with_file_key(key, value)
            value = getattr(new.settings, key)
            before = await anyio.to_thread.run_sync(
                config.persist_key, self.config_path, key, value
            )
            try:
                await self._adopt(new)
            except ReadOnly as exc:
                await anyio.to_thread.run_sync(config.restore, self.config_path, before)
                raise ReadOnly(f"{key} not changed: {exc}") from exc
            log.info("config %s set to %r", key, value)
            return {key: value}

    async def reload_settings(self, new: config.Layers) -> None:
        """Apply reloaded settings live (SIGHUP). Raises ``ReadOnly`` as
        ``set_config`` does, with the settings as they were."""
        async with self._config_lock:
            await self._adopt(new)

    async def _adopt(self, new: config.Layers) -> None:
        """Put ``new`` in force, and persist what the store's rules change
        with it (sessions brought within a lowered max_lifetime); if the
        journal refuses that, the old settings are put back and
        ``ReadOnly`` raised."""
        old = self.layers
        changes = self.store.change_rules(now_us(), self._rules(new.settings))
        self._apply(new)
        if not changes:
            return
        try:
            await self.commit(changes)
        except ReadOnly:
            # The journal has reverted the changes; now the rules with them.
            self._apply(old)
            raise

    @staticmethod
    def _rules(settings: config.Settings) -> Rules:
        return Rules(
            default_ttl=settings.default_ttl,
            max_lifetime=settings.max_lifetime,
            expired_retention=settings.expired_retention,
        )

    def _apply(self, new: config.Layers) -> None:
        self.layers = new
        self.settings = new.settings
        self.store.rules = self._rules(new.settings)
        self.journal.policy = new.settings.fsync
        self.timer_wake.set()
        self.compact_wake.set()

    def stats(self, now: int) -> StatsInfo:
        lags = sorted(self.lags)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
        j = self.journal
        return StatsInfo(
            **self.store.stats(now),
            expiry_lag_max_ms=round(self.lag_max, 3),
            expiry_lag_p99_ms=round(p99, 3),
            pid=os.getpid(),
            version=__version__,
            uptime_seconds=round(time.monotonic() - self.started, 3),
            event_loop=self.event_loop,
            connections=self.connections,
            watchers=len(self.hub.watchers),
            journal_path=str(j.path),
            journal_bytes=j.size,
            fsync=j.policy,
            compacted_bytes=j.compacted_size,
            last_compaction_at=(
                None if j.last_compaction_at is None else int(j.last_compaction_at * US)
            ),
            last_compaction_seconds=j.last_compaction_seconds,
            compactions=j.compactions,
            write_errors=j.write_errors,
            read_only=j.failed,
            config_sources=self.layers.sources(),
        )


def _hello_event() -> Event:
    return Event(kind="watching", sid=None, at=now_us())
