"""The blocking Python client: a plain socket and msgspec, no event loop.

Every method sends one request and returns the daemon's answer as a typed
struct, or raises a ``SessionError`` subclass. ``pipeline()`` sends many
requests without waiting for each answer. (``sessionctl.aclient`` is the
same client for asyncio and trio; the parts of a connection both share
are ``sessionctl.connection``'s.)

A ``Client`` may be shared by threads, as redis-py's and httpx's clients
are: one lock serialises the round trips (and pipeline executions) on its
connection, whose buffers and request ids are shared state. ``watch()``
has a connection of its own.

A ``Client`` survives ``os.fork()``, as redis-py's connection pool does
(``_checkpid``): it remembers the process whose connection it holds, and
a call in another (a child) never touches the inherited one, whose
replies are its parent's: the child's next call connects afresh.
"""

from __future__ import annotations

import _thread
import itertools
import os
import socket as _socket
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from sessionctl.connection import (
    BIG_RECV_BYTES,
    ENCODE_ERRORS,
    RECV_BYTES,
    autostart_off_by,
    check_hello,
    check_server,
    client_socket,
    closed,
    connect_patiently,
    decode,
    hello_request,
    lost,
    pop_frame,
    python_advice,
    refusal,
    use_kernel_timeouts,
)
from sessionctl.operations import Operations, watch_request
from sessionctl.results import SESSION_KINDS, Ack, Event, EventReply, Session
from sessiond import model
from sessiond.errors import (
    ClientClosed,
    DaemonUnavailable,
    ProtocolError,
    SessionError,
    Unsupported,
    from_code,
)
from sessiond.protocol import (
    HEADER,
    OLDEST_VERSION,
    PAGE_MAX,
    PROTOCOL_VERSION,
    ErrorReply,
    HelloReply,
    ImportResult,
    Request,
    Response,
    append_frame,
)

if TYPE_CHECKING:
    from pathlib import Path

    from sessionctl.pipeline import Pending, Pipeline

T = TypeVar("T")
_getpid = os.getpid
# Taken by the thread that hands a forked client's state over to its new
# process (``Client._forked``); made anew in a child, where a thread of
# the parent that held it at the fork no longer runs.
_fork_lock = _thread.allocate_lock()


def _new_fork_lock() -> None:
    global _fork_lock
    _fork_lock = _thread.allocate_lock()


os.register_at_fork(after_in_child=_new_fork_lock)


class Client(Operations):
    """A connection to sessiond, which threads may share.

    ``Client()`` finds the socket as the daemon does (``$SESSIOND_SOCKET``,
    then the default path) and, when no daemon answers there, starts one as
    ``sessionctl`` does (through systemd when its units are installed).
    ``autostart=False``, or ``SESSIONCTL_NO_AUTOSTART=1`` in the
    environment when ``autostart`` is not given, turns that off.
    ``timeout`` is how many seconds each wait for the daemon may take (to
    connect, to send, for an answer, for a daemon it started to answer),
    above 0 and at most 86400 (a day); ``None`` waits for ever.

    Raises ``DaemonUnavailable`` when no daemon answers (or none could be
    started), ``Unsupported`` when the daemon speaks another protocol,
    ``InvalidRequest`` for a ``socket`` that is not a path (a str, a
    ``Path`` or bytes), a ``timeout`` or ``autostart`` of the wrong kind
    or out of bounds (``inf`` too), for a socket path whose ``~user`` names
    nobody, or for a ``SESSIONCTL_NO_AUTOSTART`` that is not a boolean.
    Once closed (``close()``, or the end of its ``with`` block), every
    method, its pipelines and its watches raise ``ClientClosed``. After
    ``os.fork()`` the child's first call connects afresh (see the
    module)."""

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
        # Held for a whole round trip or pipeline: the socket, the buffers
        # and the replies' order are the connection's, not a thread's.
        self._lock = _thread.allocate_lock()
        # Request ids, unique on the connection whichever thread asks: a
        # count's __next__ is one step in C, which no other thread can split
        # (threading numbers its threads with one for the same reason).
        self._new_id = itertools.count(1).__next__
        # Received bytes that are not yet a whole reply; empty between round
        # trips, when a reply arrives in one piece.
        self._buf = bytearray()
        self._out = bytearray()
        # Requests a pipeline sent and whose answers nobody has read yet, by
        # id: whoever reads next settles them (a round trip reads past
        # them to its own answer). See sessionctl.pipeline.
        self._strays: dict[int, Pending[Any]] = {}
        # None once the connection is lost: the next call opens another
        # (see _drop), as redis-py's connection pool does.
        self._sock: _socket.socket | None = None
        # The process whose connection, lock and buffers these are: another
        # (a child after os.fork) leaves them to it (see _forked).
        self._pid = _getpid()
        # The private clients of the watches running on this one, which
        # close() closes too: a watch blocked in another thread ends.
        # (By id: a dict, which close() copies in one step whatever other
        # threads do.)
        self._watches: dict[int, Client] = {}
        self.server_version = ""
        self.server_pid = 0
        # The version the hello agreed on: 2 lets operations on one
        # session be answered with acks (``returning="ack"``).
        self.protocol_version: int | None = None
        self._open()

    def _open(self) -> _socket.socket:
        """Connect (starting a daemon as the first connect may) and say
        hello; the socket, now the client's."""
        sock = self._connect(autostart_off_by(self._autostart))
        self._sock = sock
        try:
            try:
                hello = self._exchange(hello_request(PROTOCOL_VERSION))
            except Unsupported:
                # A daemon of protocol version 1 refuses any other hello:
                # asked again in its version (see hello_request).
                hello = self._exchange(hello_request(OLDEST_VERSION))
            assert isinstance(hello, HelloReply)
            check_hello(hello, self._where)
        except BaseException:
            self._sock = None
            sock.close()
            raise
        self.server_version = hello.server
        self.server_pid = hello.pid
        self.protocol_version = hello.version
        if self._closed:
            # close() ran in another thread while this one connected.
            self._sock = None
            sock.close()
            raise closed("Client", self._where)
        return sock

    def _forked(self) -> None:
        """Leave what the parent process had to it, in a child after
        ``os.fork()``: the connection is closed here, not shut down (the
        parent goes on using it), never read from or written to (its
        replies are the parent's), and the next call connects afresh. The
        lock is made anew: a thread of the parent may have held it at the
        fork, and that thread does not run here. The requests a pipeline
        sent before the fork are answered to the parent: they settle with
        an error saying so."""
        with _fork_lock:
            pid = _getpid()
            if self._pid == pid:
                return  # another thread of this process did it
            sock, self._sock = self._sock, None
            self._lock = _thread.allocate_lock()
            self._buf = bytearray()
            self._out = bytearray()
            strays, self._strays = self._strays, {}
            parent, self._pid = self._pid, pid  # last: the rest is ready
        if sock is not None:
            sock.close()
        error = DaemonUnavailable(
            f"this request went to {self._where} from process {parent}, which forked this "
            f"one, and its answer goes there: whether it was carried out is unknown here"
        )
        for pending in strays.values():
            pending._fail(error)

    def _hold(self) -> _thread.LockType:
        """The lock of the connection, once this client is this process's
        (see ``_forked``): one pid compare a call."""
        if self._pid != _getpid():
            self._forked()
        return self._lock

    def _socket_locked(self) -> _socket.socket:
        """The connection, opened again if the last one was lost (with the
        lock held). Raises ``ClientClosed``, and what ``Client()`` raises."""
        self._check_open()
        sock = self._sock
        return sock if sock is not None else self._open()

    def _drop(self, error: SessionError) -> SessionError:
        """Forget a connection that is lost (the daemon closed it, or went):
        the requests a pipeline sent on it and whose answers were not read
        settle with ``error`` (whether the daemon carried them out is
        unknown, so nothing is sent again), and the next call connects
        again. Returns ``error``, to raise."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._buf.clear()
        strays, self._strays = self._strays, {}
        for pending in strays.values():
            pending._fail(error)
        return error

    def _release(self) -> None:
        """Close the connection while nothing is on it; the next call
        connects again. For the CLI's ``watch``, which runs on a connection
        of its own: the command's would sit idle, counted against the
        daemon's ``max_connections``, until its ``idle_timeout``."""
        with self._hold():
            if self._strays:
                return  # answers still to be read on it
            sock, self._sock = self._sock, None
            self._buf.clear()
        if sock is not None:
            sock.close()

    @property
    def path(self) -> Path:
        """The socket this client is connected to."""
        from pathlib import Path

        return Path(self._where)

    def _connect(self, off_by: str | None, started: bool = False) -> _socket.socket:
        """A connected socket; when nothing answers, a daemon started first
        unless ``off_by`` says what turned that off."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            connect_patiently(sock, self._where, self.timeout)
            use_kernel_timeouts(sock, self.timeout)
        except OSError as exc:
            sock.close()
            error = refusal(self._where, exc, off_by, started, self._autostart_advice)
            if error is not None:
                raise error from exc
        else:
            try:
                check_server(sock, self._where)
            except BaseException:
                sock.close()
                raise
            return sock
        from sessionctl.autostart import start_daemon

        note = start_daemon(self.path, self.timeout)
        if note is not None:
            self._started_apart(note)
        return self._connect(off_by, started=True)

    def _started_apart(self, note: str) -> None:
        """What ``start_daemon`` said a person should know of the daemon it
        started (its data dir, of its own, empty beside one that holds
        sessions). A library prints nothing; the CLI warns."""

    def _autostart_advice(self, off_by: str) -> str:
        """How to let the client start the daemon, in the words of whoever
        made it (the CLI and the shim speak of their own flags): ``off_by``
        is ``BY_ARGUMENT`` or ``BY_ENVIRONMENT``."""
        return python_advice(type(self).__name__, off_by)

    def close(self) -> None:
        """Close the connection, and those of the watches running on it
        (again: nothing happens). A call on the client from then on raises
        ``ClientClosed``; one that another thread is waiting in, a watch
        included, ends with it."""
        self._closed = True
        if self._pid != _getpid():
            self._forked()  # the parent's connection is not shut down
        for watching in list(self._watches.values()):
            watching.close()
        sock = self._sock
        if sock is None:
            return  # lost before, and not opened again
        try:
            # Wakes a thread blocked in recv on this socket, which close()
            # alone would leave waiting for its timeout.
            sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass  # closed before, or the daemon went first: nothing to wake
        sock.close()

    def _check_open(self) -> None:
        if self._closed:
            raise closed("Client", self._where)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- frames ----------------------------------------------------------

    def _send(self, sock: _socket.socket, data: bytes | bytearray) -> None:
        # send(2) in a loop rather than sendall, which does not say how much
        # went out before it failed: a frame cut short (the send timed out,
        # or a signal handler raised, KeyboardInterrupt say) would have the
        # daemon read the next request as the rest of it, and every call
        # after would wait in vain. The connection is dropped then, and the
        # next call connects again; the request was not carried out (the
        # daemon acts on whole frames only).
        sent = 0
        try:
            sent = sock.send(data)  # the usual case: all of it at once
            if sent < len(data):
                with memoryview(data) as view:
                    while sent < len(view):
                        sent += sock.send(view[sent:])
        except BlockingIOError as exc:
            error = DaemonUnavailable(
                f"sessiond on {self._where} did not take the request in time"
            )
            if sent:
                raise self._drop(error) from exc
            raise error from exc
        except OSError as exc:
            raise self._lost(exc) from exc
        except BaseException:
            if sent:
                self._drop(DaemonUnavailable(
                    f"the connection to {self._where} was cut off mid-request; the "
                    f"client's next call connects again"))
            raise

    def _lost(self, exc: OSError) -> SessionError:
        """What a send that failed with ``exc`` raises: the client was
        closed, or the daemon closed the connection (saying why, maybe),
        which is then dropped (see ``_drop``)."""
        if self._closed:
            return closed("Client", self._where, midway=True)
        parting = self._parting_error()
        if parting is not None:
            return self._drop(parting)
        return self._drop(lost(self._where, exc))

    def _parting_error(self) -> SessionError | None:
        """The error the daemon closed the connection with (``busy``, say),
        if it sent one before closing: a request sent after it fails with
        EPIPE, but what it sent is still there to read. The answers to
        requests a pipeline sent are among it: they settle their
        ``Pending``s (a request carried out never says it was not)."""
        sock = self._sock
        if sock is None:
            return None
        try:
            while chunk := sock.recv(RECV_BYTES, _socket.MSG_DONTWAIT):
                self._buf += chunk
                while (response := self._pop_frame()) is not None:
                    if isinstance(response, ErrorReply) and response.id == 0:
                        return from_code(response.code, response.message)
                    pending = self._strays.pop(response.id, None)
                    if pending is not None:
                        pending._settle(response)
        except (OSError, ProtocolError):
            return None
        return None

    def _pop_frame(self) -> Response | None:
        """The next whole reply already received, if there is one. Raises
        ``ProtocolError``, the connection dropped, for one it cannot read."""
        try:
            return pop_frame(self._buf, self._where)
        except ProtocolError as exc:
            # Where the next reply starts is unknown: the connection is
            # dropped as a lost one is, and the next call connects again.
            self._drop(exc)
            raise

    def _recv(self) -> bytes:
        """What the daemon has sent (waiting up to ``timeout``)."""
        buf = self._buf
        size = RECV_BYTES
        if len(buf) >= HEADER and int.from_bytes(buf[:HEADER], "big") >= RECV_BYTES:
            size = BIG_RECV_BYTES  # the rest of a big reply
        sock = self._sock
        if sock is None:
            # Dropped while a pipeline's answers were awaited (they settled).
            raise self._gone()
        try:
            chunk = sock.recv(size)
        except (TimeoutError, BlockingIOError) as exc:
            from sessionctl.unreachable import no_answer

            raise DaemonUnavailable(no_answer(self._where, sock)) from exc
        except OSError as exc:
            if self._closed:
                raise closed("Client", self._where, midway=True) from exc
            raise self._drop(lost(self._where, exc)) from exc
        if not chunk:
            if self._closed:
                raise closed("Client", self._where, midway=True)
            raise self._drop(lost(self._where, None))
        return chunk

    def _gone(self) -> SessionError:
        if self._closed:
            return closed("Client", self._where)
        return DaemonUnavailable(f"the connection to {self._where} was lost; the next call "
                                 f"connects again")

    def _fill(self) -> None:
        """Receive what the daemon has sent (waiting up to ``timeout``)."""
        self._buf += self._recv()

    def _read_frame(self) -> Response:
        if not self._buf:
            # The usual case: the reply arrives whole and alone, and is
            # decoded where it lies.
            chunk = self._recv()
            if len(chunk) > HEADER and int.from_bytes(chunk[:HEADER], "big") == len(chunk) - HEADER:
                try:
                    return decode(memoryview(chunk)[HEADER:], self._where)
                except ProtocolError as exc:
                    self._drop(exc)  # as _pop_frame does
                    raise
            self._buf += chunk
        while True:
            response = self._pop_frame()
            if response is not None:
                return response
            self._fill()

    def _roundtrip(self, req: Request) -> Response:
        if self._pid != _getpid():  # _hold, written out: every call passes here
            self._forked()
        with self._lock:
            return self._roundtrip_locked(req)

    def _roundtrip_locked(self, req: Request) -> Response:
        self._socket_locked()
        return self._exchange(req)

    def _exchange(self, req: Request) -> Response:
        """Send ``req`` on the connection there is and read its answer."""
        sock = self._sock
        if sock is None:
            raise self._gone()
        req.id = self._new_id()
        out = self._out
        del out[:]
        try:
            append_frame(out, req)
        except ENCODE_ERRORS as exc:
            from sessionctl.arguments import unsendable

            raise unsendable(req, exc) from exc
        self._send(sock, out)
        while True:
            response = self._read_frame()
            if response.id == req.id:
                break
            if isinstance(response, ErrorReply) and response.id == 0:
                # The daemon's last word before it closes the connection.
                raise self._drop(from_code(response.code, response.message))
            # The answer to a request a pipeline sent: its Pending's.
            pending = self._strays.pop(response.id, None)
            if pending is not None:
                pending._settle(response)
        if isinstance(response, ErrorReply):
            raise from_code(response.code, response.message)
        return response

    def _submit(self, req: Request, convert: Callable[[Response], T]) -> Any:
        # The value itself: what ``operation`` tells the type checker a
        # Client's methods return.
        return convert(self._roundtrip(req))

    def _speaks_acks(self) -> bool:
        return self.protocol_version is not None and self.protocol_version >= 2

    # -- higher level ----------------------------------------------------

    def iter_sessions(
        self, *, status: str | None = None, user: str | None = None, page: int = PAGE_MAX
    ) -> Iterator[Session]:
        """Every matching session, fetched ``page`` at a time (raises as
        ``list_page`` does)."""
        cursor: str | None = None
        while True:
            sessions, cursor = self.list_page(status=status, user=user, limit=page, cursor=cursor)
            yield from sessions
            if cursor is None:
                return

    def list(
        self, *, status: str | None = None, user: str | None = None, limit: int | None = None
    ) -> list[Session]:
        """Matching sessions in creation order, at most ``limit`` (raises as
        ``list_page`` does)."""
        out: list[Session] = []
        from sessionctl import arguments

        page = arguments.page_size(limit)
        for s in self.iter_sessions(status=status, user=user, page=page):
            out.append(s)
            if limit is not None and len(out) >= limit:
                break
        return out

    def import_sessions(
        self, sessions: Iterable[Session | model.Session]
    ) -> ImportResult:
        """Merge sessions from elsewhere, a page per request (see
        ``import_pages``); the totals of every page. Importing the same
        sessions again changes nothing: those already there are skipped.
        Raises as ``import_pages`` does."""
        from sessionctl.importing import add_up

        total = ImportResult(reasons=[])
        for part in self.import_pages(sessions):
            add_up(total, part)
        return total

    def import_pages(
        self, sessions: Iterable[Session | model.Session]
    ) -> Iterator[ImportResult]:
        """Merge sessions a page at a time, yielding each page's result once
        the daemon has committed it, so a caller that stops between pages
        knows exactly what was committed.

        ``sessions`` are ``Session``s as this client returns them, or as
        ``sessiond.legacy.read_sessions`` reads an export or a legacy file.
        A page holds at most ``PAGE_MAX`` sessions and fits in the smaller
        of ``IMPORT_PAGE_BYTES`` and the daemon's ``max_frame_bytes`` (asked
        once, here). A session too big for any page is not sent: it is
        skipped, with its reason, in a result of its own. Raises
        ``InvalidRequest`` when an item is not a session or holds a value
        that cannot be sent (the pages before it are committed)."""
        from sessionctl import arguments
        from sessionctl.importing import import_plan

        arguments.sessions(sessions, SESSION_KINDS)
        limit = int(self.config("max_frame_bytes")["max_frame_bytes"])
        for item in import_plan(sessions, limit):
            yield item if isinstance(item, ImportResult) else self.import_page(item)

    @overload
    def pipeline(self, *, returning: Literal["session"] | None = None) -> Pipeline[Session]: ...

    @overload
    def pipeline(self, *, returning: Literal["ack"]) -> Pipeline[Ack]: ...

    def pipeline(self, *, returning: str | None = None) -> Pipeline[Any]:
        """Queue requests, send them as they queue up, read the answers at
        the end: ``with c.pipeline() as p: a = p.get(x)`` ... ``a.result()``.
        ``returning="ack"``: every operation on one session in it is
        answered with an ``Ack`` unless its call says otherwise. Raises
        ``ClientClosed`` once the client is closed, ``InvalidRequest`` for
        another ``returning``; see ``Pipeline``."""
        from sessionctl.pipeline import Pipeline

        self._check_open()
        return Pipeline(self, returning)

    def watch(self, *, user: str | None = None, after: str | None = None) -> Iterator[Event]:
        """Events as they happen, on a connection of their own, until the
        generator is closed. ``after``: the ``cursor`` of the last event
        seen, to resume just after it (shared mode, where the engine keeps
        the events: on any daemon of the namespace, even one restarted
        since; a ``lagged`` event first if some are no longer kept). A
        local daemon keeps no events and starts from now. Raises
        ``InvalidRequest`` for a cursor that is not an event's,
        ``ClientClosed`` once this client is closed, and what ``Client()``
        raises when the new connection cannot be made."""
        self._check_open()
        req = watch_request(user, after)
        other = type(self)(self._where, timeout=None, autostart=self._autostart)
        self._watches[id(other)] = other
        try:
            # Closed while the connection opened: close() did not see it.
            self._check_open()
            first = other._roundtrip(req)
            assert isinstance(first, EventReply)
            while True:
                if other._pid != _getpid():
                    # Forked: the events on that connection are the
                    # parent's; a fresh one here would miss those between.
                    parent = other._pid
                    other._forked()
                    raise DaemonUnavailable(
                        f"this watch's connection to {self._where} belongs to process "
                        f"{parent}, which forked this one; start a watch here"
                    )
                try:
                    reply = other._read_frame()
                except ClientClosed:
                    # Its own connection, closed by close(): no request of
                    # the caller's was on its way.
                    raise closed("Client", self._where) from None
                if isinstance(reply, ErrorReply):
                    raise from_code(reply.code, reply.message)
                assert isinstance(reply, EventReply)
                yield reply.event
        finally:
            self._watches.pop(id(other), None)
            other.close()
