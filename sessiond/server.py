"""Connections: peer check, framing and its limits, dispatch, replies.

The data path is one line: frame -> typed request (msgspec validates) ->
``Store`` applies it and returns changes -> ``Journal`` persists them ->
watchers hear of them -> response frame. Frames that arrive together are
handled as one batch with one journal commit, which is what makes pipelining
and group commit pay.

Connections are anyio tasks; their sockets are read and written directly,
with readiness from the asyncio loop under anyio's asyncio backend (see
``_Conn``), and one task enforces every connection's time limits.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final, cast

import anyio
import anyio.abc
import anyio.to_thread
import msgspec
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from sessiond import __version__, config
from sessiond.errors import (
    Busy,
    ConfigError,
    InternalError,
    JournalError,
    ProtocolError,
    ReadOnly,
    SessionError,
    TooLarge,
    Unsupported,
)
from sessiond.events import Hub, Watcher
from sessiond.journal import Journal
from sessiond.model import US, Record, now_us
from sessiond.protocol import (
    DECODE_ERRORS,
    HEADER,
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
    request_decoder,
    request_error,
)
from sessiond.records import delete_line, put_line, put_lines
from sessiond.store import Change, Store

log = logging.getLogger("sessiond.server")

MAX_BATCH = 256
# One recv(2) takes at most this much: a pipeline of a few hundred requests,
# or a slice of a big import frame.
RECV_BYTES = 65536
# The expiry timer persists at most this many expiries (and as many purges)
# per journal commit, and lets requests in between batches.
EXPIRY_BATCH = 4096
TIMER_RETRY = 1.0
TIMER_MAX_SLEEP = 1.0
MAX_BAD_FRAMES = 100
ACCEPT_BACKOFF_MAX = 0.25
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PEERCRED = struct.Struct("3i")
# Runs one request at the given time: the reply, and the changes to persist.
Handler = Callable[[Any, int], tuple[Response, list[Change]]]
# Requests whose answer stands only once their changes are persisted. A
# read's only changes are lazy expiries: if the journal refuses them the
# answer still holds, so reads keep working.
_WRITES: Final = frozenset(WRITES)
_LENGTH = struct.Struct(">I")
assert _LENGTH.size == HEADER
_NO_LENGTH = bytes(HEADER)


class _IdOnly(msgspec.Struct):
    id: int = 0


_encoder = msgspec.msgpack.Encoder()
_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def _frame(msg: Response) -> bytes:
    body = _encoder.encode(msg)
    return len(body).to_bytes(HEADER, "big") + body


def _append_frame(out: bytearray, msg: Response) -> None:
    """Encode ``msg`` as a frame at the end of ``out``, with no bytes object
    in between."""
    start = len(out)
    out += _NO_LENGTH
    _encoder.encode_into(msg, out, -1)
    _LENGTH.pack_into(out, start, len(out) - start - HEADER)


def _error_frame(req_id: int, exc: SessionError) -> bytes:
    return _frame(ErrorReply(id=req_id, code=exc.code, message=str(exc)))


_AFTER = attrgetter("after")


def journal_lines(changes: list[Change]) -> bytes:
    if len(changes) == 1:
        c = changes[0]
        return put_line(c.after) if c.after is not None else delete_line(c.sid)
    afters = list(map(_AFTER, changes))
    if None not in afters:
        # A pipelined batch of writes: the bulk encoder compaction uses,
        # a quarter cheaper a line than one put_line each.
        return put_lines(cast("list[Record]", afters))
    return b"".join([
        put_line(c.after) if c.after is not None else delete_line(c.sid) for c in changes
    ])


_BUSY: Final = 0
_IDLE: Final = 1  # waiting for the first byte of a frame
_FRAME: Final = 2  # waiting for the rest of a frame
_SEND: Final = 3  # waiting to send replies


class _Conn:
    """A connection's socket, its readiness registration, and the deadline
    of its current wait.

    Readiness comes from the asyncio loop the daemon runs on (anyio's asyncio
    backend), through one reader registration kept for the connection's
    life. ``anyio.wait_readable`` registers and unregisters on every call:
    on uvloop that makes and destroys a poll handle each time, which was
    measured at ~30 us a request (four times a kept registration), more
    than the request itself."""

    __slots__ = (
        "sock", "fd", "loop", "kind", "deadline", "expired", "waiter", "writing", "reading",
        "readable",
    )

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.kind = _BUSY
        # When the current wait must end; infinite when not waiting, so that
        # the deadline task never ends anything but a wait.
        self.deadline = math.inf
        self.expired = False
        self.waiter: asyncio.Future[None] | None = None
        self.writing = False  # the waiter waits to send, not to receive
        self.reading = False  # registered with the loop as a reader
        # Reported readable while nobody waited: recv() before waiting again.
        self.readable = False

    async def wait(self, writable: bool) -> None:
        """Until the socket is readable (or writable), or ``interrupt()``."""
        loop = self.loop
        if writable:
            # Rare (a client slow to read its replies): registered per wait.
            loop.add_writer(self.fd, self.interrupt)
        elif not self.reading:
            loop.add_reader(self.fd, self._readable)
            self.reading = True
        self.writing = writable
        self.waiter = waiter = loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None
            if writable:
                self.writing = False
                loop.remove_writer(self.fd)

    def _readable(self) -> None:
        if self.waiter is not None and not self.writing:
            self.interrupt()
        elif self.reading:
            # Data arrived while the connection is busy (or waits to send):
            # the registration is level-triggered and would report it on
            # every loop iteration. The next recv() finds it; the next wait
            # for data registers again.
            self.loop.remove_reader(self.fd)
            self.reading = False
            self.readable = True

    def interrupt(self) -> None:
        """End the current wait, if any (the waiter then looks at why)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Forget the registration: the socket is about to be closed."""
        self.deadline = math.inf
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False


class _Stop(Exception):
    """The connection must close (after sending what it carries)."""

    def __init__(self, final: bytes = b"") -> None:
        self.final = final


class Server:
    """Serves one store and one journal to any number of connections."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        settings: config.Settings,
        config_path: Any,
        event_loop: str,
    ) -> None:
        self.store = store
        self.journal = journal
        self.settings = settings
        self.config_path = config_path
        self.event_loop = event_loop
        self.hub = Hub()
        self._handlers = self._make_handlers()
        self.started = time.monotonic()
        self.uid = os.getuid()
        self.connections = 0
        self.stopping = False
        self.lags: deque[float] = deque(maxlen=10_000)
        self.lag_max = 0.0
        self.timer_target = math.inf
        self.timer_wake = anyio.Event()
        self.compact_wake = anyio.Event()
        # A failed write turns the journal read-only: start the compaction
        # that ends it now, not when the compactor's timer next fires.
        journal.on_failure = lambda: self.compact_wake.set()
        # Watchers waiting for their client to go away: drain() ends them.
        self._idle: set[anyio.CancelScope] = set()
        self._conns: set[_Conn] = set()
        self._deadline_target = math.inf
        self._deadline_wake = anyio.Event()
        self._accepting = anyio.CancelScope()
        self._drained = anyio.Event()

    # -- accepting -------------------------------------------------------

    async def serve(self, listener: SocketListener, tg: anyio.abc.TaskGroup) -> None:
        """Accept until ``stop_accepting``; survive running out of descriptors.

        Connections run in ``tg`` so that they outlive the accept loop and
        can finish what is in flight when the daemon stops."""
        backoff = 0.0
        # In ``tg``: connections keep their time limits while they drain.
        tg.start_soon(self._run_deadlines)
        with self._accepting:
            while True:
                try:
                    stream = await listener.accept()
                except (OSError, anyio.BrokenResourceError) as exc:
                    # anyio wraps the accept(2) error in BrokenResourceError;
                    # the listener itself is still fine.
                    cause = exc if isinstance(exc, OSError) else exc.__cause__
                    if not isinstance(cause, OSError) or cause.errno not in _ACCEPT_ERRNOS:
                        raise
                    if not backoff:
                        log.warning("accept failed (%s); backing off until descriptors "
                                    "are free again", cause.strerror)
                    # The pending connection keeps the listener readable, so
                    # retrying at once would spin: wait, as trio does.
                    backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX) or 0.01
                    await anyio.sleep(backoff)
                    continue
                if backoff:
                    log.info("accepting connections again")
                    backoff = 0.0
                tg.start_soon(self._connection, stream)

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    def _peer_uid(self, stream: SocketStream) -> int:
        sock = stream.extra(SocketAttribute.raw_socket)
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        pid, uid, gid = _PEERCRED.unpack(raw)
        return int(uid)

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            try:
                uid = self._peer_uid(stream)
            except OSError as exc:
                log.warning("refused a connection: cannot read peer credentials (%s)", exc)
                return
            if uid != self.uid:
                log.warning(
                    "refused a connection from uid %d (only uid %d may connect)", uid, self.uid
                )
                return
            if self.connections >= self.settings.max_connections or self.stopping:
                why = "shutting down" if self.stopping else (
                    f"too many connections (max_connections={self.settings.max_connections})"
                )
                busy = Busy(f"daemon busy: {why}; try again")
                await self._send_last(stream, _error_frame(0, busy))
                return
            self.connections += 1
            try:
                await self._serve_connection(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                pass
            except _Stop as stop:
                if stop.final:
                    await self._send_last(stream, stop.final)
            except Exception:
                # A bug. It must cost this one connection, not the daemon
                # and every other client with it.
                log.exception("internal error; closing the connection")
                await self._send_last(stream, _error_frame(0, InternalError(
                    "internal error; closing the connection (the daemon's log has details)"
                )))
            finally:
                self.connections -= 1
                if self.stopping and self.connections == 0:
                    self._drained.set()

    @staticmethod
    async def _send_last(stream: SocketStream, data: bytes) -> None:
        """A parting frame, if the peer still listens; it may well not."""
        with anyio.move_on_after(1):
            try:
                await stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    # -- requests and replies --------------------------------------------
    #
    # The socket is driven directly: non-blocking recv and send, waiting
    # (``_Conn.wait``) only when they would block. anyio's stream adds a
    # checkpoint (a trip round the event loop) to every receive and send,
    # and a timeout scope per call costs more than a small request itself.
    # The time limits are instead one deadline per connection, which the
    # deadline task enforces (see ``_run_deadlines``).

    async def _serve_connection(self, stream: SocketStream) -> None:
        conn = _Conn(stream.extra(SocketAttribute.raw_socket), asyncio.get_running_loop())
        self._conns.add(conn)
        try:
            watcher = await self._serve_requests(conn)
        finally:
            conn.close()
            self._conns.discard(conn)
        if watcher is not None:
            await self._watch(stream, watcher)

    async def _serve_requests(self, conn: _Conn) -> Watcher | None:
        """Answer requests until EOF, ``watch`` (returns its watcher), or the
        daemon stopping while this connection is between frames."""
        sock = conn.sock
        # Bytes received and not yet handled: never a whole frame between
        # rounds, only the start of one (or nothing).
        pending: bytes | bytearray = b""
        # When the incomplete frame in ``pending`` started arriving: all of
        # it must follow within frame_timeout, however it trickles.
        started = 0.0
        bad = 0
        # Whether the last recv() left the socket empty: then wait before the
        # next one rather than try it (a client that waits for each answer
        # has sent nothing more yet), unless the loop has said otherwise.
        drained = True
        # Whether this task gave the event loop back since it last received.
        yielded = True
        while True:
            if not pending and self.stopping:
                return None
            if drained and not conn.readable:
                if pending:
                    await self._wait(conn, _FRAME, started + self.settings.frame_timeout)
                else:
                    idle = self.settings.idle_timeout
                    await self._wait(conn, _IDLE, time.monotonic() + idle if idle else math.inf)
                drained = False
                yielded = True
                continue
            conn.readable = False
            try:
                data = sock.recv(RECV_BYTES)
            except BlockingIOError:
                drained = True
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                return None
            if not yielded:
                # Requests keep arriving, so this connection never waits:
                # let the others (and the timers, the compactor) have a turn.
                await anyio.lowlevel.checkpoint()
            yielded = False
            drained = len(data) < RECV_BYTES
            fresh = not pending
            if fresh:
                pending = data
            else:
                pending += data
            used, watcher, bad = await self._answer(conn, pending, bad)
            if watcher is not None:
                return watcher
            if used == len(pending):
                pending = b""
            elif used or fresh:
                pending = bytearray(memoryview(pending)[used:])
                started = time.monotonic()

    async def _answer(
        self, conn: _Conn, data: bytes | bytearray, bad: int
    ) -> tuple[int, Watcher | None, int]:
        """Answer every whole frame at the start of ``data``, a batch at a
        time. Returns how many bytes were used, the watcher if a ``watch``
        ended them, and the count of bad frames in a row."""
        limit = self.settings.max_frame_bytes
        size = len(data)
        pos = 0
        while True:
            bodies: list[memoryview] = []
            ends: list[int] = []
            end = pos
            view: memoryview | None = None
            while len(bodies) < MAX_BATCH and size - end >= HEADER:
                (n,) = _LENGTH.unpack_from(data, end)
                if n > limit:
                    raise _Stop(_error_frame(0, TooLarge(
                        f"frame of {n} bytes exceeds max_frame_bytes ({limit}); closing"
                    )))
                if size - end - HEADER < n:
                    break
                if view is None:
                    # Bodies are decoded in place, never copied out.
                    view = memoryview(data)
                end += HEADER
                bodies.append(view[end : end + n])
                end += n
                ends.append(end)
            if not bodies:
                return pos, None, bad
            out = bytearray()
            watcher, bad, used = await self._batch(bodies, bad, out)
            pos = ends[used - 1]
            if out:
                try:
                    await self._send(conn, out)
                except BaseException:
                    if watcher is not None:
                        self.hub.unsubscribe(watcher)
                    raise
            if watcher is not None:
                return pos, watcher, bad
            if bad > MAX_BAD_FRAMES:
                raise _Stop(_error_frame(0, ProtocolError("too many bad frames; closing")))
            if size - pos >= HEADER:
                # More frames follow: a turn for the others between batches.
                await anyio.lowlevel.checkpoint()

    async def _send(self, conn: _Conn, data: bytearray) -> None:
        sock = conn.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if sent == len(data):
            return
        rest = memoryview(data)[sent:]
        deadline = time.monotonic() + self.settings.send_timeout
        while rest:
            await self._wait(conn, _SEND, deadline)
            try:
                rest = rest[sock.send(rest) :]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc

    async def _wait(self, conn: _Conn, kind: int, deadline: float) -> None:
        """Until the socket is ready (readable, or writable for ``_SEND``);
        ``_Stop`` once ``deadline`` passes. May return early (when the
        daemon stops): callers retry."""
        conn.kind = kind
        conn.deadline = deadline
        if deadline < self._deadline_target:
            self._deadline_target = deadline
            self._deadline_wake.set()
        try:
            # Also ends early when the deadline task or drain() interrupts
            # it: see below, and the callers' retry.
            await conn.wait(kind == _SEND)
        finally:
            conn.kind = _BUSY
            conn.deadline = math.inf
        if conn.expired:
            raise self._expired(kind)

    def _expired(self, kind: int) -> _Stop:
        s = self.settings
        if kind == _SEND:
            log.warning(
                "closing a connection that left its replies unread for %gs (send_timeout)",
                s.send_timeout,
            )
            return _Stop()
        if kind == _IDLE:
            why = f"idle for {s.idle_timeout:g}s (idle_timeout)"
        else:
            why = f"frame not completed within {s.frame_timeout:g}s (frame_timeout)"
        return _Stop(_error_frame(0, ProtocolError(f"connection closed: {why}")))

    async def _run_deadlines(self) -> None:
        """End the waits of connections whose deadline has passed.

        Connections only store their deadline (a float, per wait); this task
        sleeps until the earliest one it knows of, and is woken only when a
        connection sets one earlier still. A deadline that moved later in
        the meantime costs one look at it."""
        while True:
            now = time.monotonic()
            target = math.inf
            for conn in self._conns:
                deadline = conn.deadline
                if deadline <= now:
                    if not conn.expired:
                        conn.expired = True
                        conn.interrupt()
                elif deadline < target:
                    target = deadline
            self._deadline_target = target
            self._deadline_wake = wake = anyio.Event()
            with anyio.move_on_after(target - now):
                await wake.wait()

    # -- dispatch --------------------------------------------------------

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
        encode_into = _encoder.encode_into
        pack_length = _LENGTH.pack_into
        used = 0
        for body in bodies:
            if len(out) > budget:
                break
            used += 1
            try:
                req = decode(body)
            except DECODE_ERRORS as exc:
                bad += 1
                _append_frame(out, self._error_reply(self._guess_id(body), request_error(exc)))
                continue
            bad = 0
            kind = type(req)
            handler = handlers.get(kind)
            if handler is None:
                if not isinstance(req, (Compact, ConfigSet, Watch)):
                    unknown = Unsupported(f"unsupported operation {kind.__name__}")
                    _append_frame(out, self._error_reply(req.id, unknown))
                    continue
                # These wait on I/O of their own: settle the batch so far first.
                if changes:
                    await self._commit(changes, writes, out)
                    changes, writes = [], []
                if isinstance(req, Watch):
                    watcher = self.hub.subscribe(req.user, self.settings.watch_queue)
                    _append_frame(out, EventReply(id=req.id, event=_hello_event()))
                    break
                out += await self._slow(req)
                continue
            try:
                reply, made = handler(req, now_us())
            except SessionError as exc:
                _append_frame(out, self._error_reply(req.id, exc))
                continue
            except Exception as exc:  # a bug: answer, log, keep serving
                log.exception("internal error handling %s", type(req).__name__)
                bug = InternalError(f"internal error: {exc!r}")
                _append_frame(out, self._error_reply(req.id, bug))
                continue
            # _append_frame, inline.
            start = len(out)
            out += _NO_LENGTH
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
                _append_frame(rebuilt, self._error_reply(req_id, exc))
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
        # Any change may bring the next deadline forward: a new or shorter
        # session, or an expiry whose retention ends before the timer wakes.
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
        return ConfigReply(id=req.id, config=self._config_get(req.key)), []

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
                return _frame(CompactReply(id=req.id, result=result))
            updated = await self.set_config(req.key, req.value)
            return _frame(ConfigReply(id=req.id, config=updated))
        except SessionError as exc:
            return _error_frame(req.id, exc)

    def _config_get(self, key: str | None) -> dict[str, Any]:
        data = config.as_dict(self.settings)
        if key is None:
            return data
        if key not in data:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(config.KEYS)}")
        return {key: data[key]}

    async def set_config(self, key: str, value: Any) -> dict[str, Any]:
        """Validate, persist atomically, then apply live."""
        new = config.with_value(self.settings, key, value)
        await anyio.to_thread.run_sync(config.save, self.config_path, new)
        self.apply_settings(new)
        log.info("config %s set to %r", key, getattr(new, key))
        return {key: getattr(new, key)}

    def apply_settings(self, new: config.Settings) -> None:
        self.settings = new
        rules = self.store.rules
        rules.default_ttl = new.default_ttl
        rules.max_lifetime = new.max_lifetime
        rules.expired_retention = new.expired_retention
        self.journal.policy = new.fsync
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
        )

    # -- watch -----------------------------------------------------------

    async def _watch(self, stream: SocketStream, watcher: Watcher) -> None:
        """Stream events until the client goes away or the daemon stops."""
        try:
            async with anyio.create_task_group() as tg:

                async def until_closed() -> None:
                    # A watcher sends nothing more; EOF (or anything) ends it.
                    while await self._receive_any(stream):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(until_closed)
                while not self.stopping:
                    await watcher.ready.wait()
                    events = watcher.take()
                    if events:
                        # No send timeout here: a watcher that stops reading
                        # blocks only this task, its bounded queue overflows
                        # into a "lagged" event, and it may catch up later.
                        try:
                            await stream.send(b"".join(
                                _frame(EventReply(id=0, event=e)) for e in events
                            ))
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            # The watcher went away. Raised out of the task
                            # group this would arrive as an ExceptionGroup.
                            break
                tg.cancel_scope.cancel()
        finally:
            self.hub.unsubscribe(watcher)

    async def _receive_any(self, stream: SocketStream) -> bool:
        with anyio.CancelScope() as idle:
            self._idle.add(idle)
            try:
                await stream.receive(4096)
                return True
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return False
            finally:
                self._idle.discard(idle)
        return False

    # -- timers ----------------------------------------------------------

    async def run_expiry(self) -> None:
        """Sleep until the earliest deadline (or an earlier one arrives),
        expire and purge what is due, repeat."""
        store = self.store
        while True:
            now = now_us()
            expired = store.expire_due(now, EXPIRY_BATCH)
            purged = store.purge_due(now, EXPIRY_BATCH)
            failed = False
            if expired or purged:
                try:
                    await self.commit(expired + purged)
                except ReadOnly as exc:
                    # Reverted, so still due: retry later, not in a hot loop.
                    log.error("could not persist %d expiries: %s",
                              len(expired) + len(purged), exc)
                    failed = True
                else:
                    for c in expired:
                        assert c.before is not None
                        lag = (now - c.before.expires_at) / 1000
                        self.lags.append(lag)
                        if lag > self.lag_max:
                            self.lag_max = lag
            deadline = store.next_deadline()
            self.timer_wake = anyio.Event()
            if deadline is None:
                self.timer_target = math.inf
                delay = math.inf
            else:
                self.timer_target = deadline
                delay = max(0.0, (deadline - now_us()) / US)
            if failed:
                delay = TIMER_RETRY
            if delay > 0:
                # Deadlines are wall-clock, the sleep is monotonic: waking at
                # least every TIMER_MAX_SLEEP bounds how late a step of the
                # wall clock can make an expiry.
                with anyio.move_on_after(min(delay, TIMER_MAX_SLEEP)):
                    await self.timer_wake.wait()
            else:
                # More is due (a batch was full): let requests in between.
                await anyio.lowlevel.checkpoint()

    async def run_compactor(self) -> None:
        """Compact on growth, on the interval, and to leave read-only mode."""
        retry = 1.0
        last = time.monotonic()
        while True:
            interval = self.settings.compact_interval or math.inf
            wait = retry if self.journal.failed else min(interval, 60.0)
            with anyio.move_on_after(wait):
                await self.compact_wake.wait()
            self.compact_wake = anyio.Event()
            s = self.settings
            j = self.journal
            timer_due = (
                s.compact_interval > 0
                and j.changed_since_compaction
                and time.monotonic() - last >= s.compact_interval
            )
            grown = j.due_for_compaction(s.compact_growth_percent, s.compact_min_bytes)
            if not (j.failed or timer_due or grown):
                continue
            try:
                await j.compact(self.store.live_slots)
                retry = 1.0
                last = time.monotonic()
            except JournalError as exc:
                log.error("%s", exc)
                retry = min(retry * 2, 30.0)

    # -- stopping --------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop reading new requests and wait up to ``grace`` seconds for
        those in flight."""
        self.stopping = True
        for scope in list(self._idle):
            scope.cancel()
        for conn in self._conns:
            if conn.kind == _IDLE:
                # Between frames: it finds ``stopping`` set and closes.
                conn.interrupt()
        if self.connections:
            with anyio.move_on_after(grace):
                await self._drained.wait()


def _hello_event() -> Event:
    return Event(kind="watching", sid=None, at=now_us())
