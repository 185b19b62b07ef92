"""``AsyncWatch``: the events of ``AsyncClient.watch()``, on a connection
of their own.

An object rather than an async generator. A cancellation that passes
through an async generator finishes it: a caller that waited for the next
event under a timeout of its own (``move_on_after``) found every later
``__anext__`` ending its loop as if the watch had ended, and missed every
event after, silently. Here a cancelled wait loses nothing (what was read
stays in the connection's buffer) and the next ``__anext__`` goes on.
Left without ``aclose()`` (a loop left by ``break``), a watch closes its
connection once it is garbage, and trio has no unfinished async generator
to warn about.

Imported with ``sessionctl.aclient``, which imports anyio.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from sessionctl.connection import closed
from sessionctl.results import Event, EventReply
from sessiond.errors import ClientClosed, SessionError, from_code
from sessiond.protocol import ErrorReply, Watch

if TYPE_CHECKING:
    from sessionctl.aclient import AsyncClient


class AsyncWatch:
    """Events as they happen (see ``AsyncClient.watch``): ``async for
    event in w``, until ``aclose()`` (or the end of ``async with w:``, or
    of ``contextlib.aclosing(w)``), after which the iteration is over.

    A wait for the next event that is cancelled (a timeout of the
    caller's) loses none: iterate again to go on. Tasks that share a watch
    take turns, each event going to one of them. Raises ``ClientClosed``
    once its client is closed, ``DaemonUnavailable`` when its connection
    is lost (the events meanwhile are missed: in shared mode, a watch
    ``after=`` the last event's ``cursor`` resumes), ``InvalidRequest``
    for an ``after`` that is not an event's cursor, and what opening a
    client raises when its connection cannot be made; the iteration is
    over after any of them."""

    def __init__(self, client: AsyncClient, req: Watch) -> None:
        self._client = client
        self._req = req
        self._conn: AsyncClient | None = None
        self._started = False
        self._over = False
        self._turn = anyio.Lock()
        client._watches.add(self)

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Event:
        """The next event (raises as ``AsyncWatch`` says)."""
        async with self._turn:
            client = self._client
            if client._closed:
                raise closed("AsyncClient", client._where)
            if self._over:
                raise StopAsyncIteration
            try:
                conn = await self._started_connection()
                reply = await conn._read_frame()
            except ClientClosed:
                # Its own connection, closed by its client's aclose() or its
                # own (from another task): no request of the caller's was
                # on its way.
                await self.aclose()
                if client._closed:
                    raise closed("AsyncClient", client._where) from None
                raise StopAsyncIteration from None
            except SessionError:
                await self.aclose()
                raise
            if isinstance(reply, ErrorReply):
                await self.aclose()
                raise from_code(reply.code, reply.message)
            assert isinstance(reply, EventReply)
            return reply.event

    async def _started_connection(self) -> AsyncClient:
        """The connection, the watch started on it. A start that is
        cancelled leaves no connection: whether the daemon began the
        watch is unknown, so the next call starts one afresh."""
        conn = self._conn
        if conn is None:
            client = self._client
            conn = self._conn = type(client)(
                client._where, timeout=None, autostart=client._autostart
            )
        if not self._started:
            try:
                first = await conn._roundtrip(self._req)
            except BaseException:
                self._conn = None
                await conn.aclose()
                raise
            assert isinstance(first, EventReply)
            self._started = True
        return conn

    async def aclose(self) -> None:
        """Close the watch's connection; the iteration is over (again:
        nothing happens). Raises nothing."""
        self._over = True
        self._client._watches.discard(self)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    def __del__(self) -> None:
        # Garbage without aclose() (a loop left by break): no event loop
        # to await in, and nobody waits on the socket any more.
        conn = self._conn
        if conn is not None:
            conn._forget()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
