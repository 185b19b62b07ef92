"""Pipelines: requests queued on a client, sent together, answered as
``Pending`` values (see ``Client.pipeline``).

``Batch`` is what every pipeline shares, the queue and the settling of
answers; ``Pipeline`` sends a batch on a blocking ``Client``, and
``sessionctl.apipeline.AsyncPipeline`` on an ``AsyncClient``.

A ``Pipeline`` in a ``with`` block streams: every ``STREAM_EVERY``
requests it sends what it has queued, and settles what has come back,
while the caller goes on queuing, so that the daemon works on the first
requests while the client encodes the next. Only whole frames go out (a
send cut short is finished, or the connection closed), and every request
carries its id, so a block that ends early leaves the connection in step:
the answers to what was sent are matched to their ``Pending``s by whoever
reads next (``Client._strays``).

Imported by the first ``pipeline()`` call, not by every client.
"""

from __future__ import annotations

import select
import socket as _socket
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sessionctl.connection import RECV_BYTES
from sessionctl.operations import Operations
from sessiond.errors import DaemonUnavailable, SessionError, from_code
from sessiond.protocol import SESSION, ErrorReply, Request, Response, append_frame

if TYPE_CHECKING:
    from sessionctl.aclient import AsyncClient
    from sessionctl.client import Client

T = TypeVar("T")
D = TypeVar("D")
_MISSING: Any = object()
# A streaming pipeline sends what it has queued every this many requests:
# small enough that the daemon starts early, large enough that the sends
# (a lock, a system call) cost little a request.
STREAM_EVERY = 16


class Pending(Generic[T]):
    """The answer to a pipelined request, available after the pipeline ends."""

    __slots__ = ("_value", "_error", "_convert", "_sent_on")

    def __init__(self, convert: Callable[[Response], T]) -> None:
        self._convert = convert
        self._value: T = _MISSING
        self._error: SessionError | None = None
        # The pipeline that sent it, once its block ended early: the answer
        # is read from the connection when asked for (``result``).
        self._sent_on: Pipeline[Any] | None = None

    def _settle(self, response: Response) -> None:
        if isinstance(response, ErrorReply):
            self._error = from_code(response.code, response.message)
            return
        try:
            self._value = self._convert(response)
        except SessionError as exc:  # a reply that refuses (``to_page``'s)
            self._error = exc

    def _fail(self, error: SessionError) -> None:
        """The connection it was sent on was lost before its answer came."""
        self._error = error

    def result(self) -> T:
        """The value, or the error the daemon answered with (a
        ``SessionError``). Raises ``RuntimeError`` when the request was not
        sent; for one sent by a block that an exception ended, or by an
        ``execute()`` that raised before its answer came, reads its answer
        first, and raises what the client's reads raise
        (``DaemonUnavailable``, ``ClientClosed``: its outcome is then
        unknown)."""
        if self._value is _MISSING and self._error is None and self._sent_on is not None:
            self._sent_on._read_answer(self)
        if self._error is not None:
            raise self._error
        if self._value is _MISSING:
            raise RuntimeError("the pipeline has not been sent yet")
        return self._value

    @property
    def _settled(self) -> bool:
        return self._value is not _MISSING or self._error is not None


class Batch(Operations, Generic[D]):
    """Requests queued for one connection, each answered by a ``Pending``:
    the same operations as ``Client``, each checked (and refused with
    ``InvalidRequest``) at the call, then queued as a frame. ``D`` is what
    an operation on one session answers when its call does not say
    (``returning``): ``Session``, or ``Ack`` for ``returning="ack"``."""

    def __init__(self, client: Client | AsyncClient, returning: str | None = None) -> None:
        self._client = client
        self._queued: list[tuple[int, Pending[Any]]] = []
        self._frames = bytearray()
        if returning is not None and returning != SESSION:
            from sessionctl import arguments

            self._returning = arguments.returning(returning)

    def _speaks_acks(self) -> bool:
        # Before an AsyncClient's connection opens, whole sessions are asked
        # for (and acks made of them): the daemon's version is not known.
        version = self._client.protocol_version
        return version is not None and version >= 2

    def _submit(self, req: Request, convert: Callable[[Response], T]) -> Any:
        # A Pending, settled once the batch is sent: what ``operation``
        # tells the type checker a pipeline's methods return.
        req.id = self._client._new_id()
        frames = self._frames
        start = len(frames)
        try:
            append_frame(frames, req)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            del frames[start:]  # the frames queued before stay whole
            from sessionctl.arguments import unsendable

            raise unsendable(req, exc) from exc
        pending = Pending(convert)
        self._queued.append((req.id, pending))
        return pending

    def _take(self) -> tuple[memoryview, dict[int, Pending[Any]]]:
        """The frames to send and the answers awaited, the queue emptied."""
        data = memoryview(self._frames)
        self._frames = bytearray()
        waiting = dict(self._queued)
        self._queued = []
        return data, waiting

    def _settle_received(self, waiting: dict[int, Pending[Any]]) -> None:
        c = self._client
        while waiting:
            response = c._pop_frame()
            if response is None:
                return
            pending = waiting.pop(response.id, None)
            if pending is not None:
                pending._settle(response)
            elif isinstance(response, ErrorReply):
                # Id 0 (or one we never sent): about the connection, not a request.
                raise from_code(response.code, response.message)


class Pipeline(Batch[D]):
    """Requests queued on a client and sent together (see ``Client.pipeline``).

    The same operations as ``Client``, each returning a ``Pending`` whose
    ``result()`` is the value (or raises the error) once the pipeline is
    executed. In a ``with`` block the requests go out in chunks as they
    are queued (see the module's docstring); the answers are read and
    settled at the latest by ``execute()``, which the block's end calls.
    A block left by an exception sends no more: what was sent already is
    answered (its ``Pending``'s ``result()`` reads its answer, or it settles
    when the client next reads), and the client stays usable. A pipeline
    belongs to the thread that fills it; its client may be shared (each
    send, and an execution, hold the client's lock)."""

    _client: Client

    def __init__(self, client: Client, returning: str | None = None) -> None:
        super().__init__(client, returning)
        self._streaming = False
        # Requests queued since the last send.
        self._unsent = 0
        # Requests sent and not yet answered: settled by execute().
        self._sent: dict[int, Pending[Any]] = {}

    def _submit(self, req: Request, convert: Callable[[Response], T]) -> Any:
        pending = super()._submit(req, convert)
        if self._streaming:
            self._unsent += 1
            if self._unsent >= STREAM_EVERY:
                self._stream()
        return pending

    def _stream(self) -> None:
        """Send what is queued, and settle what has come back, without
        waiting for any answer."""
        self._unsent = 0
        c = self._client
        with c._hold():
            c._socket_locked()  # connected again if the last was lost
            data, waiting = self._take()
            c._strays.update(waiting)
            self._sent.update(waiting)
            self._send_locked(data)
            self._settle_strays(block=False)

    def _settle_strays(self, block: bool) -> None:
        """Read what the daemon has sent (waiting up to ``timeout`` for
        some if ``block``) and settle the pipelined requests it answers.
        Raises the error the daemon closed the connection with, if it did."""
        c = self._client
        if block:
            c._fill()
        else:
            sock = c._sock
            if sock is None:
                return  # dropped: what it awaited has settled
            try:
                chunk = sock.recv(RECV_BYTES, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                raise c._lost(exc) from exc
            if not chunk:
                return  # closed: the next read that waits says so
            c._buf += chunk
        strays = c._strays
        while (response := c._pop_frame()) is not None:
            pending = strays.pop(response.id, None)
            if pending is not None:
                pending._settle(response)
            elif isinstance(response, ErrorReply) and response.id == 0:
                # About the connection, not a request: the daemon's last word.
                raise c._drop(from_code(response.code, response.message))

    def execute(self) -> None:
        """Send everything queued and settle every ``Pending``.

        Raises ``ClientClosed`` once the client is closed,
        ``DaemonUnavailable`` when the daemon is gone or does not answer in
        the client's ``timeout``; the daemon's answer to each request is
        its ``Pending``'s (after a raise, ``result()`` reads it, or says
        its outcome is unknown)."""
        if not self._frames and not self._sent:
            return
        c = self._client
        with c._hold():
            c._socket_locked()  # connected again if the last was lost
            data, waiting = self._take()
            c._strays.update(waiting)
            waiting.update(self._sent)
            self._sent = {}
            try:
                self._send_locked(data)
                # Replies may have been read by a request in between, and
                # settled there: those are no longer awaited.
                strays = c._strays
                left = [i for i in waiting if i in strays]
                while left:
                    self._settle_strays(block=True)
                    left = [i for i in left if i in strays]
            except BaseException:
                # Stopped before every answer came (the daemon slow past the
                # timeout, say) with the connection kept: what was sent is
                # answered on it, and each Pending reads its answer when
                # asked, as after a block left by an exception; never "not
                # sent". (A connection dropped settled its own already.)
                for pending in waiting.values():
                    if not pending._settled:
                        pending._sent_on = self
                raise

    def _send_locked(self, data: memoryview) -> None:
        """Send ``data`` (whole frames) with the client's lock held.

        Replies are read while requests are still being sent: the daemon
        stops reading a client that does not read its replies, so sending
        everything first would deadlock once both socket buffers are full.
        A send that stops part-way through a frame (the daemon gone, or
        slow past the timeout) drops the connection (``Client._drop``):
        what it would send next would be read as the rest of that frame."""
        if not data:
            return
        c = self._client
        sock = c._sock
        assert sock is not None  # opened by the caller, with the lock held
        sent = 0
        try:
            # The usual case: the socket takes it all at once.
            sent = sock.send(data, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise c._lost(exc) from exc
        if sent == len(data):
            return
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLOUT)
        wait_ms = None if c.timeout is None else c.timeout * 1000
        try:
            while sent < len(data):
                ready = poller.poll(wait_ms)
                if not ready:
                    from sessionctl.unreachable import no_answer

                    raise DaemonUnavailable(no_answer(c._where, sock))
                mask = ready[0][1]
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    self._settle_strays(block=True)
                elif mask & select.POLLOUT:
                    try:
                        # MSG_DONTWAIT: the socket blocks (see
                        # use_kernel_timeouts), and a blocking send would
                        # wait to send it all.
                        sent += sock.send(data[sent:], _socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise c._lost(exc) from exc
        except BaseException as exc:
            if sent and c._sock is sock:
                # Part of a frame may be out: out of step for good.
                c._drop(exc if isinstance(exc, SessionError) else DaemonUnavailable(
                    f"the connection to {c._where} was cut off mid-request; the "
                    f"client's next call connects again"))
            raise

    def __enter__(self) -> Pipeline[D]:
        self._streaming = True
        return self

    def _read_answer(self, pending: Pending[Any]) -> None:
        """Read until ``pending`` (sent by this pipeline) is answered."""
        c = self._client
        with c._hold():
            c._check_open()
            while not pending._settled:
                self._settle_strays(block=True)

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._streaming = False
        if t is None:
            self.execute()
        else:
            # Nothing more is sent; what was is answered, and its Pendings
            # read their answers when asked (or settle at the client's next
            # read): a request that was carried out never says it was not.
            for pending in self._sent.values():
                pending._sent_on = self
