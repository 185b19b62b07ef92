"""``AsyncPipeline``: requests queued on an ``AsyncClient``, sent together
when the ``async with`` block ends, answered as ``Pending`` values (see
``AsyncClient.pipeline``; the queue and the settling of answers are
``sessionctl.pipeline.Batch``'s, shared with the blocking pipeline).

Imported with ``sessionctl.aclient``: anyio is imported here, as there.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import anyio

from sessionctl.pipeline import Batch
from sessiond.errors import DaemonUnavailable, ProtocolError, SessionError

if TYPE_CHECKING:
    from sessionctl.aclient import AsyncClient

D = TypeVar("D")


class AsyncPipeline(Batch[D]):
    """Requests queued on an ``AsyncClient`` and sent together when the
    ``async with`` block ends (or at ``await p.execute()``).

    The same operations as ``AsyncClient``, not awaited: each returns a
    ``Pending`` whose ``result()`` is the value (or raises the error) once
    the pipeline is sent. A block left by an exception sends nothing."""

    _client: AsyncClient

    def __init__(self, client: AsyncClient, returning: str | None = None) -> None:
        super().__init__(client, returning)

    async def execute(self) -> None:
        """Send everything queued and settle every ``Pending``, reading the
        answers while the requests go out (see ``Pipeline.execute``, which
        raises alike). Cancelled once it has begun sending, it settles the
        ``Pending``s still unanswered with ``DaemonUnavailable``: whether
        those were carried out is unknown."""
        if not self._frames:
            return
        c = self._client
        async with c._lock:
            await c._open_locked()
            data, waiting = self._take()
            errors: list[SessionError] = []

            async def send_all() -> None:
                try:
                    await c._send(data)
                except SessionError as exc:
                    errors.append(exc)
                    tg.cancel_scope.cancel()

            # Errors are kept rather than raised in the task group, which
            # would wrap them in an ExceptionGroup: the caller gets the
            # one that stopped the pipeline, as from Pipeline.execute.
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(send_all)
                    try:
                        self._settle_received(waiting)
                        while waiting:
                            await c._fill()
                            self._settle_received(waiting)
                    except SessionError as exc:
                        errors.append(exc)
                        tg.cancel_scope.cancel()
            except BaseException:
                # Cancelled (a timeout of the caller's, say) with requests
                # out or on their way: those unanswered may have been
                # carried out, and are never said not to have been sent.
                unknown = DaemonUnavailable(
                    f"the pipeline was cancelled before the answer to this request came "
                    f"from {c._where}: whether the daemon carried it out is unknown (it is "
                    f"not sent again)"
                )
                for pending in waiting.values():
                    pending._fail(unknown)
                raise
            if errors:
                # The answers still awaited will not come on this
                # connection (nor on the next): their outcome is unknown.
                for pending in waiting.values():
                    pending._fail(errors[0])
                if any(isinstance(e, ProtocolError) for e in errors):
                    # Out of step, as in AsyncClient._read_frame.
                    c._drop()
                raise errors[0]

    async def __aenter__(self) -> AsyncPipeline[D]:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            await self.execute()
