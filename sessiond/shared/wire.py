"""One connection to the engine, two ways: lean, or redis-py's.

``Lean`` speaks RESP2 itself on an asyncio protocol, its replies parsed by
hiredis (redis-py's own C parser): a round trip is a write, one future and
one timer of the loop, with nothing in between. redis-py's connection, for
all it does well, reads each reply of a round trip through a coroutine of
its own and a stream reader, which costs more per command than the
engine's work on it; its client layer costs more again. So the lean one
serves the engine on a Unix socket or plain TCP; redis-py's
(``Borrowed``) serves TLS, where its context and certificates are the
better tool.

Both answer ``exchange``: the replies to packed commands, an error reply
as a redis-py exception (the link and its callers tell them apart by
class), ``TimeoutError`` when the engine does not answer within the
deadline (``within`` seconds), ``ConnectionError`` when the connection is lost
(``NotSent`` when it was before anything was written).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis import exceptions as rx
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection

Command = Sequence[str | bytes | int | float]


# hiredis's stub types its argument as a tuple of one element: any length is.
_pack_command: Callable[[tuple[Any, ...]], bytes] = cast(Any, hiredis.pack_command)


def pack(commands: Sequence[Command]) -> bytes:
    """``commands`` in RESP, ready to be written in one go (hiredis packs
    them in C: a commit of a hundred requests has thousands of arguments)."""
    if len(commands) == 1:
        return _pack_command(tuple(commands[0]))
    return b"".join([_pack_command(tuple(command)) for command in commands])


def _error(reply: hiredis.ReplyError) -> rx.ResponseError:
    """redis-py's class for the engine's error (MOVED, NOSCRIPT, READONLY,
    OOM...), as its own hiredis parser makes it."""
    error: rx.ResponseError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


def _replies(raw: list[Any]) -> list[Any]:
    return [_error(r) if isinstance(r, hiredis.ReplyError) else r for r in raw]


class NotSent(ConnectionError):
    """The connection was closed before the commands were written: the
    engine got none of them."""


class Lean(asyncio.Protocol):
    """A connection of our own: one round trip at a time."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._want = 0
        self._got: list[Any] = []
        self.alive = True

    @classmethod
    async def open(cls, host: str, port: int, path: str, within: float) -> Lean:
        """Connected to ``path`` (a Unix socket) or ``host:port``. Raises
        ``OSError`` or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        if path:
            opening = loop.create_unix_connection(cls, path)
        else:
            opening = loop.create_connection(cls, host, port)
        _, conn = await asyncio.wait_for(opening, within)
        return conn

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport (uvloop's is one without being a subclass).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        got = self._got
        while (reply := self._reader.gets()) is not False:
            got.append(reply)
        if len(got) >= self._want and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(
                "the engine closed the connection" if exc is None else str(exc)
            ))

    # -- round trips ----------------------------------------------------------

    def sendable(self) -> bool:
        return self.alive and self._transport is not None and not self._transport.is_closing()

    async def exchange(self, packed: bytes, count: int, within: float) -> list[Any]:
        """Write ``packed`` (``count`` commands) and wait for their replies.
        The caller checks ``sendable`` first: a connection found dead then
        sent nothing."""
        assert self._transport is not None
        if not self.sendable():
            # Closed by the engine since it was checked (at once, with
            # maxclients reached, which it said first): nothing is sent.
            said = next((r for r in self._got if isinstance(r, hiredis.ReplyError)), None)
            raise NotSent(str(said) if said is not None else "the engine closed the connection")
        loop = asyncio.get_running_loop()
        self._want, self._got = count, []
        waiter = self._waiter = loop.create_future()
        self._transport.write(packed)
        timer = loop.call_later(within, _late, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        got, self._got = self._got, []
        return _replies(got)

    async def aclose(self) -> None:
        self.alive = False
        if self._transport is not None:
            self._transport.close()


def _late(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Borrowed:
    """redis-py's connection (TLS), behind the same ``exchange``."""

    def __init__(self, conn: AbstractConnection) -> None:
        self._conn = conn
        self.alive = True

    def sendable(self) -> bool:
        return self.alive

    async def exchange(self, packed: bytes, count: int, within: float) -> list[Any]:
        async with asyncio.timeout(within):
            await self._conn.send_packed_command(packed, False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await self._conn.read_response())
                except rx.ResponseError as exc:
                    replies.append(exc)
        return replies

    async def aclose(self) -> None:
        self.alive = False
        await self._conn.disconnect()
