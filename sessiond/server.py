"""The server: it accepts connections, checks each peer, and holds the parts.

A ``Server`` holds an engine (``Engine``: the local one of
``sessiond.local``, or the shared one of ``sessiond.shared``), whose
dispatcher turns batches of requests into replies, and ``Connections``
(``sessiond.connection``: reading frames within their limits, sending
replies). Here: accepting (and accepting again on a socket bound anew), the
peer check, each connection's life from accept to close, streaming events
to watchers, draining at a stop, and ``stats``, which asks each part for
its own figures.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from sessiond import __version__
from sessiond.connection import RESERVED_FOR, Batches, Connections, Stop
from sessiond.errors import Busy, InternalError, SessionError
from sessiond.events import EventSource
from sessiond.live import Live
from sessiond.peers import Refusals, peer_uid, refusal
from sessiond.protocol import StatsInfo, error_frame
from sessiond.spare import SpareDescriptor

log = logging.getLogger("sessiond.server")

ACCEPT_BACKOFF_MAX = 0.25
# How long a watch that ended with an error waits for its client to hang up.
LAST_WORD_GRACE = 2.0
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Those a spare descriptor helps with (``sessiond.spare``).
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE}
# Descriptors kept free of connections, under the open files limit: for
# what the daemon opens itself (a compaction's temp files and directory
# fsyncs, a snapshot, the config file's atomic write, the log's rotation,
# a socket bound again) and the one connection kept beyond the limit (see
# ``connection.RESERVED_OPS``). Connections that would eat into it are
# answered ``busy``, as Redis lowers ``maxclients`` to fit its limit:
# without it, clients past the limit waited unanswered in the listen
# backlog until their own timeout, and a compaction could fail for want of
# a descriptor.
FD_HEADROOM = 32


def raise_open_files_limit() -> None:
    """The soft open files limit up to the hard one, as systemd advises a
    program that does not use select() (the soft 1024 it gives services is
    for those that do): else 1000 connections, the default
    ``max_connections``, would not fit. A failure is logged, no reason not
    to start: ``connection_room`` fits the connections to what there is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (soft, hard) or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open files limit from %d to %d: %s", soft, hard, exc)
        return
    log.debug("raised the open files limit from %d to %d", soft, hard)


def connection_room() -> int:
    """How many connections the open files limit leaves room for (read at
    each accept: ``prlimit`` may change it while the daemon runs)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 62
    return max(1, soft - FD_HEADROOM)


class Engine(Protocol):
    """What the server holds of an engine."""

    @property
    def dispatcher(self) -> Any:
        """Its dispatcher: ``batch()``, and a ``stats`` and a
        ``request_stop`` (the ``shutdown`` request) the server sets."""

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start its own tasks (timers, readers) in ``tg``."""

    async def figures(self, now: int) -> dict[str, Any]:
        """Its part of ``stats``: the sessions' counts and its own health."""

    async def stop(self) -> None:
        """Leave nothing undone at a clean stop."""

    def sessions(self) -> int:
        """How many sessions it holds (for systemd's status line)."""

    def describe(self) -> str:
        """Where the sessions are kept, for the log."""


class Server:
    """Serves one engine to any number of connections."""

    def __init__(self, engine: Engine, live: Live, event_loop: str) -> None:
        self.engine = engine
        self.live = live
        self.event_loop = event_loop
        self.started = time.monotonic()
        self.uid = os.getuid()
        self.refusals = Refusals(self.uid)
        self.dispatcher: Batches = engine.dispatcher
        engine.dispatcher.stats = self.stats
        # Set by a ``shutdown`` request: the daemon then stops as on SIGTERM
        # (``sessiond.daemon`` waits for it beside the signals).
        self.stop_requested = anyio.Event()
        engine.dispatcher.request_stop = self.stop_requested.set
        self.connections = Connections(self.dispatcher, live)
        self.open = 0  # connections accepted and not yet closed
        # Whether the one connection kept beyond max_connections is open
        # (counted in ``open`` too): see ``connection.RESERVED_OPS``.
        self.reserve_taken = False
        # Watchers waiting for their client to go away: drain() ends them.
        self._idle: set[anyio.CancelScope] = set()
        self._drained = anyio.Event()
        # The accept loop's scope, and its end; the listener it accepts on
        # (replaced when the socket is bound again: see ``listen_on``).
        self._accepting = anyio.CancelScope()
        self._accept_ended = anyio.Event()
        self._accept_stopped = False
        # Whether connections are being turned away for want of descriptors
        # (logged when it starts and when it ends).
        self._turning_away = False
        self.listener: SocketListener | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        # Closed to answer a client when accept() finds no descriptor free.
        self.spare = SpareDescriptor()

    async def stats(self, now: int) -> StatsInfo:
        """Every part's figures."""
        return StatsInfo(
            **await self.engine.figures(now),
            pid=os.getpid(),
            version=__version__,
            uptime_seconds=round(time.monotonic() - self.started, 3),
            event_loop=self.event_loop,
            connections=self.open,
            config_sources=self.live.layers.sources(),
        )

    def start(self, listener: SocketListener, tg: anyio.abc.TaskGroup) -> None:
        """Start accepting on ``listener`` and the timers, in ``tg``."""
        tg.start_soon(self.serve, listener, tg)
        self.engine.start(tg)

    # -- accepting -------------------------------------------------------

    async def serve(self, listener: SocketListener, tg: anyio.abc.TaskGroup) -> None:
        """Accept until ``stop_listening``; survive running out of descriptors.

        Connections run in ``tg`` so that they outlive the accept loop and
        can finish what is in flight when the daemon stops."""
        self._tg = tg
        self.listener = listener
        # In ``tg``: connections keep their time limits while they drain.
        tg.start_soon(self.connections.run_deadlines)
        await self._accept(listener, self._accepting, self._accept_ended)

    async def _accept(
        self, listener: SocketListener, scope: anyio.CancelScope, ended: anyio.Event
    ) -> None:
        assert self._tg is not None
        tg = self._tg
        backoff = 0.0
        try:
            with scope:
                while True:
                    try:
                        stream = await listener.accept()
                    except (OSError, anyio.BrokenResourceError) as exc:
                        # anyio wraps the accept(2) error in BrokenResourceError;
                        # the listener itself is still fine.
                        cause = exc if isinstance(exc, OSError) else exc.__cause__
                        if not isinstance(cause, OSError) or cause.errno not in _ACCEPT_ERRNOS:
                            raise
                        if cause.errno in _OUT_OF_DESCRIPTORS:
                            turned = self._turn_away(listener, cause)
                            if turned is None:
                                # Nothing waits, and accept() fails before it
                                # looks: wait for a client, not in a loop.
                                await anyio.wait_readable(
                                    listener.extra(SocketAttribute.raw_socket)
                                )
                            if turned is not False:
                                continue
                        if not backoff:
                            log.warning("accept failed (%s); backing off until descriptors "
                                        "are free again", cause.strerror)
                        # The pending connection keeps the listener readable, so
                        # retrying at once would spin: wait, as trio does.
                        backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX) or 0.01
                        await anyio.sleep(backoff)
                        continue
                    if backoff or self._turning_away:
                        log.info("accepting connections again")
                        backoff = 0.0
                        self._turning_away = False
                    tg.start_soon(self._connection, stream)
        finally:
            ended.set()

    def _turn_away(self, listener: SocketListener, cause: OSError) -> bool | None:
        """accept() found no descriptor free: answer the client it left
        waiting ``busy`` (or refused, for another uid) with the spare
        descriptor (``sessiond.spare``), rather than leave it unanswered
        until its own timeout. ``SpareDescriptor.turn_away``'s answer."""
        if not self._turning_away:
            log.warning("accept failed (%s): turning connections away as busy until "
                        "descriptors are free again", cause.strerror)
        self._turning_away = True
        return self.spare.turn_away(
            listener.extra(SocketAttribute.raw_socket), partial(self._answer_out_of, cause)
        )

    def _answer_out_of(self, cause: OSError, sock: socket.socket) -> bytes:
        """The one frame a connection accepted with the spare descriptor gets."""
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = self.uid  # cannot tell: it hears only that the daemon is busy
        if uid != self.uid:
            self.refusals.note(uid)
            return error_frame(0, refusal(self.uid, uid))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if cause.errno == errno.EMFILE:
            why = (f"out of file descriptors (the open files limit, RLIMIT_NOFILE {soft}, is "
                   f"used up; raise it with 'ulimit -n' or LimitNOFILE=)")
        else:
            why = "out of file descriptors (the system's file table is full)"
        return error_frame(0, Busy(f"daemon busy: {why}; try again"))

    async def listen_on(self, sock: socket.socket) -> None:
        """Accept on ``sock`` from now on, and close the listener before it
        (whose path was lost: ``sessiond.rebind``). Connections already
        accepted are not touched."""
        sock.setblocking(False)
        listener = await SocketListener.from_socket(sock)
        if self._accept_stopped or self._tg is None:
            await listener.aclose()
            return
        old, old_scope, old_ended = self.listener, self._accepting, self._accept_ended
        self.listener = listener
        self._accepting, self._accept_ended = anyio.CancelScope(), anyio.Event()
        self._tg.start_soon(self._accept, listener, self._accepting, self._accept_ended)
        # The old loop must be out of accept() before its socket is closed.
        old_scope.cancel()
        await old_ended.wait()
        if old is not None:
            await old.aclose()

    async def stop_listening(self) -> None:
        """Accept no more connections, and close the listener."""
        self._accept_stopped = True
        self._accepting.cancel()
        await self._accept_ended.wait()
        self.spare.release()
        if self.listener is not None:
            await self.listener.aclose()

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            try:
                uid = peer_uid(stream.extra(SocketAttribute.raw_socket))
            except OSError as exc:
                log.warning("refused a connection: cannot read peer credentials (%s)", exc)
                return
            if uid != self.uid:
                self.refusals.note(uid)
                await self._send_last(stream, error_frame(0, refusal(self.uid, uid)))
                return
            limit = min(self.live.settings.max_connections, connection_room())
            reserved = self.open - self.reserve_taken >= limit
            if self.connections.stopping or (reserved and self.reserve_taken):
                await self._send_last(stream, error_frame(0, self._busy()))
                return
            self.open += 1
            self.reserve_taken |= reserved
            try:
                await self._serve_connection(stream, reserved)
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
                self.open -= 1
                if reserved:
                    self.reserve_taken = False
                if self.connections.stopping and self.open == 0:
                    self._drained.set()

    def _busy(self) -> Busy:
        """Why a connection is turned away (out of ``_connection``: its
        locals would stay in the frame every open connection holds)."""
        room = connection_room()
        if self.connections.stopping:
            why = "shutting down"
        elif room < self.live.settings.max_connections:
            why = (f"too many connections for the open files limit (RLIMIT_NOFILE "
                   f"{room + FD_HEADROOM} leaves room for {room}, and the one more kept for "
                   f"{RESERVED_FOR} is in use; raise it with 'ulimit -n' or LimitNOFILE=)")
        else:
            why = (f"too many connections (max_connections={self.live.settings.max_connections}, "
                   f"and the one more kept for {RESERVED_FOR} is in use)")
        return Busy(f"daemon busy: {why}; try again")

    @staticmethod
    async def _send_last(stream: SocketStream, data: bytes) -> None:
        """A parting frame, if the peer still listens; it may well not."""
        with anyio.move_on_after(1):
            try:
                await stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def _serve_connection(self, stream: SocketStream, reserved: bool) -> None:
        watcher = await self.connections.serve(
            stream.extra(SocketAttribute.raw_socket), reserved
        )
        if watcher is not None:
            await self._watch(stream, watcher)

    # -- watch -----------------------------------------------------------

    async def _watch(self, stream: SocketStream, watcher: EventSource) -> None:
        """Stream events until the client goes away or the daemon stops."""
        try:
            async with anyio.create_task_group() as tg:

                async def until_closed() -> None:
                    # A watcher sends nothing more; EOF (or anything) ends it.
                    while await self._receive_any(stream):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(until_closed)
                while not self.connections.stopping:
                    try:
                        data = await watcher.next()
                    except SessionError as exc:
                        # The source failed (the shared engine is away): the
                        # client is told why and the watch ends, as it does
                        # when the daemon stops; it may resume at the cursor
                        # of the last event it saw. The client hangs up on
                        # the error, which ends the watch (until_closed):
                        # cancelling that receive just as the hang-up
                        # arrives trips a race in anyio's socket reader
                        # (InvalidStateError logged by the loop).
                        await self._send_last(stream, error_frame(0, exc))
                        with anyio.move_on_after(LAST_WORD_GRACE):
                            await anyio.sleep_forever()
                        break
                    if data:
                        # No send timeout here: a watcher that stops reading
                        # blocks only this task, its bounded queue overflows
                        # into a "lagged" event, and it may catch up later.
                        # What waits meanwhile is this one take (in the
                        # transport's buffer) and the queue: both bounded.
                        try:
                            await stream.send(data)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            # The watcher went away. Raised out of the task
                            # group this would arrive as an ExceptionGroup.
                            break
                tg.cancel_scope.cancel()
        finally:
            watcher.close()

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

    # -- stopping --------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop reading new requests and wait up to ``grace`` seconds for
        those in flight."""
        self.connections.interrupt_idle()
        for scope in list(self._idle):
            scope.cancel()
        if self.open:
            with anyio.move_on_after(grace):
                await self._drained.wait()
