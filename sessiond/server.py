"""Connections: peer check, framing and its limits, dispatch, replies.

The data path is one line: frame -> typed request (msgspec validates) ->
``Store`` applies it and returns changes -> ``Journal`` persists them ->
watchers hear of them -> response frame. Frames that arrive together are
handled as one batch with one journal commit, which is what makes pipelining
and group commit pay.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import struct
import time
import typing
from collections import deque
from typing import Any

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
    InvalidRequest,
    JournalError,
    ProtocolError,
    ReadOnly,
    SessionError,
    TooLarge,
    Unsupported,
)
from sessiond.events import Hub, Watcher
from sessiond.journal import Journal
from sessiond.model import US, now_us
from sessiond.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    WRITES,
    AnyRequest,
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
    describe_decode_error,
)
from sessiond.records import delete_line, put_line
from sessiond.store import Change, Store

log = logging.getLogger("sessiond.server")

MAX_BATCH = 256
# The expiry timer persists at most this many expiries (and as many purges)
# per journal commit, and lets requests in between batches.
EXPIRY_BATCH = 4096
TIMER_RETRY = 1.0
TIMER_MAX_SLEEP = 1.0
MAX_BAD_FRAMES = 100
ACCEPT_BACKOFF_MAX = 0.25
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PEERCRED = struct.Struct("3i")
# msgspec reports a string that is not UTF-8 with the codec's own error.
_DECODE_ERRORS = (
    msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError
)
_OPERATIONS = tuple(
    str(t.__struct_config__.tag) for t in typing.get_args(AnyRequest)
)


class _IdOnly(msgspec.Struct):
    id: int = 0


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AnyRequest)
_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def _frame(msg: Response) -> bytes:
    body = _encoder.encode(msg)
    return len(body).to_bytes(HEADER, "big") + body


def _error_frame(req_id: int, exc: SessionError) -> bytes:
    return _frame(ErrorReply(id=req_id, code=exc.code, message=str(exc)))


def journal_lines(changes: list[Change]) -> bytes:
    return b"".join(
        put_line(c.after) if c.after is not None else delete_line(c.sid) for c in changes
    )


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
        self._idle: set[anyio.CancelScope] = set()
        self._accepting = anyio.CancelScope()
        self._drained = anyio.Event()

    # -- accepting -------------------------------------------------------

    async def serve(self, listener: SocketListener, tg: anyio.abc.TaskGroup) -> None:
        """Accept until ``stop_accepting``; survive running out of descriptors.

        Connections run in ``tg`` so that they outlive the accept loop and
        can finish what is in flight when the daemon stops."""
        backoff = 0.0
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

    async def _receive(self, stream: SocketStream, frame_deadline: float | None) -> bytes:
        """The next chunk, or b"" at EOF (or when stopping while idle).

        ``frame_deadline`` is when the frame under way must be complete;
        ``None`` means no frame is under way and the idle limit applies."""
        s = self.settings
        if frame_deadline is None:
            timeout = s.idle_timeout or math.inf
        else:
            timeout = max(0.0, frame_deadline - time.monotonic())
        with anyio.CancelScope() as idle:
            if frame_deadline is None:
                if self.stopping:
                    return b""
                self._idle.add(idle)
            try:
                with anyio.fail_after(timeout):
                    return await stream.receive(65536)
            except TimeoutError:
                if frame_deadline is None:
                    why = f"idle for {s.idle_timeout:g}s (idle_timeout)"
                else:
                    why = f"frame not completed within {s.frame_timeout:g}s (frame_timeout)"
                raise _Stop(_error_frame(0, ProtocolError(f"connection closed: {why}"))) from None
            except anyio.EndOfStream:
                return b""
            finally:
                self._idle.discard(idle)
        return b""  # cancelled while idle: the daemon is stopping

    async def _send(self, stream: SocketStream, data: bytes) -> None:
        try:
            with anyio.fail_after(max(self.settings.frame_timeout, 1.0)):
                await stream.send(data)
        except TimeoutError:
            log.warning("closing a connection that does not read its replies")
            raise _Stop() from None

    async def _serve_connection(self, stream: SocketStream) -> None:
        buf = bytearray()
        bad = 0
        # When the first byte of the incomplete frame in ``buf`` arrived: the
        # whole frame must follow within frame_timeout, however it trickles.
        started: float | None = None
        while True:
            pos = 0
            while True:
                bodies: list[bytes] = []
                ends: list[int] = []
                end = pos
                limit = self.settings.max_frame_bytes
                while len(bodies) < MAX_BATCH and len(buf) - end >= HEADER:
                    n = int.from_bytes(buf[end : end + HEADER], "big")
                    if n > limit:
                        raise _Stop(_error_frame(0, TooLarge(
                            f"frame of {n} bytes exceeds max_frame_bytes ({limit}); closing"
                        )))
                    if len(buf) - end - HEADER < n:
                        break
                    bodies.append(bytes(buf[end + HEADER : end + HEADER + n]))
                    end += HEADER + n
                    ends.append(end)
                if not bodies:
                    break
                out, watch, bad, used = await self._batch(bodies, bad)
                pos = ends[used - 1]
                if out:
                    await self._send(stream, b"".join(out))
                if watch is not None:
                    await self._watch(stream, watch)
                    return
                if bad > MAX_BAD_FRAMES:
                    raise _Stop(_error_frame(0, ProtocolError("too many bad frames; closing")))
                await anyio.lowlevel.checkpoint()
            if pos:
                del buf[:pos]
                started = None
            if buf and started is None:
                started = time.monotonic()
            deadline = None if started is None else started + self.settings.frame_timeout
            data = await self._receive(stream, deadline)
            if not data:
                return
            buf += data

    # -- dispatch --------------------------------------------------------

    async def _batch(
        self, bodies: list[bytes], bad: int
    ) -> tuple[list[bytes], Watcher | None, int, int]:
        """Handle frames that arrived together; one journal commit for all.

        Stops early once the replies exceed ``max_reply_queue_bytes``, so a
        client that pipelines big reads without reading the answers never
        makes the daemon hold more than that (plus one reply) for it; the
        caller sends those and comes back for the rest. Returns the replies,
        the watcher if the batch ended in ``watch``, the count of bad frames
        in a row, and how many bodies were used."""
        out: list[bytes] = []
        queued = 0
        budget = self.settings.max_reply_queue_bytes
        changes: list[Change] = []
        writes: list[tuple[int, int]] = []  # (index in out, request id)
        watch: Watcher | None = None
        used = 0
        for body in bodies:
            if queued > budget:
                break
            used += 1
            try:
                req = _request_decoder.decode(body)
            except _DECODE_ERRORS as exc:
                bad += 1
                out.append(_error_frame(self._guess_id(body), self._decode_error(exc)))
                queued += len(out[-1])
                continue
            bad = 0
            if isinstance(req, (Compact, ConfigSet, Watch)):
                # These wait on I/O of their own: settle the batch so far first.
                await self._commit(changes, writes, out)
                changes, writes = [], []
                if isinstance(req, Watch):
                    watch = self.hub.subscribe(req.user, self.settings.watch_queue)
                    out.append(_frame(EventReply(id=req.id, event=_hello_event())))
                    break
                out.append(await self._slow(req))
                queued += len(out[-1])
                continue
            try:
                reply, made = self.apply(req)
            except SessionError as exc:
                out.append(_error_frame(req.id, exc))
                queued += len(out[-1])
                continue
            except Exception as exc:  # a bug: answer, log, keep serving
                log.exception("internal error handling %s", type(req).__name__)
                out.append(_error_frame(req.id, InternalError(f"internal error: {exc!r}")))
                continue
            if made:
                # A read's only changes are lazy expiries: if the journal
                # refuses them the answer still holds, so reads keep working.
                if isinstance(req, WRITES) or (isinstance(req, Get) and req.touch):
                    writes.append((len(out), req.id))
                changes.extend(made)
            out.append(_frame(reply))
            queued += len(out[-1])
        await self._commit(changes, writes, out)
        return out, watch, bad, used

    async def _commit(
        self, changes: list[Change], writes: list[tuple[int, int]], out: list[bytes]
    ) -> None:
        if not changes:
            return
        try:
            await self.commit(changes)
        except ReadOnly as exc:
            for index, req_id in writes:
                out[index] = _error_frame(req_id, exc)

    async def commit(self, changes: list[Change]) -> None:
        """Persist changes already applied to the store, then announce them."""
        store = self.store
        await self.journal.commit(journal_lines(changes), lambda: store.revert(changes))
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
    def _guess_id(body: bytes) -> int:
        try:
            return _id_decoder.decode(body).id
        except _DECODE_ERRORS:
            return 0

    @staticmethod
    def _decode_error(exc: Exception) -> SessionError:
        if isinstance(exc, UnicodeDecodeError):
            return InvalidRequest(f"malformed request: a string is not valid UTF-8 ({exc})")
        text = describe_decode_error(exc)
        if text.startswith("Invalid value") and text.endswith("`$.op`"):
            return Unsupported(
                f"unknown operation: {text} (known: {', '.join(_OPERATIONS)})"
            )
        if isinstance(exc, msgspec.ValidationError):
            return InvalidRequest(f"invalid request: {text}")
        return InvalidRequest(f"malformed request: {text}")

    def apply(self, req: Request) -> tuple[Response, list[Change]]:
        """Run one request against the store (synchronous, no I/O)."""
        store = self.store
        now = now_us()
        if isinstance(req, Get):
            session, made = store.get(now, req.sid, req.touch)
            return SessionReply(id=req.id, session=session), made
        if isinstance(req, Create):
            session, made = store.create(
                now, user=req.user, ttl=req.ttl, meta=req.meta, sid=req.sid
            )
            return SessionReply(id=req.id, session=session), made
        if isinstance(req, Set):
            session, made = store.set(now, req.sid, req.key, req.value, req.expect_version)
            return SessionReply(id=req.id, session=session), made
        if isinstance(req, Unset):
            session, made = store.unset(now, req.sid, req.key)
            return SessionReply(id=req.id, session=session), made
        if isinstance(req, Delete):
            sid, made = store.delete(now, req.sid)
            return Deleted(id=req.id, sid=sid), made
        if isinstance(req, List):
            page, cursor, made = store.list_page(
                now, status=req.status, user=req.user, limit=req.limit, cursor=req.cursor
            )
            return Page(id=req.id, sessions=page, cursor=cursor), made
        if isinstance(req, Expire):
            session, made = store.expire(now, req.sid)
            return SessionReply(id=req.id, session=session), made
        if isinstance(req, Refresh):
            session, made = store.refresh(now, req.sid, req.ttl, req.revive)
            return SessionReply(id=req.id, session=session), made
        if isinstance(req, Cleanup):
            result, made = store.cleanup(now, req.before, req.dry_run)
            return CleanupReply(id=req.id, result=result), made
        if isinstance(req, Import):
            imported, made = store.import_sessions(now, req.sessions)
            return ImportReply(id=req.id, result=imported), made
        if isinstance(req, Stats):
            return StatsReply(id=req.id, stats=self.stats(now)), []
        if isinstance(req, ConfigGet):
            return ConfigReply(id=req.id, config=self._config_get(req.key)), []
        if isinstance(req, Ping):
            return Pong(id=req.id, pid=os.getpid(), version=__version__,
                        uptime=time.monotonic() - self.started), []
        if isinstance(req, Hello):
            if req.version != PROTOCOL_VERSION:
                raise Unsupported(
                    f"protocol version {req.version} is not supported: this sessiond "
                    f"({__version__}) speaks version {PROTOCOL_VERSION}"
                )
            return HelloReply(id=req.id, version=PROTOCOL_VERSION, server=__version__,
                              pid=os.getpid()), []
        raise Unsupported(f"unsupported operation {type(req).__name__}")

    async def _slow(self, req: Compact | ConfigSet) -> bytes:
        try:
            if isinstance(req, Compact):
                result = await self.journal.compact(self.store.snapshot)
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
                await j.compact(self.store.snapshot)
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
        if self.connections:
            with anyio.move_on_after(grace):
                await self._drained.wait()


def _hello_event() -> Event:
    return Event(kind="watching", sid=None, at=now_us())
