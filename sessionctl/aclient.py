"""The Python client for asyncio and trio: ``AsyncClient``.

The same operations as ``Client`` (written once, in ``sessionctl.operations``:
here ``_submit`` returns a coroutine), the same errors and the same
autostart rules, on anyio, so that one client serves asyncio and trio
alike. The parts of a connection that do no I/O (frames, the checks of a
hello, the words of a refusal) are ``sessionctl.connection``'s, the paging
of an import ``sessionctl.importing``'s, shared with the blocking client.

This module alone imports anyio: ``import sessionctl``, ``Client`` and the
command line never do.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio
import anyio.abc
import anyio.to_thread

from sessionctl import arguments
from sessionctl.apipeline import AsyncPipeline
from sessionctl.connection import (
    ENCODE_ERRORS,
    RECV_BYTES,
    autostart_off_by,
    check_hello,
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
from sessionctl.results import SESSION_KINDS, Ack, Event, EventReply, Session
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
# A pipeline's frames go out in pieces of this size, each within the
# client's timeout (as the blocking pipeline's each poll is).
_SEND_PIECE = 1 << 18


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
        self._stream: anyio.abc.SocketStream | None = None
        # Held for a whole round trip or pipeline, as Client's lock is.
        self._lock = anyio.Lock()
        self._new_id = itertools.count(1).__next__
        self._buf = bytearray()
        self.server_version: str | None = None
        self.server_pid: int | None = None
        # The protocol version the hello agreed on (None before it).
        self.protocol_version: int | None = None
        # The private clients of the watches running on this one, which
        # aclose() closes too (by id, as Client's).
        self._watches: dict[int, AsyncClient] = {}

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

    async def _open_locked(self) -> anyio.abc.SocketStream:
        if self._closed:
            raise closed("AsyncClient", self._where)
        if self._stream is not None:
            return self._stream
        stream = await self._connect(autostart_off_by(self._autostart))
        self._stream = stream
        try:
            try:
                hello = await self._roundtrip_locked(hello_request(PROTOCOL_VERSION))
            except Unsupported:
                # A daemon of protocol version 1 (see hello_request).
                hello = await self._roundtrip_locked(hello_request(OLDEST_VERSION))
            assert isinstance(hello, HelloReply)
            check_hello(hello, self._where)
        except BaseException:
            await self._drop()
            raise
        self.server_version = hello.server
        self.server_pid = hello.pid
        self.protocol_version = hello.version
        if self._closed:
            # aclose() ran in another task while this one connected.
            await self._drop()
            raise closed("AsyncClient", self._where)
        return stream

    async def _connect(self, off_by: str | None, started: bool = False) -> anyio.abc.SocketStream:
        """A connected stream; when nothing answers, a daemon started first
        unless ``off_by`` says what turned that off."""
        try:
            with self._waiting():
                return await anyio.connect_unix(self._where)
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

    def _autostart_advice(self, off_by: str) -> str:
        return python_advice(type(self).__name__, off_by)

    async def aclose(self) -> None:
        """Close the connection, and those of the watches running on it
        (again: nothing happens). A call on the client from then on raises
        ``ClientClosed``; one that another task is waiting in, a watch
        included, ends with it."""
        self._closed = True
        for watching in list(self._watches.values()):
            await watching.aclose()
        await self._drop()

    async def _drop(self) -> None:
        """Close the connection, whatever it was in the middle of: the
        next request opens another, unless the client is closed."""
        stream, self._stream = self._stream, None
        self._buf.clear()
        if stream is not None:
            await anyio.aclose_forcefully(stream)

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

    def _gone(self) -> SessionError:
        """The error of a request whose connection is no more: closed by
        ``aclose``, or dropped by a send cut short (in a pipeline, say)."""
        if self._closed:
            return closed("AsyncClient", self._where)
        return DaemonUnavailable(f"the connection to {self._where} was cut off mid-request")

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        stream = self._stream
        if stream is None:
            raise self._gone()
        try:
            for start in range(0, len(data), _SEND_PIECE):
                with self._waiting():
                    await stream.send(bytes(data[start : start + _SEND_PIECE]))
        except BaseException as exc:
            # Part of a frame may be out: the daemon would read what
            # follows as garbage, so this connection is done with, whatever
            # stopped the send (a timeout, a cancellation, the daemon).
            error = await self._lost(exc)
            await self._drop()
            if error is None:
                raise
            raise error from exc

    async def _lost(self, exc: BaseException) -> SessionError | None:
        """What a send that failed with ``exc`` raises (``None``: ``exc``
        itself, a cancellation say): the client was closed, or the daemon
        closed the connection (saying why, maybe)."""
        if self._closed or isinstance(exc, anyio.ClosedResourceError):
            return self._gone()
        if isinstance(exc, TimeoutError):
            return DaemonUnavailable(f"sessiond on {self._where} did not take the request in time")
        if not isinstance(exc, (anyio.BrokenResourceError, OSError)):
            return None
        # The error the daemon closed the connection with (``busy``, say),
        # if it sent one before closing: it is still there to read.
        stream = self._stream
        if stream is not None:
            with anyio.move_on_after(0.5):
                try:
                    while True:
                        self._buf += await stream.receive(RECV_BYTES)
                        while (response := self._pop_frame()) is not None:
                            if isinstance(response, ErrorReply) and response.id == 0:
                                return from_code(response.code, response.message)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.BusyResourceError,
                        OSError, SessionError):
                    # Nothing (more) was said, or a pipeline's reading task
                    # has the stream, and reads what was.
                    pass
        return lost(self._where, exc)

    def _pop_frame(self) -> Response | None:
        return pop_frame(self._buf, self._where)

    async def _fill(self) -> None:
        """Receive what the daemon has sent (waiting up to ``timeout``)."""
        stream = self._stream
        if stream is None:
            raise self._gone()
        try:
            with self._waiting():
                chunk = await stream.receive(RECV_BYTES)
        except TimeoutError as exc:
            raise DaemonUnavailable(f"sessiond on {self._where} did not answer in time") from exc
        except anyio.ClosedResourceError as exc:
            raise self._gone() from exc
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            if self._closed:
                raise closed("AsyncClient", self._where) from exc
            # Lost: the next request connects again, as after a failed send.
            await self._drop()
            raise lost(
                self._where, None if isinstance(exc, anyio.EndOfStream) else exc
            ) from exc
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
            await self._drop()
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
                await self._drop()
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

    async def watch(
        self, *, user: str | None = None, after: str | None = None
    ) -> AsyncIterator[Event]:
        """Events as they happen (of ``user``'s sessions, or everyone's;
        in shared mode, after the event whose ``cursor`` is ``after``), on
        a connection of their own: ``async for event in c.watch(): ...``,
        until the generator is closed (``contextlib.aclosing`` closes it at
        once when the loop is left). Raises ``ClientClosed`` once this
        client is closed, and what opening a client raises when the new
        connection cannot be made."""
        self._check_open()
        req = watch_request(user, after)
        other = type(self)(self._where, timeout=None, autostart=self._autostart)
        self._watches[id(other)] = other
        try:
            first = await other._roundtrip(req)
            assert isinstance(first, EventReply)
            while True:
                reply = await other._read_frame()
                if isinstance(reply, ErrorReply):
                    raise from_code(reply.code, reply.message)
                assert isinstance(reply, EventReply)
                yield reply.event
        finally:
            self._watches.pop(id(other), None)
            await other.aclose()
