"""Pipelines: requests queued on a client, sent together, answered as
``Pending`` values (see ``Client.pipeline``).

``Batch`` is what every pipeline shares, the queue and the settling of
answers; ``Pipeline`` sends a batch on a blocking ``Client``, and
``sessionctl.aclient.AsyncPipeline`` on an ``AsyncClient``.

Imported by the first ``pipeline()`` call, not by every client.
"""

from __future__ import annotations

import select
import socket as _socket
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sessionctl.operations import Operations
from sessiond.errors import DaemonUnavailable, SessionError, from_code
from sessiond.protocol import ErrorReply, Request, Response, append_frame

if TYPE_CHECKING:
    from sessionctl.aclient import AsyncClient
    from sessionctl.client import Client

T = TypeVar("T")
_MISSING: Any = object()


class Pending(Generic[T]):
    """The answer to a pipelined request, available after the pipeline ends."""

    __slots__ = ("_value", "_error", "_convert")

    def __init__(self, convert: Callable[[Response], T]) -> None:
        self._convert = convert
        self._value: T = _MISSING
        self._error: SessionError | None = None

    def _settle(self, response: Response) -> None:
        if isinstance(response, ErrorReply):
            self._error = from_code(response.code, response.message)
        else:
            self._value = self._convert(response)

    def result(self) -> T:
        """The value, or the error the daemon answered with (a
        ``SessionError``). Raises ``RuntimeError`` before the pipeline is
        sent."""
        if self._error is not None:
            raise self._error
        if self._value is _MISSING:
            raise RuntimeError("the pipeline has not been sent yet")
        return self._value


class Batch(Operations):
    """Requests queued for one connection, each answered by a ``Pending``:
    the same operations as ``Client``, each checked (and refused with
    ``InvalidRequest``) at the call, then queued as a frame."""

    def __init__(self, client: Client | AsyncClient) -> None:
        self._client = client
        self._queued: list[tuple[int, Pending[Any]]] = []
        self._frames = bytearray()

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


class Pipeline(Batch):
    """Requests queued on a client and sent together (see ``Client.pipeline``).

    The same operations as ``Client``, each returning a ``Pending`` whose
    ``result()`` is the value (or raises the error) once the pipeline is sent.
    A pipeline belongs to the thread that fills it; its client may be
    shared (an execution holds the client's lock from first send to last
    reply)."""

    _client: Client

    def __init__(self, client: Client) -> None:
        super().__init__(client)

    def execute(self) -> None:
        """Send everything queued and settle every ``Pending``.

        Raises ``ClientClosed`` once the client is closed,
        ``DaemonUnavailable`` when the daemon is gone or does not answer in
        the client's ``timeout``; the daemon's answer to each request is
        its ``Pending``'s.

        Replies are read while requests are still being sent: the daemon
        stops reading a client that does not read its replies, so sending
        everything first would deadlock once both socket buffers are full."""
        if not self._frames:
            return
        with self._client._lock:
            self._execute_locked()

    def _execute_locked(self) -> None:
        c = self._client
        c._check_open()
        data, waiting = self._take()
        sock = c._sock
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLOUT)
        wait_ms = None if c.timeout is None else c.timeout * 1000
        sent = 0
        while sent < len(data):
            ready = poller.poll(wait_ms)
            if not ready:
                raise DaemonUnavailable(f"sessiond on {c._where} did not answer in time")
            mask = ready[0][1]
            if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                c._fill()
                self._settle_received(waiting)
            elif mask & select.POLLOUT:
                try:
                    # MSG_DONTWAIT: the socket blocks (see _use_kernel_timeouts),
                    # and a blocking send would wait to send it all.
                    sent += sock.send(data[sent:], _socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise c._lost(exc) from exc
        self._settle_received(waiting)
        while waiting:
            c._fill()
            self._settle_received(waiting)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.execute()
