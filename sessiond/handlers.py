"""The table of requests: what each one does, and the reply it gets.

A handler runs one request at the time given, against the parts the
dispatcher holds (``Context``), and returns the reply and the changes it
made to the store; the dispatcher persists those and sends the reply. Most
handlers are one call of a rule (``sessiond.rules``) or of the store and
the building of a reply. ``SLOW`` holds the few requests that wait on I/O
of their own (a compaction, a change of settings, a cleanup's commits):
the dispatcher settles the batch before it awaits them.

Adding a request: its class in ``sessiond.protocol``, its rule in
``sessiond.rules`` (or the store), and one function here under
``@handles(ThatRequest)``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sessiond import __version__, config, live, rules
from sessiond.errors import ConfigError, InvalidRequest, SessionError, Unsupported
from sessiond.failpoints import PROTOCOL_V1, failpoints
from sessiond.live import Live
from sessiond.model import Change, Record, now_us
from sessiond.protocol import (
    ACK,
    OLDEST_VERSION,
    PROTOCOL_VERSION,
    SESSION,
    Ack,
    AckReply,
    Cleanup,
    CleanupReply,
    CleanupResult,
    Compact,
    CompactReply,
    CompactResult,
    ConfigGet,
    ConfigReply,
    ConfigSet,
    Create,
    Delete,
    Deleted,
    Expire,
    Get,
    Hello,
    HelloReply,
    Import,
    ImportReply,
    ImportResult,
    List,
    Page,
    Peer,
    Ping,
    Pong,
    Refresh,
    Reload,
    Reloaded,
    Request,
    Response,
    SessionReply,
    Set,
    Shutdown,
    Stats,
    StatsInfo,
    StatsReply,
    Stopping,
    Unset,
)
from sessiond.store import Store

log = logging.getLogger("sessiond.server")


class Parts(Protocol):
    """What any handler may use: the dispatcher's parts."""

    live: Live
    started: float
    stats: Callable[[int], Awaitable[StatsInfo]]


class OnSessions(Parts, Protocol):
    """What a handler of an operation on one session uses: any engine's
    ``Sessions`` (the store itself, or the shared engine's view of the
    records a batch read)."""

    @property
    def store(self) -> rules.Sessions: ...


class Context(Parts, Protocol):
    """What the other handlers use: the local engine's parts."""

    store: Store

    def request_stop(self) -> None: ...

    async def adopt(self, layers: config.Layers) -> None: ...

    async def compact(self) -> CompactResult: ...

    async def cleanup(self, before: int | None, dry_run: bool) -> CleanupResult: ...


Outcome = tuple[Response, list[Change]]
Handler = Callable[[Any, Any, int], Outcome]
SlowHandler = Callable[[Any, Any], Awaitable[Response]]
HANDLERS: dict[type[Request], Handler] = {}
SLOW: dict[type[Request], SlowHandler] = {}
H = TypeVar("H", Handler, SlowHandler)


def handles(kind: type[Request], table: dict[type[Request], H] | None = None) -> Callable[[H], H]:
    """Enter the decorated function in the table for ``kind``."""

    def enter(handler: H) -> H:
        (HANDLERS if table is None else table)[kind] = handler  # type: ignore[assignment]
        return handler

    return enter


class OnOneSession(Protocol):
    """A request on one session, answered with it or with its ack."""

    @property
    def id(self) -> int: ...
    @property
    def returning(self) -> str: ...


def session_reply(req: OnOneSession, record: Record) -> SessionReply | AckReply:
    """The answer to a request on one session, in the shape it asked for
    (``returning``): the whole session, or an ``Ack``. The one place
    either engine's dispatcher shapes it (a connection of version 1 never
    gets here with ``ack``: ``shape_refused``)."""
    if req.returning == ACK:
        ack = Ack(record.id, record.version, record.expires_at, record.expired_at)
        return AckReply(id=req.id, ack=ack)
    return SessionReply(id=req.id, session=record.to_session())


def shape_refused(req: Request, peer: Peer) -> SessionError | None:
    """Why ``req`` cannot be answered on ``peer``'s connection: a
    ``returning`` other than the whole session, on a connection whose
    hello did not agree on version 2 (a version 1 client never sends one;
    the daemon will not answer it with a shape that client cannot read).
    Asked before the request runs, so that the refusal changes nothing."""
    returning = getattr(req, "returning", SESSION)
    if returning == SESSION or peer.version >= 2:
        return None
    return InvalidRequest(
        f"invalid request: returning={returning!r} needs protocol version 2, and this "
        f"connection speaks version {peer.version} (its hello said so, or there was none); "
        f"say hello with version 2 first, or leave returning out"
    )


# -- sessions ----------------------------------------------------------------


@handles(Get)
def get(c: OnSessions, req: Get, now: int) -> Outcome:
    record, made = rules.get(c.store, now, req.sid, req.touch)
    return session_reply(req, record), made


@handles(Create)
def create(c: OnSessions, req: Create, now: int) -> Outcome:
    record, made = rules.create(c.store, now, user=req.user, ttl=req.ttl, meta=req.meta,
                                sid=req.sid)
    return session_reply(req, record), made


@handles(Set)
def set_(c: OnSessions, req: Set, now: int) -> Outcome:
    record, made = rules.set(c.store, now, req.sid, req.key, req.value, req.expect_version)
    return session_reply(req, record), made


@handles(Unset)
def unset(c: OnSessions, req: Unset, now: int) -> Outcome:
    record, made = rules.unset(c.store, now, req.sid, req.key, req.expect_version)
    return session_reply(req, record), made


@handles(Delete)
def delete(c: OnSessions, req: Delete, now: int) -> Outcome:
    sid, made = rules.delete(c.store, now, req.sid)
    return Deleted(id=req.id, sid=sid), made


@handles(Expire)
def expire(c: OnSessions, req: Expire, now: int) -> Outcome:
    record, made = rules.expire(c.store, now, req.sid)
    return session_reply(req, record), made


@handles(Refresh)
def refresh(c: OnSessions, req: Refresh, now: int) -> Outcome:
    record, made = rules.refresh(c.store, now, req.sid, req.ttl, req.revive)
    return session_reply(req, record), made


@handles(List)
def list_(c: Context, req: List, now: int) -> Outcome:
    page, cursor, made = c.store.list_page(
        now, status=req.status, user=req.user, limit=req.limit, cursor=req.cursor
    )
    return Page(id=req.id, sessions=[r.to_session() for r in page], cursor=cursor), made


@handles(Import)
def import_(c: Context, req: Import, now: int) -> Outcome:
    done, made = c.store.import_sessions(now, req.sessions)
    result = ImportResult(
        imported=done.imported, updated=done.updated, skipped=done.skipped,
        reasons=done.reasons, already_expired=done.already_expired,
    )
    return ImportReply(id=req.id, result=result), made


# -- the daemon ----------------------------------------------------------------


@handles(Stats, SLOW)
async def stats(c: Parts, req: Stats) -> Response:
    # The figures may come from the engine: a round trip in shared mode.
    return StatsReply(id=req.id, stats=await c.stats(now_us()))


@handles(ConfigGet)
def config_get(c: Parts, req: ConfigGet, now: int) -> Outcome:
    layers = c.live.layers
    data = config.as_dict(layers.settings)
    if req.key is not None:
        if req.key not in data:
            raise ConfigError(
                f"unknown config key {req.key!r}; known keys: {', '.join(config.KEYS)}"
            )
        data = {req.key: data[req.key]}
    sources = {key: layers.source(key) for key in data}
    if req.key is not None:
        return ConfigReply(id=req.id, config=data, sources=sources), []
    return ConfigReply(id=req.id, config=data, sources=sources, file=str(layers.path),
                       file_note=config.pending(layers)), []


@handles(Ping)
def ping(c: Parts, req: Ping, now: int) -> Outcome:
    uptime = time.monotonic() - c.started
    return Pong(id=req.id, pid=os.getpid(), version=__version__, uptime=uptime), []


def hello(req: Hello, peer: Peer) -> HelloReply:
    """Agree on the connection's protocol version: the lower of the
    client's and the daemon's own (``PROTOCOL_VERSION``), from then on
    ``peer.version``. Not in ``HANDLERS``: it is the one request that
    changes its connection, and each dispatcher calls it with the peer.
    Raises ``Unsupported`` for a version older than the oldest spoken,
    and, under the ``protocol-v1`` failpoint, for any but 1, in the words
    a daemon of version 1 used."""
    own = OLDEST_VERSION if failpoints().armed(PROTOCOL_V1) else PROTOCOL_VERSION
    if req.version < OLDEST_VERSION or (own == 1 and req.version != 1):
        spoken = (
            f"version {own}" if own == OLDEST_VERSION else f"versions {OLDEST_VERSION} to {own}"
        )
        raise Unsupported(
            f"protocol version {req.version} is not supported: this sessiond "
            f"({__version__}) speaks {spoken}"
        )
    peer.version = min(req.version, own)
    return HelloReply(id=req.id, version=peer.version, server=__version__, pid=os.getpid())


@handles(Shutdown)
def shutdown(c: Context, req: Shutdown, now: int) -> Outcome:
    # Only asks: the daemon stops as on SIGTERM, after this reply and every
    # other request in flight are answered and the journal is synced.
    c.request_stop()
    return Stopping(id=req.id, pid=os.getpid()), []


# -- requests that wait on I/O of their own -------------------------------------


class Reloads(Protocol):
    """A dispatcher that can read its settings again (either engine's)."""

    async def reload(self) -> live.Reloaded: ...


@handles(Reload, SLOW)
async def reload(c: Reloads, req: Reload) -> Response:
    done = await c.reload()
    log.info("reload request: %s", done)
    return Reloaded(id=req.id, file=done.path, changed=done.changed, above=done.above)


@handles(Compact, SLOW)
async def compact(c: Context, req: Compact) -> Response:
    return CompactReply(id=req.id, result=await c.compact())


@handles(Cleanup, SLOW)
async def cleanup(c: Context, req: Cleanup) -> Response:
    # A slice at a time, each committed, the loop turning between them
    # (sessiond.sweep). (The local engine's: a shared daemon's is
    # sessiond.shared.scans'.)
    return CleanupReply(id=req.id, result=await c.cleanup(req.before, req.dry_run))


@handles(ConfigSet, SLOW)
async def config_set(c: Context, req: ConfigSet) -> Response:
    # (The local engine's: a shared daemon's is sessiond.shared.scans'.)
    if req.key in config.SHARED_ONLY:
        refusal = config.local_refusal(c.live.layers.with_key(req.key, req.value).settings)
        if refusal is not None:
            raise Unsupported(refusal)
    updated = await live.set_key(c.live, req.key, req.value, c.adopt)
    sources = {key: c.live.layers.source(key) for key in updated}
    return ConfigReply(id=req.id, config=updated, sources=sources)
