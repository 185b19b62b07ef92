"""The server: accepting connections, their lives, watch streams, timers.

A ``Server`` is the ``Connections`` layer (``sessiond.connection``: peer
sockets, framing and its limits, replies) over the ``Dispatcher``
(``sessiond.dispatch``: requests to replies and journal commits). Here:
the peer check, each connection's life from accept to close, streaming
events to watchers, the expiry and compaction timers, and draining.
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

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from sessiond.connection import IDLE, Conn, Connections, Stop
from sessiond.errors import Busy, InternalError, JournalError, ReadOnly
from sessiond.events import Watcher
from sessiond.model import US, now_us
from sessiond.protocol import EventReply, error_frame, frame

log = logging.getLogger("sessiond.server")

# The expiry timer persists at most this many expiries (and as many purges)
# per journal commit, and lets requests in between batches.
EXPIRY_BATCH = 4096
TIMER_RETRY = 1.0
TIMER_MAX_SLEEP = 1.0
ACCEPT_BACKOFF_MAX = 0.25
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PEERCRED = struct.Struct("3i")


class Server(Connections):
    """Serves one store and one journal to any number of connections."""

    def _init_state(self) -> None:
        super()._init_state()
        self.uid = os.getuid()
        # Watchers waiting for their client to go away: drain() ends them.
        self._idle: set[anyio.CancelScope] = set()
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
                await self._send_last(stream, error_frame(0, busy))
                return
            self.connections += 1
            try:
                await self._serve_connection(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                pass
            except Stop as stop:
                if stop.final:
                    await self._send_last(stream, stop.final)
            except Exception:
                # A bug. It must cost this one connection, not the daemon
                # and every other client with it.
                log.exception("internal error; closing the connection")
                await self._send_last(stream, error_frame(0, InternalError(
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

    async def _serve_connection(self, stream: SocketStream) -> None:
        conn = Conn(stream.extra(SocketAttribute.raw_socket), asyncio.get_running_loop())
        self._conns.add(conn)
        try:
            watcher = await self._serve_requests(conn)
        finally:
            conn.close()
            self._conns.discard(conn)
        if watcher is not None:
            await self._watch(stream, watcher)

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
                                frame(EventReply(id=0, event=e)) for e in events
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
            if conn.kind == IDLE:
                # Between frames: it finds ``stopping`` set and closes.
                conn.interrupt()
        if self.connections:
            with anyio.move_on_after(grace):
                await self._drained.wait()
