"""What the client can ask and what it gets back, each written once.

Every method of ``Operations`` checks its arguments, builds its request and
names how the reply converts to what the caller gets; how the request is
sent is ``_submit``'s business. ``Client`` (a round trip, the value),
``Pipeline`` (a queued frame, a ``Pending``) and ``AsyncClient`` (an
awaitable) differ in nothing else, as redis-py's ``Pipeline(Redis)``
overrides only ``execute_command``. A new operation is a method here and
nowhere else.

What the client gets back is also read here: ``Session`` and ``Event`` as
Python programs use them, their timestamps aware ``datetime``s in UTC, made
on access from the integer microseconds that the wire carries and that they
keep (``created_at_us`` ...). Decoding a reply costs what it cost before
(the bench decodes pages of sessions by the thousand); the daemon's own
``sessiond.model.Session`` keeps its integers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union

import msgspec

from sessiond import model, protocol
from sessiond.limits import MAX_TTL
from sessiond.protocol import (
    ACK,
    PAGE_MAX,
    SESSION,
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
    Import,
    ImportReply,
    ImportResult,
    List,
    Ping,
    Pong,
    Refresh,
    Request,
    Response,
    Set,
    Shutdown,
    Stats,
    StatsInfo,
    StatsReply,
    Stopping,
    Unset,
    Watch,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from sessionctl.aclient import AsyncClient
    from sessionctl.client import Client
    from sessionctl.pipeline import Batch, Pending

T = TypeVar("T")
R = TypeVar("R", bound=Response)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware ``datetime`` in UTC (exact:
    no float on the way)."""
    return EPOCH + timedelta(microseconds=us)


# -- what the client gets back ---------------------------------------------


class Session(msgspec.Struct, kw_only=True, gc=False):
    """One session, as the daemon answered it.

    ``created_at``, ``last_access``, ``expires_at`` and ``expired_at``
    (``None`` while active) are aware ``datetime``s in UTC; the exact
    microseconds since the epoch that the wire carries are kept as
    ``created_at_us`` and so on. ``ttl`` is in seconds. Encoded (for
    ``import_sessions``, or by msgspec), a session takes the wire's shape:
    the integers under the names without ``_us``."""

    id: str
    user: str
    status: str
    ttl: int
    meta: dict[str, Any]
    created_at_us: int = msgspec.field(name="created_at")
    last_access_us: int = msgspec.field(name="last_access")
    expires_at_us: int = msgspec.field(name="expires_at")
    expired_at_us: int | None = msgspec.field(default=None, name="expired_at")
    version: int = 1

    @property
    def created_at(self) -> datetime:
        return to_datetime(self.created_at_us)

    @property
    def last_access(self) -> datetime:
        return to_datetime(self.last_access_us)

    @property
    def expires_at(self) -> datetime:
        """The deadline (past it, the daemon expires the session)."""
        return to_datetime(self.expires_at_us)

    @property
    def expired_at(self) -> datetime | None:
        us = self.expired_at_us
        return None if us is None else to_datetime(us)


class Ack(msgspec.Struct, array_like=True, gc=False):
    """What a write asked with ``returning="ack"`` gets: the session it
    changed (or read), in the fewest bytes. ``id`` (a ``create`` made it),
    ``version`` (the session's, after the change), ``expires_at`` (the
    deadline) and ``expired_at`` (``None`` while active) as in ``Session``;
    ``status`` from those. The rest (user, ttl, meta, ...) is the session's,
    which the caller has, or can ``get``."""

    id: str
    version: int
    expires_at_us: int
    expired_at_us: int | None = None

    @property
    def expires_at(self) -> datetime:
        """The deadline (past it, the daemon expires the session)."""
        return to_datetime(self.expires_at_us)

    @property
    def expired_at(self) -> datetime | None:
        us = self.expired_at_us
        return None if us is None else to_datetime(us)

    @property
    def status(self) -> str:
        return "active" if self.expired_at_us is None else "expired"


class Event(msgspec.Struct, kw_only=True):
    """Something that happened to a session, as ``watch`` reports it.

    ``kind`` is created, updated, expired, deleted, purged, or lagged (then
    ``dropped`` says how many events this watcher missed); ``at`` is when,
    an aware ``datetime`` in UTC (``at_us`` its microseconds); ``cursor``,
    in shared mode, where a watch resumes after it."""

    kind: str
    sid: str | None
    at_us: int = msgspec.field(name="at")
    session: Session | None = None
    dropped: int = 0
    # Where a watch resumes after this event (``watch(after=...)``): set by
    # a shared daemon, whose events the engine keeps; ``None`` locally.
    cursor: str | None = None

    @property
    def at(self) -> datetime:
        return to_datetime(self.at_us)


# The replies that carry sessions, read into the client's types: the same
# tags and fields as the daemon's in ``sessiond.protocol`` (a test holds
# them to the golden frames).


class SessionReply(Response, tag="session"):
    session: Session


class Page(Response, tag="page"):
    sessions: list[Session]
    cursor: str | None = None


class EventReply(Response, tag="event"):
    event: Event


class AckReply(Response, tag="ack"):
    ack: Ack


# What an import takes: either kind of session encodes to the same bytes.
SESSION_KINDS = (Session, model.Session)

_OWN_REPLIES = (SessionReply, Page, EventReply, AckReply)
# Every reply the daemon makes (``protocol.RESPONSES``), those that carry
# sessions read into the client's types: a reply added to the protocol is
# one this client reads without being listed again here.
AnyReply: Any = Union[  # noqa: UP007
    tuple(
        kind for kind in protocol.RESPONSES
        if kind.__module__ == protocol.__name__
        and kind.__struct_config__.tag not in {k.__struct_config__.tag for k in _OWN_REPLIES}
    ) + _OWN_REPLIES
]


def _reply(kind: type[R], value: Callable[[R], T]) -> Callable[[Response], T]:
    """How a reply converts: it is a ``kind`` (the daemon answers each
    request with its own reply type) and the caller gets ``value`` of it."""

    def convert(r: Response) -> T:
        assert isinstance(r, kind)
        return value(r)

    return convert


_session = _reply(SessionReply, lambda r: r.session)


def _ack(r: Response) -> Ack:
    """An ``AckReply``'s ack; or, from a daemon of protocol version 1 (which
    answers the whole session), the ack made of the session."""
    if type(r) is AckReply:
        return r.ack
    assert isinstance(r, SessionReply)
    s = r.session
    return Ack(s.id, s.version, s.expires_at_us, s.expired_at_us)


_deleted = _reply(Deleted, lambda r: r.sid)
_page = _reply(Page, lambda r: (r.sessions, r.cursor))
_stats = _reply(StatsReply, lambda r: r.stats)
_cleanup = _reply(CleanupReply, lambda r: r.result)
_config = _reply(ConfigReply, lambda r: r.config)
_config_sources = _reply(ConfigReply, lambda r: (r.config, r.sources))
_imported = _reply(ImportReply, lambda r: r.result)
_compacted = _reply(CompactReply, lambda r: r.result)
_pong = _reply(Pong, lambda r: r)
_stopping = _reply(Stopping, lambda r: r.pid)


def watch_request(user: object, after: object = None) -> Watch:
    """The request that starts a watch of ``user``'s sessions (everyone's
    for ``None``), after the event whose ``cursor`` is ``after`` (shared
    mode), else from now; ``InvalidRequest`` for a user that is not a name
    or a cursor that is not text."""
    from sessionctl import arguments as a

    return Watch(id=0, user=a.user(user, new=False),
                 after=None if after is None else a.text("after", after))


# What a request on one session may be answered with (``returning``).
Shape = Literal["session", "ack"]

if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec, Protocol, overload

    P = ParamSpec("P")
    D = TypeVar("D")
    S_co = TypeVar("S_co", covariant=True)
    A_co = TypeVar("A_co", covariant=True)
    D_co = TypeVar("D_co", covariant=True)

    class Reply(Generic[T]):
        """What an operation's ``_submit`` hands back: a ``T`` from a
        ``Client``, a ``Pending[T]`` from a pipeline, an awaitable ``T``
        from an ``AsyncClient`` (see ``operation``)."""

    class operation(Generic[P, T]):
        """An operation written once in ``Operations``, as each class that
        submits it returns it: ``Client.get`` returns a ``Session``,
        ``Pipeline.get`` a ``Pending[Session]``, ``AsyncClient.get`` a
        coroutine of a ``Session``. For the type checker only: at run time
        the method is left as it is written."""

        def __init__(self, method: Callable[Concatenate[Any, P], Reply[T]]) -> None: ...

        @overload
        def __get__(self, obj: None, owner: type) -> operation[P, T]: ...

        @overload
        def __get__(self, obj: Client, owner: type) -> Callable[P, T]: ...

        @overload
        def __get__(self, obj: Batch[Any], owner: type) -> Callable[P, Pending[T]]: ...

        @overload
        def __get__(
            self, obj: AsyncClient, owner: type
        ) -> Callable[P, Coroutine[Any, Any, T]]: ...

        def __get__(self, obj: object, owner: type) -> Any: ...

    class Shaped(Protocol[P, S_co, A_co, D_co]):
        """A ``shaped`` operation as a submitter returns it: ``S_co`` for
        ``returning="session"``, ``A_co`` for ``"ack"``, ``D_co`` when the
        call does not say (a pipeline's own ``returning``). The arguments
        are checked against the method's own signature when ``returning``
        is not given."""

        @overload
        def __call__(self, *args: Any, returning: Literal["ack"], **kwargs: Any) -> A_co: ...

        @overload
        def __call__(
            self, *args: Any, returning: Literal["session"], **kwargs: Any
        ) -> S_co: ...

        @overload
        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> D_co: ...

    class shaped(Generic[P]):
        """An ``operation`` answered with a ``Session`` or, with
        ``returning="ack"``, an ``Ack``. For the type checker only."""

        def __init__(self, method: Callable[Concatenate[Any, P], Reply[Any]]) -> None: ...

        @overload
        def __get__(self, obj: None, owner: type) -> shaped[P]: ...

        @overload
        def __get__(self, obj: Client, owner: type) -> Shaped[P, Session, Ack, Session]: ...

        @overload
        def __get__(
            self, obj: Batch[D], owner: type
        ) -> Shaped[P, Pending[Session], Pending[Ack], Pending[D]]: ...

        @overload
        def __get__(self, obj: AsyncClient, owner: type) -> Shaped[
            P, Coroutine[Any, Any, Session], Coroutine[Any, Any, Ack],
            Coroutine[Any, Any, Session],
        ]: ...

        def __get__(self, obj: object, owner: type) -> Any: ...

else:

    def operation(method):
        return method

    shaped = operation


class Operations:
    """One method per operation, written once: each checks its arguments,
    builds its request and names how its reply converts; ``_submit`` is
    what differs. A ``Client`` makes the round trip and returns the value;
    a pipeline queues the request and returns a ``Pending``; an
    ``AsyncClient`` returns a coroutine of the value (redis-py's
    ``Pipeline(Redis)``, which overrides only ``execute_command``, is the
    model).

    Every operation raises ``InvalidRequest`` for an argument of the wrong
    type, or a number out of bounds, before anything is sent (in a
    pipeline, at the call), and for a string the daemon refuses (an id's
    characters, a name's length), in the same words;
    ``ClientClosed`` once the client is closed; ``DaemonUnavailable`` when
    the daemon cannot be reached or does not answer within the client's
    ``timeout``; ``ReadOnly`` for a write while the daemon cannot write its
    journal. Each method names the errors of its own beyond those."""

    # What an operation on one session answers when its call does not say
    # (``returning``): a pipeline's own, from ``pipeline(returning=...)``.
    _returning: str = SESSION

    def _submit(self, req: Request, convert: Callable[[Response], T]) -> Reply[T]:
        raise NotImplementedError

    def _speaks_acks(self) -> bool:
        """Whether the connection's hello agreed on protocol version 2, so
        that an ack may be asked for: from a daemon of version 1, the
        whole session is asked for and an ``Ack`` made of it."""
        raise NotImplementedError

    def _shaped(self, req: Any, returning: object) -> Reply[Any]:
        """Submit a request on one session, answered as ``returning`` says
        (``None``: as the submitter's ``_returning`` does)."""
        if returning is None:
            returning = self._returning
        elif returning != SESSION and returning != ACK:
            from sessionctl import arguments as a

            a.returning(returning)
        if returning == ACK:
            if self._speaks_acks():
                req.returning = ACK
            return self._submit(req, _ack)
        return self._submit(req, _session)

    # Arguments: every argument's type is checked here, before anything is
    # sent, and the numbers' bounds; what only costs more to check (an id's
    # characters, a name's length and characters) is left to the daemon,
    # which checks it anyway and says so in the same words. A hot operation
    # lets a plain str or int through at the cost of a type test, and
    # imports sessionctl.arguments only for anything else: a check of each
    # argument by a function call costs the pipelined rows of the bench a
    # tenth of their rate.

    @shaped
    def create(
        self,
        *,
        user: str | None = None,
        ttl: int | None = None,
        meta: dict[str, Any] | None = None,
        id: str | None = None,
        returning: Shape | None = None,
    ) -> Reply[Session | Ack]:
        """Create a session; ``ttl`` (seconds) defaults to the daemon's
        ``default_ttl``, ``user`` to ``anonymous``, ``id`` to a random one.
        ``returning="ack"`` answers an ``Ack`` instead of the ``Session``
        (as every operation on one session that answers a session does).
        Raises ``Conflict`` when ``id`` is taken, ``TooLarge`` for a meta
        past 64 KiB of JSON."""
        if (
            (user is not None and type(user) is not str)
            or (ttl is not None and (type(ttl) is not int or not 0 < ttl <= MAX_TTL))
            or (id is not None and type(id) is not str)
            or (meta is not None and type(meta) is not dict)
        ):
            from sessionctl import arguments as a

            user, ttl, meta = a.user(user), None if ttl is None else a.ttl(ttl), a.meta(meta)
            id = None if id is None else a.sid(id)
        if meta is None:
            meta = {}
        else:
            for key in meta:
                if type(key) is not str:
                    from sessionctl import arguments as a

                    meta = a.meta(meta)
        req = Create(id=0, user=user, ttl=ttl, meta=meta, sid=id)
        if returning is None and self._returning == SESSION:
            return self._submit(req, _session)
        return self._shaped(req, returning)

    @shaped
    def get(
        self, sid: str, *, touch: bool = False, returning: Shape | None = None
    ) -> Reply[Session | Ack]:
        """A session (``expired`` once past its deadline); ``touch`` slides
        it (with ``returning="ack"``, the ``Ack`` says the deadline and
        whether it was expired). Raises ``SessionNotFound``."""
        if type(sid) is not str or (touch is not False and touch is not True):
            from sessionctl import arguments as a

            sid, touch = a.sid(sid), a.flag("touch", touch)
        req = Get(id=0, sid=sid, touch=touch)
        if returning is None and self._returning == SESSION:
            return self._submit(req, _session)
        return self._shaped(req, returning)

    @shaped
    def set(
        self,
        sid: str,
        key: str,
        value: Any,
        *,
        expect_version: int | None = None,
        returning: Shape | None = None,
    ) -> Reply[Session | Ack]:
        """Set ``meta[key]`` to a JSON value; with ``expect_version``, only
        if unchanged since. Raises ``SessionNotFound``, ``SessionExpired``,
        ``Conflict`` (another version), ``TooLarge``."""
        if type(sid) is not str or type(key) is not str or expect_version is not None:
            from sessionctl import arguments as a

            sid, key, expect_version = a.sid(sid), a.key(key), a.version(expect_version)
        req = Set(id=0, sid=sid, key=key, value=value, expect_version=expect_version)
        if returning is None and self._returning == SESSION:
            return self._submit(req, _session)
        return self._shaped(req, returning)

    @shaped
    def unset(
        self,
        sid: str,
        key: str,
        *,
        expect_version: int | None = None,
        returning: Shape | None = None,
    ) -> Reply[Session | Ack]:
        """Remove ``meta[key]``; with ``expect_version``, only if unchanged
        since. Raises ``SessionNotFound``, ``SessionExpired``, ``Conflict``."""
        from sessionctl import arguments as a

        # The key's type alone: unset is how a key that entered before the
        # rules refused its characters goes away (see sessiond.rules.unset).
        req = Unset(id=0, sid=a.sid(sid), key=a.text("key", key),
                    expect_version=a.version(expect_version))
        return self._shaped(req, returning)

    @operation
    def delete(self, sid: str) -> Reply[str]:
        """Delete a session; returns its id. Raises ``SessionNotFound``."""
        if type(sid) is not str:
            from sessionctl import arguments as a

            sid = a.sid(sid)
        return self._submit(Delete(id=0, sid=sid), _deleted)

    @shaped
    def expire(self, sid: str, *, returning: Shape | None = None) -> Reply[Session | Ack]:
        """Expire a session now. Raises ``SessionNotFound``."""
        if type(sid) is not str:
            from sessionctl import arguments as a

            sid = a.sid(sid)
        return self._shaped(Expire(id=0, sid=sid), returning)

    @shaped
    def refresh(
        self,
        sid: str,
        *,
        ttl: int | None = None,
        revive: bool = False,
        returning: Shape | None = None,
    ) -> Reply[Session | Ack]:
        """Deadline = now + ``ttl`` seconds (the session's own ttl when not
        given). Raises ``SessionNotFound``, and ``SessionExpired`` for an
        expired session unless ``revive=True``."""
        from sessionctl import arguments as a

        req = Refresh(id=0, sid=a.sid(sid), ttl=None if ttl is None else a.ttl(ttl),
                      revive=a.flag("revive", revive))
        return self._shaped(req, returning)

    @operation
    def list_page(
        self,
        *,
        status: str | None = None,
        user: str | None = None,
        limit: int = PAGE_MAX,
        cursor: str | None = None,
    ) -> Reply[tuple[list[Session], str | None]]:
        """One page of at most ``limit`` sessions and the cursor of the next
        (``None`` at the end). Raises ``InvalidRequest`` for a cursor that
        no page gave."""
        from sessionctl import arguments as a

        req = List(
            id=0,
            status=a.status(status),
            user=a.user(user, new=False),
            limit=a.limit("limit", limit),
            cursor=None if cursor is None else a.text("cursor", cursor),
        )
        return self._submit(req, _page)

    @operation
    def stats(self) -> Reply[StatsInfo]:
        """Counts and the daemon's health. Raises only what every operation
        raises (see ``Operations``)."""
        return self._submit(Stats(id=0), _stats)

    @operation
    def cleanup(
        self, *, before: datetime | None = None, dry_run: bool = False
    ) -> Reply[CleanupResult]:
        """Remove expired sessions, and with ``before`` (an aware
        ``datetime``) every session whose deadline is before it, active or
        not (the legacy tool's meaning); ``dry_run`` only says which.
        Raises ``InvalidRequest`` for a ``before`` that is not an aware
        ``datetime`` (a naive one could be local time or UTC)."""
        from sessionctl import arguments as a

        req = Cleanup(
            id=0,
            before=None if before is None else a.moment("before", before),
            dry_run=a.flag("dry_run", dry_run),
        )
        return self._submit(req, _cleanup)

    @operation
    def config(self, key: str | None = None) -> Reply[dict[str, Any]]:
        """All settings, or ``{key: value}``. Raises ``InvalidRequest`` for
        an unknown key."""
        from sessionctl import arguments as a

        return self._submit(ConfigGet(id=0, key=None if key is None else a.text("key", key)),
                            _config)

    @operation
    def set_config(self, key: str, value: Any) -> Reply[dict[str, Any]]:
        """Validate, apply live and persist one setting; returns every
        setting. Raises ``InvalidRequest`` for an unknown key or a value
        the key does not take (the message says what it takes),
        ``Conflict`` when a flag or a variable of the daemon sets it."""
        from sessionctl import arguments as a

        return self._submit(ConfigSet(id=0, key=a.text("key", key), value=value), _config)

    @operation
    def config_sources(
        self, key: str | None = None
    ) -> Reply[tuple[dict[str, Any], dict[str, str]]]:
        """``config(key)``, and where each setting came from: default, file,
        env or flag (empty from a daemon too old to say). Raises
        ``InvalidRequest`` for an unknown key."""
        from sessionctl import arguments as a

        req = ConfigGet(id=0, key=None if key is None else a.text("key", key))
        return self._submit(req, _config_sources)

    @operation
    def import_page(self, sessions: Sequence[Session | model.Session]) -> Reply[ImportResult]:
        """Merge up to ``PAGE_MAX`` sessions (``import_sessions`` pages any
        number): ``Session``s as this client returns them, or as
        ``sessiond.legacy.read_sessions`` reads an export or a legacy file.
        Raises ``TooLarge`` for a request past the daemon's
        ``max_frame_bytes``."""
        from sessionctl import arguments as a

        # Either kind encodes to the same wire form (a test holds them to
        # it), which is all a request does with them.
        page = a.page(sessions, SESSION_KINDS)
        return self._submit(Import(id=0, sessions=page), _imported)

    @operation
    def compact(self) -> Reply[CompactResult]:
        """Rewrite the journal now; sizes before and after, time taken.
        Raises ``SessionError`` when the rewrite fails (the journal is left
        as it was; the message says why)."""
        return self._submit(Compact(id=0), _compacted)

    @operation
    def ping(self) -> Reply[Pong]:
        """The daemon's pid, version and uptime. Raises only what every
        operation raises (see ``Operations``)."""
        return self._submit(Ping(id=0), _pong)

    @operation
    def shutdown(self) -> Reply[int]:
        """Stop the daemon, as SIGTERM does; returns its pid. It answers
        first, then finishes the requests in flight and syncs its journal.
        Raises ``Unsupported`` from a daemon too old to know the request."""
        return self._submit(Shutdown(id=0), _stopping)
