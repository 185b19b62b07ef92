"""The blocking Python client: a plain socket and msgspec, no event loop.

Every method sends one request and returns the daemon's answer as a typed
struct, or raises a ``SessionError`` subclass. ``pipeline()`` sends many
requests without waiting for each answer. (``sessionctl.aclient`` is the
same client for asyncio and trio; the parts of a connection that do no I/O
are here, for both.)

A ``Client`` may be shared by threads, as redis-py's and httpx's clients
are: one lock serialises the round trips (and pipeline executions) on its
connection, whose buffers and request ids are shared state. ``watch()``
has a connection of its own.
"""

from __future__ import annotations

import _thread
import array
import builtins
import itertools
import os
import socket as _socket
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import msgspec

from sessionctl.operations import (
    SESSION_KINDS,
    Ack,
    AnyReply,
    Event,
    EventReply,
    Operations,
    Session,
    watch_request,
)
from sessiond import model
from sessiond.errors import (
    ClientClosed,
    DaemonUnavailable,
    InvalidRequest,
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
    Hello,
    HelloReply,
    Import,
    ImportResult,
    Request,
    Response,
    append_frame,
    encoder,
)

if TYPE_CHECKING:
    from pathlib import Path

    from sessionctl.pipeline import Pending, Pipeline

T = TypeVar("T")
# Far above any reply the daemon makes (a page is at most PAGE_MAX sessions
# of at most 64 KiB of meta each): a bigger header means a broken stream.
MAX_REPLY_BYTES = 1 << 30
# A recv(2) of this size covers any small reply in one call; far bigger sizes
# make every call map and unmap its buffer (measured: 3 us for 64 KiB, 22 us
# for 256 KiB, whatever arrives). A big reply is read in bigger calls.
RECV_BYTES = 65536
_BIG_RECV_BYTES = 1 << 18
# Import pages are bounded by bytes as well as by count: 1,000 sessions of
# 8 KiB of meta make a request of 8 MB, past the daemon's max_frame_bytes
# (4 MiB by default), which it refuses whole. The daemon's limit is asked
# once an import; a page is kept to 1 MiB below it even so, because the
# daemon applies a page in one go while its other clients wait.
IMPORT_PAGE_BYTES = 1 << 20
NO_AUTOSTART_ENV = "SESSIONCTL_NO_AUTOSTART"
_decoder: msgspec.msgpack.Decoder[Response] = msgspec.msgpack.Decoder(AnyReply)
# What an encode of a request can fail with: see sessionctl.arguments,
# which says why (imported then, and only then).
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)


def decode(body: bytes | memoryview, where: str) -> Response:
    """A reply body from ``where``; ``ProtocolError`` if it is not one this
    client reads (msgspec's account of why is the error's ``__cause__``)."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(
            f"what answers on {where} sent a reply this client cannot read: it is not "
            f"sessiond, or a sessiond of another release (restart it to run this one)"
        ) from exc


def pop_frame(buf: bytearray, where: str) -> Response | None:
    """The next whole reply at the start of ``buf``, taken out of it, if
    there is one."""
    if len(buf) < HEADER:
        return None
    n = int.from_bytes(buf[:HEADER], "big")
    if n > MAX_REPLY_BYTES:
        # Nothing the daemon sends comes near: the stream is out of step.
        raise ProtocolError(
            f"reply frame of {n} bytes from {where} exceeds {MAX_REPLY_BYTES}; "
            f"the connection is out of step"
        )
    end = HEADER + n
    if len(buf) < end:
        return None
    # Decoded in place; the view is gone before the bytes are dropped.
    response = decode(memoryview(buf)[HEADER:end], where)
    del buf[:end]
    return response


def _use_kernel_timeouts(sock: _socket.socket, timeout: float | None) -> None:
    """Make ``sock`` blocking, with ``timeout`` enforced by the kernel
    (SO_RCVTIMEO, SO_SNDTIMEO): a socket with a Python timeout polls before
    every recv and send, two more system calls a request. A recv or send
    that times out then fails with EAGAIN."""
    sock.settimeout(None)
    if timeout is None:
        return
    micros = max(1, round(timeout * 1_000_000))  # zero would mean "never"
    # struct timeval: two C longs on Linux.
    timeval = array.array("l", divmod(micros, 1_000_000)).tobytes()
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, timeval)


def _connect_patiently(sock: _socket.socket, path: str, timeout: float | None) -> None:
    """connect(2), waiting while the daemon's accept backlog is full.

    A socket with a timeout is non-blocking underneath, and a non-blocking
    Unix-socket connect fails at once with EAGAIN when the backlog is full
    instead of waiting its turn, as a blocking one would."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def autostart_off_by_env() -> bool:
    """Whether ``SESSIONCTL_NO_AUTOSTART`` turns autostart off (set, and
    neither empty nor ``0``). Read here only: ``Client`` asks it for the
    CLI, the shim and Python programs alike."""
    return os.environ.get(NO_AUTOSTART_ENV, "") not in ("", "0")


def closed(kind: str, where: str) -> ClientClosed:
    """The error of every call on a closed ``Client`` or ``AsyncClient``."""
    return ClientClosed(
        f"this {kind} (for {where}) is closed; make a new one (a client closes when its "
        f"'with' block ends)"
    )


def refusal(
    where: str, exc: OSError, off_by: str | None, started: bool, advice: Callable[[str], str]
) -> DaemonUnavailable | None:
    """What a failed connect to ``where`` raises, or ``None`` when a daemon
    should be started (nothing answers, and autostart is on). ``started``:
    one was, and answered, and now does not; ``advice`` says how to turn
    autostart on, given what turned it off."""
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        if started:
            return DaemonUnavailable(
                f"sessiond was started and answered on {where}, then stopped "
                f"answering ({exc.strerror}); see sessiond.log in its data dir (or "
                f"'journalctl --user -u sessiond' under systemd)"
            )
        if off_by is None:
            return None
        from sessionctl.autostart import start_advice
        from sessionctl.unreachable import connect_failed

        return DaemonUnavailable(connect_failed(where, exc) or (
            f"no sessiond answers on {where} ({exc.strerror}); "
            f"{start_advice(where)}, or {advice(off_by)}"
        ))
    from sessionctl.unreachable import connect_failed

    return DaemonUnavailable(connect_failed(where, exc) or f"cannot connect to {where}: {exc}")


def autostart_off_by(autostart: bool | None) -> str | None:
    """What turned autostart off (``BY_ARGUMENT``, ``BY_ENVIRONMENT``), or
    ``None`` when it is on."""
    if autostart is None:
        return BY_ENVIRONMENT if autostart_off_by_env() else None
    return None if autostart else BY_ARGUMENT


def import_plan(
    sessions: Iterable[Session | model.Session], limit: int
) -> Iterator[builtins.list[Session | model.Session] | ImportResult]:
    """``sessions`` in pages to send, each of at most ``PAGE_MAX`` sessions
    and of at most ``limit`` bytes encoded (the request around them
    included); a session too big for any page comes as an ``ImportResult``
    that skips it, with its reason."""
    # The request around the sessions: its keys, the largest id, and the
    # largest array header (5 bytes where an empty array takes 1).
    budget = limit - len(encoder.encode(Import(id=2**63 - 1, sessions=[]))) - 4
    page: builtins.list[Session | model.Session] = []
    size = 0
    for session in sessions:
        if not isinstance(session, SESSION_KINDS):
            from sessionctl import arguments

            arguments.session(session, SESSION_KINDS)
        try:
            n = len(encoder.encode(session))
        except ENCODE_ERRORS as exc:
            from sessionctl.arguments import why_unsendable

            raise InvalidRequest(
                f"session {session.id!r} cannot be sent: {why_unsendable(exc)}; "
                f"meta values must be str, int, float, bool, None, list or dict"
            ) from exc
        if n > budget:
            yield ImportResult(skipped=1, reasons=[
                f"{session.id}: {n} bytes encoded, more than one request may carry "
                f"(the daemon's max_frame_bytes is {limit})"
            ])
            continue
        if page and (len(page) == PAGE_MAX or size + n > budget):
            yield page
            page, size = [], 0
        page.append(session)
        size += n
    if page:
        yield page


def add_up(total: ImportResult, part: ImportResult) -> None:
    """Add one page's counts and reasons to ``total``."""
    total.imported += part.imported
    total.updated += part.updated
    total.skipped += part.skipped
    total.already_expired += part.already_expired
    total.reasons.extend(part.reasons)


# What turned autostart off, as ``Client._autostart_advice`` is told.
BY_ARGUMENT = "argument"
BY_ENVIRONMENT = "environment"


class Client(Operations):
    """A connection to sessiond, which threads may share.

    ``Client()`` finds the socket as the daemon does (``$SESSIOND_SOCKET``,
    then the default path) and, when no daemon answers there, starts one as
    ``sessionctl`` does (through systemd when its units are installed).
    ``autostart=False``, or ``SESSIONCTL_NO_AUTOSTART=1`` in the
    environment when ``autostart`` is not given, turns that off.
    ``timeout`` is how many seconds each wait for the daemon may take (to
    connect, to send, for an answer); ``None`` waits for ever.

    Raises ``DaemonUnavailable`` when no daemon answers (or none could be
    started), ``Unsupported`` when the daemon speaks another protocol,
    ``InvalidRequest`` for a ``timeout`` or ``autostart`` of the wrong kind.
    Once closed (``close()``, or the end of its ``with`` block), every
    method raises ``ClientClosed``."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = 30.0,
        autostart: bool | None = None,
    ) -> None:
        from sessiond.paths import socket_location

        if (timeout is not None and type(timeout) is not float) or (
            autostart is not None and type(autostart) is not bool
        ):
            from sessionctl import arguments

            arguments.timeout(timeout)
            arguments.autostart(autostart)
        # A string, as str(Path) would give it: ``path`` makes the Path only
        # when asked, so that a CLI run need not import pathlib.
        self._where = socket_location(os.fspath(socket) if socket is not None else None)
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
        self._sock = self._connect(autostart_off_by(autostart))
        try:
            try:
                hello = self._roundtrip(hello_request(PROTOCOL_VERSION))
            except Unsupported:
                # A daemon of protocol version 1 refuses any other hello:
                # asked again in its version (see hello_request).
                hello = self._roundtrip(hello_request(OLDEST_VERSION))
            assert isinstance(hello, HelloReply)
            check_hello(hello, self._where)
        except BaseException:
            self._sock.close()
            raise
        self.server_version = hello.server
        self.server_pid = hello.pid
        # The version the hello agreed on: 2 lets operations on one
        # session be answered with acks (``returning="ack"``).
        self.protocol_version: int | None = hello.version

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
            _connect_patiently(sock, self._where, self.timeout)
            _use_kernel_timeouts(sock, self.timeout)
            return sock
        except OSError as exc:
            sock.close()
            error = refusal(self._where, exc, off_by, started, self._autostart_advice)
            if error is not None:
                raise error from exc
        from sessionctl.autostart import start_daemon

        start_daemon(self.path)
        return self._connect(off_by, started=True)

    def _autostart_advice(self, off_by: str) -> str:
        """How to let the client start the daemon, in the words of whoever
        made it (the CLI and the shim speak of their own flags): ``off_by``
        is ``BY_ARGUMENT`` or ``BY_ENVIRONMENT``."""
        return python_advice(type(self).__name__, off_by)

    def close(self) -> None:
        """Close the connection (again: nothing happens). A call on the
        client from then on raises ``ClientClosed``; one that another thread
        is waiting in ends with it."""
        self._closed = True
        try:
            # Wakes a thread blocked in recv on this socket, which close()
            # alone would leave waiting for its timeout.
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass  # closed before, or the daemon went first: nothing to wake
        self._sock.close()

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

    def _send(self, data: bytes | bytearray) -> None:
        try:
            self._sock.sendall(data)
        except BlockingIOError as exc:
            raise DaemonUnavailable(
                f"sessiond on {self._where} did not take the request in time"
            ) from exc
        except OSError as exc:
            raise self._lost(exc) from exc

    def _lost(self, exc: OSError) -> SessionError:
        """What a send that failed with ``exc`` raises: the client was
        closed, or the daemon closed the connection (saying why, maybe)."""
        if self._closed:
            return closed("Client", self._where)
        parting = self._parting_error()
        if parting is not None:
            return parting
        return DaemonUnavailable(f"connection to {self._where} lost: {exc}")

    def _parting_error(self) -> SessionError | None:
        """The error the daemon closed the connection with (``busy``, say),
        if it sent one before closing: a request sent after it fails with
        EPIPE, but the frame is still there to read."""
        try:
            self._buf += self._sock.recv(RECV_BYTES, _socket.MSG_DONTWAIT)
            while (response := self._pop_frame()) is not None:
                if isinstance(response, ErrorReply) and response.id == 0:
                    return from_code(response.code, response.message)
        except (OSError, ProtocolError):
            return None
        return None

    def _pop_frame(self) -> Response | None:
        """The next whole reply already received, if there is one."""
        return pop_frame(self._buf, self._where)

    def _recv(self) -> bytes:
        """What the daemon has sent (waiting up to ``timeout``)."""
        buf = self._buf
        size = RECV_BYTES
        if len(buf) >= HEADER and int.from_bytes(buf[:HEADER], "big") >= RECV_BYTES:
            size = _BIG_RECV_BYTES  # the rest of a big reply
        try:
            chunk = self._sock.recv(size)
        except (TimeoutError, BlockingIOError) as exc:
            raise DaemonUnavailable(f"sessiond on {self._where} did not answer in time") from exc
        except OSError as exc:
            if self._closed:
                raise closed("Client", self._where) from exc
            raise DaemonUnavailable(f"connection to {self._where} lost: {exc}") from exc
        if not chunk:
            if self._closed:
                raise closed("Client", self._where)
            raise DaemonUnavailable(f"sessiond on {self._where} closed the connection")
        return chunk

    def _fill(self) -> None:
        """Receive what the daemon has sent (waiting up to ``timeout``)."""
        self._buf += self._recv()

    def _read_frame(self) -> Response:
        if not self._buf:
            # The usual case: the reply arrives whole and alone, and is
            # decoded where it lies.
            chunk = self._recv()
            if len(chunk) > HEADER and int.from_bytes(chunk[:HEADER], "big") == len(chunk) - HEADER:
                return decode(memoryview(chunk)[HEADER:], self._where)
            self._buf += chunk
        while True:
            response = self._pop_frame()
            if response is not None:
                return response
            self._fill()

    def _roundtrip(self, req: Request) -> Response:
        with self._lock:
            return self._roundtrip_locked(req)

    def _roundtrip_locked(self, req: Request) -> Response:
        req.id = self._new_id()
        out = self._out
        del out[:]
        try:
            append_frame(out, req)
        except ENCODE_ERRORS as exc:
            from sessionctl.arguments import unsendable

            raise unsendable(req, exc) from exc
        self._send(out)
        while True:
            response = self._read_frame()
            if response.id == req.id:
                break
            if isinstance(response, ErrorReply) and response.id == 0:
                raise from_code(response.code, response.message)
            # The answer to a request a pipeline sent: its Pending's.
            pending = self._strays.pop(response.id, None)
            if pending is not None:
                pending._settle(response)
        if isinstance(response, ErrorReply):
            raise from_code(response.code, response.message)
        return response

    def _settle_strays(self, block: bool) -> None:
        """Read what the daemon has sent (waiting up to ``timeout`` for
        some if ``block``) and settle the pipelined requests it answers.
        Raises the error the daemon closed the connection with, if it did."""
        if block:
            self._fill()
        else:
            try:
                chunk = self._sock.recv(RECV_BYTES, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                raise self._lost(exc) from exc
            if not chunk:
                return  # closed: the next read that waits says so
            self._buf += chunk
        strays = self._strays
        while (response := self._pop_frame()) is not None:
            pending = strays.pop(response.id, None)
            if pending is not None:
                pending._settle(response)
            elif isinstance(response, ErrorReply) and response.id == 0:
                # About the connection, not a request.
                raise from_code(response.code, response.message)

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

        arguments.sessions(sessions, SESSION_KINDS)
        limit = min(IMPORT_PAGE_BYTES, int(self.config("max_frame_bytes")["max_frame_bytes"]))
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
        try:
            first = other._roundtrip(req)
            assert isinstance(first, EventReply)
            while True:
                reply = other._read_frame()
                if isinstance(reply, ErrorReply):
                    raise from_code(reply.code, reply.message)
                assert isinstance(reply, EventReply)
                yield reply.event
        finally:
            other.close()


def hello_request(version: int) -> Hello:
    """The hello that opens a connection, saying the newest protocol
    version this client speaks. A daemon of version 2 or later answers the
    lower of its own and ours. One of version 1 refuses any hello but 1
    (``Unsupported``), and the client then says hello again with
    ``OLDEST_VERSION``: one round trip more, against old daemons only."""
    return Hello(id=0, version=version, client="sessionctl")


def check_hello(hello: HelloReply, where: str) -> None:
    """Raises ``Unsupported`` unless the daemon agreed on a version of the
    protocol that this client speaks."""
    if not OLDEST_VERSION <= hello.version <= PROTOCOL_VERSION:
        raise Unsupported(
            f"sessiond {hello.server} on {where} speaks protocol version "
            f"{hello.version}, this client speaks {OLDEST_VERSION} to {PROTOCOL_VERSION}; "
            f"restart the daemon so that both run the same release"
        )


def python_advice(kind: str, off_by: str) -> str:
    """How a Python program lets a ``kind`` (``Client``, ``AsyncClient``)
    start the daemon, given what turned that off."""
    if off_by == BY_ENVIRONMENT:
        return (
            f"let the client start it: {NO_AUTOSTART_ENV}="
            f"{os.environ.get(NO_AUTOSTART_ENV, '')!r} in the environment turns that "
            f"off; unset it, or pass {kind}(autostart=True)"
        )
    return f"let the client start it: pass {kind}(autostart=True), or leave autostart out"
