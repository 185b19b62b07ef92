"""The Python client for asyncio and trio: ``AsyncClient``.

The same operations as ``Client`` (written once, in ``sessionctl.operations``:
here ``_submit`` returns a coroutine), the same errors and the same
autostart rules, on anyio, so that one client serves asyncio and trio
alike. The parts of a connection that do no I/O (frames, the checks of a
hello, the words of a refusal) are ``sessionctl.connection``'s, the paging
of an import ``sessionctl.importing``'s, shared with the blocking client.

The connection is a plain non-blocking socket, waited on with
``anyio.wait_readable`` and ``anyio.wait_writable`` rather than anyio's
socket stream: the stream's reader sets the result of a future that a
cancellation may have cancelled in the same turn of the loop, which asyncio
then logs as ``InvalidStateError`` (and anyio's pytest plugin raises);
``wait_readable`` does not. It also tells exactly how much of a request
went out before a cancellation: none (the connection stays in step) or
part of a frame (the connection is dropped).

This module alone imports anyio: ``import sessionctl``, ``Client`` and the
command line never do.
"""

from __future__ import annotations

import itertools
import os
import socket as _socket
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio
import anyio.lowlevel
import anyio.to_thread

from sessionctl import arguments
from sessionctl.apipeline import AsyncPipeline
from sessionctl.awatch import AsyncWatch
from sessionctl.connection import (
    ENCODE_ERRORS,
    RECV_BYTES,
    autostart_off_by,
    check_hello,
    check_server,
    client_socket,
    closed,
    hello_request,
    lost,
    pop_frame,
    python_advice,
    refusal,
)
from sessionctl.importing import add_up, import_plan
from sessionctl.operations import Operations, watch_request
from sessionctl.results import SESSION_KINDS, Ack, Session
from sessiond import model
from sessiond.errors import (
    DaemonUnavailable,
    ProtocolError,
    SessionError,
    Unsupported,
    from_code,
)
from sessiond.protocol import (
    ACK,
    OLDEST_VERSION,
    PAGE_MAX,
    PROTOCOL_VERSION,
    SESSION,
    ErrorReply,
    HelloReply,
    ImportResult,
    Request,
    Response,
    append_frame,
)

if TYPE_CHECKING:
    from pathlib import Path

T = TypeVar("T")


class AsyncClient(Operations):
    """A connection to sessiond for asyncio or trio, which tasks may share.

    ``AsyncClient(socket, timeout=..., autostart=...)`` means what
    ``Client(...)`` means, and makes no I/O: the connection opens at
    ``async with AsyncClient() as c:`` (or ``await c.connect()``, or the
    first request), starting a daemon when none answers as ``Client()``
    does (the start itself runs in a worker thread). Every operation is a
    coroutine: ``s = await c.get(sid)``.

    One connection serves one request at a time: tasks that share a client
    take turns (for requests in parallel, give each task a client of its
    own). Opening raises ``DaemonUnavailable`` or ``Unsupported`` as
    ``Client()`` does, and the operations raise what ``Client``'s raise.
    Once closed (``aclose()``, or the end of its ``async with`` block),
    every method, its pipelines and its watches raise ``ClientClosed``.
    ``server_version`` and ``server_pid`` are the daemon's once the
    connection is open (``None`` before). A client belongs to the event
    loop that opened it, and asyncio carries no loop across ``os.fork()``:
    a child makes an ``AsyncClient`` of its own."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = 30.0,
        autostart: bool | None = None,
    ) -> None:
        self._where = client_socket(socket, timeout, autostart)
        self.timeout = timeout
        self._autostart = autostart
        self._closed = False
        # Non-blocking; None until connected, and once lost or closed.
        self._sock: _socket.socket | None = None
        # A task is in _fill (a pipeline's reader, say): _lost leaves the
        # socket to it rather than take the answers it waits for.
        self._reading = False
        # Held for a whole round trip or pipeline, as Client's lock is.
        self._lock = anyio.Lock()
        self._new_id = itertools.count(1).__next__
        self._buf = bytearray()
        self.server_version: str | None = None
        self.server_pid: int | None = None
        # The protocol version the hello agreed on (None before it).
        self.protocol_version: int | None = None
        # The watches running on this one, which aclose() closes too (held
        # weakly: a watch left without aclose() closes once it is garbage).
        self._watches: weakref.WeakSet[AsyncWatch] = weakref.WeakSet()

    @property
    def path(self) -> Path:
        """The socket this client connects to."""
        from pathlib import Path

        return Path(self._where)

    # -- opening and closing ---------------------------------------------

    async def connect(self) -> None:
        """Open the connection now (a request opens it otherwise). Raises
        ``DaemonUnavailable``, ``Unsupported``, ``ClientClosed``."""
        async with self._lock:
            await self._open_locked()

    async def _open_locked(self) -> _socket.socket:
        if self._closed:
            raise closed("AsyncClient", self._where)
        if self._sock is not None:
            return self._sock
        sock = await self._connect(autostart_off_by(self._autostart))
        self._sock = sock
        try:
            try:
                hello = await self._roundtrip_locked(hello_request(PROTOCOL_VERSION))
            except Unsupported:
                # A daemon of protocol version 1 (see hello_request).
                hello = await self._roundtrip_locked(hello_request(OLDEST_VERSION))
            assert isinstance(hello, HelloReply)
            check_hello(hello, self._where)
        except BaseException:
            self._drop()
            raise
        self.server_version = hello.server
        self.server_pid = hello.pid
        self.protocol_version = hello.version
        if self._closed:
            # aclose() ran in another task while this one connected.
            self._drop()
            raise closed("AsyncClient", self._where)
        return sock

    async def _connect(self, off_by: str | None, started: bool = False) -> _socket.socket:
        """A connected socket; when nothing answers, a daemon started first
        unless ``off_by`` says what turned that off."""
        try:
            with self._waiting():
                return await self._connect_patiently()
        except TimeoutError as exc:  # an OSError too: first
            raise DaemonUnavailable(
                f"sessiond on {self._where} did not take the connection in time"
            ) from exc
        except OSError as exc:
            error = refusal(self._where, exc, off_by, started, self._autostart_advice)
            if error is not None:
                raise error from exc
        from sessionctl.autostart import start_daemon

        # Left to finish on its own if the task is cancelled: it waits as
        # long as the daemon it started runs, up to the timeout.
        await anyio.to_thread.run_sync(
            start_daemon, self.path, self.timeout, abandon_on_cancel=True
        )
        return await self._connect(off_by, started=True)

    async def _connect_patiently(self) -> _socket.socket:
        """connect(2) on a non-blocking socket, waiting while the daemon's
        accept backlog is full (EAGAIN: a Unix socket's connect never waits
        in the kernel), as ``connection.connect_patiently`` does; the
        listener checked before anything is sent (``check_server``)."""
        await anyio.lowlevel.checkpoint()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            delay = 0.001
            while True:
                try:
                    sock.connect(self._where)
                except BlockingIOError:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.05)
                else:
                    break
            check_server(sock, self._where)
        except BaseException:
            sock.close()
            raise
        return sock

    def _autostart_advice(self, off_by: str) -> str:
        return python_advice(type(self).__name__, off_by)

    async def aclose(self) -> None:
        """Close the connection, and those of the watches running on it
        (again: nothing happens). A call on the client from then on raises
        ``ClientClosed``; one that another task is waiting in, a watch
        included, ends with it."""
        self._closed = True
        for watching in list(self._watches):
            await watching.aclose()
        self._drop()

    def _forget(self) -> None:
        """Close at once, outside any event loop (a watch that is
        garbage): nobody waits on the connection any more."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _drop(self) -> None:
        """Close the connection, whatever it was in the middle of (a task
        waiting on it wakes with ``ClosedResourceError``): the next
        request opens another, unless the client is closed."""
        sock, self._sock = self._sock, None
        self._buf.clear()
        if sock is not None:
            anyio.notify_closing(sock)
            sock.close()

    def _check_open(self) -> None:
        if self._closed:
            raise closed("AsyncClient", self._where)

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- frames ----------------------------------------------------------

    def _waiting(self) -> AbstractContextManager[Any]:
        """One wait for the daemon, within ``timeout`` (``TimeoutError``)."""
        return nullcontext() if self.timeout is None else anyio.fail_after(self.timeout)

    def _gone(self, midway: bool = True) -> SessionError:
        """The error of a request whose connection is no more: closed by
        ``aclose``, or dropped by a send cut short (in a pipeline, say).
        ``midway``: the request was on its way, or awaiting its answer."""
        if self._closed:
            return closed("AsyncClient", self._where, midway)
        return DaemonUnavailable(f"the connection to {self._where} was cut off mid-request")

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Send whole frames, each wait for the socket within ``timeout``.
        Stopped before a byte went out (a cancellation, the timeout), the
        connection stays as it was; stopped part-way, it is dropped: the
        daemon would read what follows as the rest of a frame."""
        sock = self._sock
        if sock is None:
            raise self._gone(midway=False)
        sent = 0
        with memoryview(data) as view:
            try:
                while sent < len(view):
                    try:
                        sent += sock.send(view[sent:])
                    except BlockingIOError:
                        with self._waiting():
                            await anyio.wait_writable(sock)
            except BaseException as exc:
                error = await self._lost(exc, sock)
                # A frame cut short, or a connection the daemon closed.
                broken = error is not None and not isinstance(exc, TimeoutError)
                if (sent or broken) and self._sock is sock:
                    self._drop()
                if error is None:
                    raise
                raise error from exc

    async def _lost(self, exc: BaseException, sock: _socket.socket) -> SessionError | None:
        """What a send on ``sock`` that failed with ``exc`` raises (``None``:
        ``exc`` itself, a cancellation say): the client was closed, or the
        daemon closed the connection (saying why, maybe)."""
        if self._closed or self._sock is not sock or isinstance(exc, anyio.ClosedResourceError):
            return self._gone()
        if isinstance(exc, TimeoutError):
            return DaemonUnavailable(f"sessiond on {self._where} did not take the request in time")
        if not isinstance(exc, OSError):
            return None
        # The error the daemon closed the connection with (``busy``, say),
        # if it sent one before closing: it is still there to read (unless
        # a pipeline's reading task is at it, and reads what was).
        if not self._reading:
            with anyio.move_on_after(0.5):
                try:
                    while chunk := await self._recv(sock):
                        self._buf += chunk
                        while (response := self._pop_frame()) is not None:
                            if isinstance(response, ErrorReply) and response.id == 0:
                                return from_code(response.code, response.message)
                except (anyio.ClosedResourceError, anyio.BusyResourceError, OSError,
                        SessionError):
                    pass  # nothing (more) was said
        return lost(self._where, exc)

    async def _recv(self, sock: _socket.socket) -> bytes:
        """What the daemon has sent on ``sock``, waiting for some (b"" at
        its end). Raises what recv(2) and ``anyio.wait_readable`` raise."""
        while True:
            try:
                return sock.recv(RECV_BYTES)
            except BlockingIOError:
                await anyio.wait_readable(sock)

    def _pop_frame(self) -> Response | None:
        return pop_frame(self._buf, self._where)

    async def _fill(self) -> None:
        """Receive what the daemon has sent (waiting up to ``timeout``)."""
        sock = self._sock
        if sock is None:
            raise self._gone()
        self._reading = True
        try:
            # A checkpoint even when the answer is there already, as anyio's
            # streams make: a pipeline's reader lets its sender run.
            await anyio.lowlevel.checkpoint()
            with self._waiting():
                chunk = await self._recv(sock)
        except TimeoutError as exc:
            from sessionctl.unreachable import no_answer

            raise DaemonUnavailable(no_answer(self._where, sock)) from exc
        except (anyio.ClosedResourceError, OSError) as exc:
            if self._closed or self._sock is not sock:
                # Closed by aclose(), or dropped by a send cut short.
                raise self._gone() from exc
            # Lost: the next request connects again, as after a failed send.
            self._drop()
            raise lost(self._where, exc) from exc
        finally:
            self._reading = False
        if not chunk:
            if self._closed or self._sock is not sock:
                raise self._gone()
            self._drop()
            raise lost(self._where, None)
        self._buf += chunk

    async def _read_frame(self) -> Response:
        try:
            while True:
                response = self._pop_frame()
                if response is not None:
                    return response
                await self._fill()
        except ProtocolError:
            # Where the next reply starts is unknown: the connection is
            # dropped as a lost one is, and the next request connects again.
            self._drop()
            raise

    async def _roundtrip(self, req: Request) -> Response:
        async with self._lock:
            await self._open_locked()
            return await self._roundtrip_locked(req)

    async def _roundtrip_locked(self, req: Request) -> Response:
        req.id = self._new_id()
        if self.protocol_version == OLDEST_VERSION and getattr(req, "returning", SESSION) == ACK:
            # Asked before the connection opened (_speaks_acks): a daemon of
            # version 1 answers the whole session, which the ack is made of.
            req.returning = SESSION  # type: ignore[attr-defined]
        out = bytearray()
        try:
            append_frame(out, req)
        except ENCODE_ERRORS as exc:
            raise arguments.unsendable(req, exc) from exc
        await self._send(out)
        while True:
            # An answer to a request whose wait was cancelled comes first,
            # and is passed over.
            response = await self._read_frame()
            if response.id == req.id:
                break
            if isinstance(response, ErrorReply) and response.id == 0:
                # The daemon's last word before it closes the connection.
                self._drop()
                raise from_code(response.code, response.message)
        if isinstance(response, ErrorReply):
            raise from_code(response.code, response.message)
        return response

    def _submit(self, req: Request, convert: Callable[[Response], T]) -> Any:
        # A coroutine of the value: what ``operation`` tells the type
        # checker an AsyncClient's methods return. The arguments were
        # checked already, at the call.
        return self._call(req, convert)

    async def _call(self, req: Request, convert: Callable[[Response], T]) -> T:
        return convert(await self._roundtrip(req))

    def _speaks_acks(self) -> bool:
        # Not known before the connection opens: asked for, and taken back
        # at the send if the daemon turns out to speak version 1.
        return self.protocol_version != OLDEST_VERSION

    # -- higher level ----------------------------------------------------

    async def iter_sessions(
        self, *, status: str | None = None, user: str | None = None, page: int = PAGE_MAX
    ) -> AsyncIterator[Session]:
        """Every matching session, fetched ``page`` at a time (raises as
        ``list_page`` does): ``async for s in c.iter_sessions(): ...``."""
        cursor: str | None = None
        while True:
            sessions, cursor = await self.list_page(
                status=status, user=user, limit=page, cursor=cursor
            )
            for s in sessions:
                yield s
            if cursor is None:
                return

    async def list(
        self, *, status: str | None = None, user: str | None = None, limit: int | None = None
    ) -> list[Session]:
        """Matching sessions in creation order, at most ``limit`` (raises as
        ``list_page`` does)."""
        out: list[Session] = []
        page = arguments.page_size(limit)
        cursor: str | None = None
        while limit is None or len(out) < limit:
            sessions, cursor = await self.list_page(
                status=status, user=user, limit=page, cursor=cursor
            )
            out.extend(sessions)
            if cursor is None:
                break
        return out if limit is None else out[:limit]

    async def import_sessions(self, sessions: Iterable[Session | model.Session]) -> ImportResult:
        """Merge sessions from elsewhere, a page per request; the totals of
        every page (see ``Client.import_sessions``, which raises alike)."""
        total = ImportResult(reasons=[])
        async for part in self.import_pages(sessions):
            add_up(total, part)
        return total

    async def import_pages(
        self, sessions: Iterable[Session | model.Session]
    ) -> AsyncIterator[ImportResult]:
        """Merge sessions a page at a time, yielding each page's result once
        the daemon has committed it (see ``Client.import_pages``, which
        raises alike)."""
        arguments.sessions(sessions, SESSION_KINDS)
        config = await self.config("max_frame_bytes")
        for item in import_plan(sessions, int(config["max_frame_bytes"])):
            yield item if isinstance(item, ImportResult) else await self.import_page(item)

    @overload
    def pipeline(
        self, *, returning: Literal["session"] | None = None
    ) -> AsyncPipeline[Session]: ...

    @overload
    def pipeline(self, *, returning: Literal["ack"]) -> AsyncPipeline[Ack]: ...

    def pipeline(self, *, returning: str | None = None) -> AsyncPipeline[Any]:
        """Queue requests, send them all at once when the block ends, then
        read the answers: ``async with c.pipeline() as p: a = p.get(x)``
        ... ``a.result()``. ``returning="ack"`` as in ``Client.pipeline``.
        Raises ``ClientClosed`` once the client is closed,
        ``InvalidRequest`` for another ``returning``; see
        ``AsyncPipeline``."""
        self._check_open()
        return AsyncPipeline(self, returning)

    def watch(self, *, user: str | None = None, after: str | None = None) -> AsyncWatch:
        """Events as they happen (of ``user``'s sessions, or everyone's;
        in shared mode, after the event whose ``cursor`` is ``after``), on
        a connection of their own, opened at the first ``async for event
        in c.watch(): ...`` step, until the watch is closed (``aclose()``,
        ``async with``, ``contextlib.aclosing``; else once it is garbage).
        A wait for an event that is cancelled loses none (see
        ``AsyncWatch``, which says what iterating raises). Raises
        ``ClientClosed`` once this client is closed, ``InvalidRequest``
        for a ``user`` or ``after`` of the wrong kind."""
        self._check_open()
        return AsyncWatch(self, watch_request(user, after))
