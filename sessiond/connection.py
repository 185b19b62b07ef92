"""Connections, the socket side: reading frames with deadlines, replies.

``Connections`` holds a dispatcher and the connections' limits: it reads
requests off each connection a batch at a time, hands the batch to the
dispatcher and sends back what it answers. Connections are anyio tasks;
their sockets are read and written directly, with readiness from the
asyncio loop under anyio's asyncio backend (see ``Conn``), and one task
enforces every connection's time limits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from typing import Final, Protocol

import anyio
import msgspec

from sessiond.errors import Busy, ProtocolError, TooLarge
from sessiond.events import EventSource
from sessiond.live import Live
from sessiond.protocol import (
    HEADER,
    LENGTH,
    ConfigGet,
    ConfigSet,
    Hello,
    Peer,
    Ping,
    Reload,
    Shutdown,
    Stats,
    error_frame,
)

# The server's logger: splitting the server into modules changes no record.
log = logging.getLogger("sessiond.server")

MAX_BATCH = 256
# One recv(2) takes at most this much: a pipeline of a few hundred requests,
# or a slice of a big import frame.
RECV_BYTES = 65536
MAX_BAD_FRAMES = 100
# A frame that announces more than this reserves its size against
# ``frame_buffer_bytes`` while it arrives; smaller ones (every ordinary
# request) always proceed.
SMALL_FRAME_BYTES = 65536
# Replies left unread, across all connections, are held up to this many
# connections' ``max_reply_queue_bytes`` (64 MiB at the default): past it,
# the connections whose clients have read nothing for longest are closed at
# once rather than after send_timeout, as Redis's maxmemory-clients evicts
# clients. Without it, clients that pipeline big reads and never read the
# answers made the daemon hold max_reply_queue_bytes for each, up to
# max_connections of them: 4 GiB at the defaults (measured: 1.1 GB for 300
# such clients). Longest unread, not the connection whose reply tips the
# total: that one may well be a client reading a big answer as fast as it
# comes, and a client that reads is never the one that stalled longest
# (``Connections._make_room``).
UNREAD_REPLY_CONNECTIONS = 16
# How long a client must have read nothing to be closed for another's
# reply; one that waits less is no sign of a client that does not read.
STALLED_SECONDS = 1.0

BUSY: Final = 0
IDLE: Final = 1  # waiting for the first byte of a frame
FRAME: Final = 2  # waiting for the rest of a frame
SEND: Final = 3  # waiting to send replies

# What the one connection kept beyond max_connections serves (see
# ``Server``): a hello, and what it takes to look at the daemon, change its
# settings or stop it, however many clients hold the others. (Without it,
# 'config max_connections 1' with a watch open locked every command out,
# the one that would undo it included, as PostgreSQL's
# superuser_reserved_connections and MySQL's extra admin connection avoid.)
RESERVED_OPS: Final = frozenset(
    cls.__struct_config__.tag
    for cls in (Hello, Ping, Stats, ConfigGet, ConfigSet, Reload, Shutdown)
)
# The commands that send them, for people.
RESERVED_FOR: Final = "sessionctl config, reload, stats, ping and shutdown"


class _Op(msgspec.Struct):
    op: str


_op_of = msgspec.msgpack.Decoder(_Op).decode


class Conn(Peer):
    """A connection's socket, its readiness registration, and the deadline
    of its current wait; and, as the ``Peer`` the dispatcher is given, the
    protocol version its hello agreed on (one object a connection: an idle
    connection's memory is what the daemon holds for each).

    Readiness comes from the asyncio loop the daemon runs on (anyio's asyncio
    backend), through one reader registration kept for the connection's
    life. ``anyio.wait_readable`` registers and unregisters on every call:
    on uvloop that makes and destroys a poll handle each time, which was
    measured at ~30 us a request (four times a kept registration), more
    than the request itself."""

    __slots__ = (
        "sock", "fd", "loop", "kind", "deadline", "expired", "waiter", "writing", "reading",
        "readable", "reserved", "unread", "stalled", "crowded",
    )

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.kind = BUSY
        # When the current wait must end; infinite when not waiting, so that
        # the deadline task never ends anything but a wait.
        self.deadline = math.inf
        self.expired = False
        self.waiter: asyncio.Future[None] | None = None
        self.writing = False  # the waiter waits to send, not to receive
        self.reading = False  # registered with the loop as a reader
        # Reported readable while nobody waited: recv() before waiting again.
        self.readable = False
        # The connection kept beyond max_connections: RESERVED_OPS only.
        self.reserved = False
        # Bytes of replies its client has yet to read (counted in
        # ``Connections.reply_bytes_held``), since when it has read none of
        # them, and whether it is to close to make room for others'.
        self.unread = 0
        self.stalled = math.inf
        self.crowded = False

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


class Stop(Exception):
    """The connection must close (after sending what it carries)."""

    def __init__(self, final: bytes = b"") -> None:
        self.final = final


class Batches(Protocol):
    """What answers the requests of a connection: a dispatcher of either
    engine (``sessiond.dispatch``, ``sessiond.shared.dispatch``)."""

    async def batch(
        self, bodies: list[memoryview], bad: int, out: bytearray, peer: Peer | None = None
    ) -> tuple[EventSource | None, int, int]:
        """Append the replies to ``bodies`` (from ``peer``'s connection,
        whose protocol version a hello among them may change) to ``out``;
        the event source a ``watch`` among them began, the count of bad
        frames in a row, and how many bodies were used."""


class Connections:
    """Reads requests off connections and sends back what the dispatcher
    answers, within each connection's time limits."""

    def __init__(self, dispatcher: Batches, live: Live) -> None:
        self.dispatcher = dispatcher
        self.live = live
        # Set by drain(): connections between frames close.
        self.stopping = False
        self._conns: set[Conn] = set()
        # Bytes reserved by large frames still arriving, on all connections.
        self.frame_bytes_held = 0
        # Bytes of replies that connections wait to send, their clients not
        # reading them (see ``UNREAD_REPLY_CONNECTIONS``).
        self.reply_bytes_held = 0
        self._deadline_target = math.inf
        self._deadline_wake = anyio.Event()

    # -- requests and replies --------------------------------------------
    #
    # The socket is driven directly: non-blocking recv and send, waiting
    # (``Conn.wait``) only when they would block. anyio's stream adds a
    # checkpoint (a trip round the event loop) to every receive and send,
    # and a timeout scope per call costs more than a small request itself.
    # The time limits are instead one deadline per connection, which the
    # deadline task enforces (see ``_run_deadlines``).

    def interrupt_idle(self) -> None:
        """Stop reading: connections between frames find ``stopping`` set
        and close; those in the middle of one finish it."""
        self.stopping = True
        for conn in self._conns:
            if conn.kind == IDLE:
                conn.interrupt()

    async def serve(self, sock: socket.socket, reserved: bool = False) -> EventSource | None:
        """Answer requests on ``sock`` until EOF, ``watch`` (returns its
        watcher, for the caller to stream events to), or the daemon
        stopping while this connection is between frames; ``reserved``:
        the connection kept beyond max_connections, which serves
        ``RESERVED_OPS`` alone. Raises ``Stop`` when the connection must
        close, ``anyio.BrokenResourceError`` when its peer went away.

        One coroutine, not a wrapper around another: an idle connection
        holds this frame alone, and a frame of its own costs every open
        connection its memory."""
        conn = Conn(sock, asyncio.get_running_loop())
        conn.reserved = reserved
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
        # What the large frame at the start of ``pending`` has reserved
        # against frame_buffer_bytes.
        held = 0
        self._conns.add(conn)
        try:
            while True:
                if not pending and self.stopping:
                    return None
                if drained and not conn.readable:
                    if pending:
                        await self._wait(conn, FRAME, started + self.live.settings.frame_timeout)
                    else:
                        idle = self.live.settings.idle_timeout
                        await self._wait(
                            conn, IDLE, time.monotonic() + idle if idle else math.inf
                        )
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
                if held and used:
                    # The frame it was held for began ``pending``: answered.
                    self.frame_bytes_held -= held
                    held = 0
                if not held and len(pending) >= HEADER:
                    held = self._hold_frame(pending)
        finally:
            self.frame_bytes_held -= held
            conn.close()
            self._conns.discard(conn)

    def _hold_frame(self, pending: bytes | bytearray) -> int:
        """Reserve room for the frame that begins ``pending`` and has yet to
        arrive whole; returns the bytes reserved (none for a small frame).
        ``Stop`` with ``busy`` when the frames arriving on all connections
        already hold ``frame_buffer_bytes``: without a bound, a thousand
        clients each sending most of a 4 MiB frame would make the daemon
        hold 4 GiB. A frame is let in when nothing else is held, so that
        one of ``max_frame_bytes`` always can be."""
        n: int = LENGTH.unpack_from(pending, 0)[0]
        if n <= SMALL_FRAME_BYTES:
            return 0
        limit = self.live.settings.frame_buffer_bytes
        if self.frame_bytes_held and self.frame_bytes_held + n > limit:
            raise Stop(error_frame(0, Busy(
                f"daemon busy: frames still arriving on other connections hold "
                f"{self.frame_bytes_held} bytes (frame_buffer_bytes={limit}), so a frame "
                f"of {n} bytes cannot be taken now; closing: try again"
            )))
        self.frame_bytes_held += n
        return n

    async def _answer(
        self, conn: Conn, data: bytes | bytearray, bad: int
    ) -> tuple[int, EventSource | None, int]:
        """Answer every whole frame at the start of ``data``, a batch at a
        time. Returns how many bytes were used, the watcher if a ``watch``
        ended them, and the count of bad frames in a row."""
        limit = self.live.settings.max_frame_bytes
        size = len(data)
        pos = 0
        while True:
            bodies: list[memoryview] = []
            ends: list[int] = []
            end = pos
            view: memoryview | None = None
            while len(bodies) < MAX_BATCH and size - end >= HEADER:
                (n,) = LENGTH.unpack_from(data, end)
                if n > limit:
                    raise Stop(error_frame(0, TooLarge(
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
            if conn.reserved:
                self._reserved_only(bodies)
            out = bytearray()
            watcher, bad, used = await self.dispatcher.batch(bodies, bad, out, conn)
            pos = ends[used - 1]
            if out:
                try:
                    await self._send(conn, out)
                except BaseException:
                    if watcher is not None:
                        watcher.close()
                    raise
            if watcher is not None:
                return pos, watcher, bad
            if bad > MAX_BAD_FRAMES:
                raise Stop(error_frame(0, ProtocolError("too many bad frames; closing")))
            if size - pos >= HEADER:
                # More frames follow: a turn for the others between batches.
                await anyio.lowlevel.checkpoint()

    def _reserved_only(self, bodies: list[memoryview]) -> None:
        """``Stop`` with ``busy``, before any of them is carried out, unless
        every request in ``bodies`` is one the reserved connection serves (a
        body that is no request is left to the dispatcher, which says so)."""
        for body in bodies:
            try:
                op = _op_of(body).op
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if op not in RESERVED_OPS:
                raise Stop(error_frame(0, Busy(
                    f"daemon busy: too many connections (max_connections="
                    f"{self.live.settings.max_connections}); the one connection kept beyond "
                    f"them serves only {RESERVED_FOR}, with which the limit can be raised; "
                    f"try again"
                )))

    async def _send(self, conn: Conn, data: bytearray) -> None:
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
        s = self.live.settings
        self._make_room(len(rest), UNREAD_REPLY_CONNECTIONS * s.max_reply_queue_bytes)
        conn.stalled = time.monotonic()
        conn.unread = len(rest)
        self.reply_bytes_held += conn.unread
        try:
            deadline = conn.stalled + s.send_timeout
            while rest:
                await self._wait(conn, SEND, deadline)
                try:
                    rest = rest[sock.send(rest) :]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise anyio.BrokenResourceError from exc
                conn.stalled = time.monotonic()
                self.reply_bytes_held -= conn.unread - len(rest)
                conn.unread = len(rest)
        finally:
            self.reply_bytes_held -= conn.unread
            conn.unread = 0
            conn.stalled = math.inf

    def _make_room(self, more: int, limit: int) -> None:
        """Make room for ``more`` bytes of unread replies within ``limit``:
        close the connections whose clients have read none of theirs for
        longest, if those stalled ``STALLED_SECONDS`` at least hold enough;
        else ``Stop`` this one, as the connections that would go have
        hardly begun to wait (a burst of clients that read nothing must not
        turn the bound into a round of closing each other while their
        memory is still held). One reply larger than ``limit`` alone is let
        through, as it always was: ``max_reply_queue_bytes`` bounds the
        batches it comes from."""
        over = self.reply_bytes_held + more - limit
        if over <= 0 or not self.reply_bytes_held:
            return
        now = time.monotonic()
        stalled = sorted((c for c in self._conns
                          if c.unread and not c.crowded and now - c.stalled >= STALLED_SECONDS),
                         key=lambda c: c.stalled)
        if sum(c.unread for c in stalled) < over:
            log.warning(
                "closing a connection whose client has read none of its replies yet: replies "
                "left unread on others hold %d bytes (%d connections' max_reply_queue_bytes)",
                self.reply_bytes_held, UNREAD_REPLY_CONNECTIONS,
            )
            raise Stop()
        for conn in stalled:
            if over <= 0:
                break
            log.warning(
                "closing a connection whose client has read none of its replies for %.1fs: "
                "replies left unread hold %d bytes, past %d connections' "
                "max_reply_queue_bytes", now - conn.stalled, self.reply_bytes_held,
                UNREAD_REPLY_CONNECTIONS,
            )
            conn.crowded = True
            conn.interrupt()
            over -= conn.unread

    async def _wait(self, conn: Conn, kind: int, deadline: float) -> None:
        """Until the socket is ready (readable, or writable for ``SEND``);
        ``Stop`` once ``deadline`` passes. May return early (when the
        daemon stops): callers retry."""
        conn.kind = kind
        conn.deadline = deadline
        if deadline < self._deadline_target:
            self._deadline_target = deadline
            self._deadline_wake.set()
        try:
            # Also ends early when the deadline task or drain() interrupts
            # it: see below, and the callers' retry.
            await conn.wait(kind == SEND)
        finally:
            conn.kind = BUSY
            conn.deadline = math.inf
        if conn.expired:
            raise self._expired(kind)
        if conn.crowded:
            raise Stop()

    def _expired(self, kind: int) -> Stop:
        s = self.live.settings
        if kind == SEND:
            log.warning(
                "closing a connection that left its replies unread for %gs (send_timeout)",
                s.send_timeout,
            )
            return Stop()
        if kind == IDLE:
            why = f"idle for {s.idle_timeout:g}s (idle_timeout)"
        else:
            why = f"frame not completed within {s.frame_timeout:g}s (frame_timeout)"
        return Stop(error_frame(0, ProtocolError(f"connection closed: {why}")))

    async def run_deadlines(self) -> None:
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
