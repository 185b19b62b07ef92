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
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from sessiond import model
from sessiond.errors import InvalidRequest
from sessiond.limits import MAX_TTL, MAX_VERSION, check_id, check_key, check_ttl, check_user
from sessiond.protocol import (
    PAGE_MAX,
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
    ErrorReply,
    Expire,
    Get,
    HelloReply,
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
    Stats,
    StatsInfo,
    StatsReply,
    Unset,
    Watch,
    encoder,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from sessionctl.aclient import AsyncClient
    from sessionctl.client import Client
    from sessionctl.pipeline import Batch, Pending

T = TypeVar("T")
R = TypeVar("R", bound=Response)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware ``datetime`` in UTC (exact:
    no float on the way)."""
    return EPOCH + timedelta(microseconds=us)


def to_micros(name: str, when: object) -> int:
    """An aware ``datetime`` as microseconds since the epoch. Raises
    ``InvalidRequest`` naming ``name`` for anything else, a naive datetime
    included: it could mean local time (as ``datetime.timestamp`` takes
    it) or UTC (as sessiond's own text input does), and guessing wrong
    moves a cleanup by hours."""
    if not isinstance(when, datetime):
        raise InvalidRequest(
            f"{name} must be a datetime, not {type(when).__name__} ({when!r}); e.g. "
            f"datetime.now(timezone.utc) - timedelta(days=7)"
        )
    if when.utcoffset() is None:
        raise InvalidRequest(
            f"{name} must be a timezone-aware datetime, not the naive {when.isoformat()!r}: "
            f"say which zone it is in, e.g. datetime(2026, 12, 1, tzinfo=timezone.utc) or "
            f"a naive one's .astimezone() for local time"
        )
    delta = when - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


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


class Event(msgspec.Struct, kw_only=True):
    """Something that happened to a session, as ``watch`` reports it.

    ``kind`` is created, updated, expired, deleted, purged, or lagged (then
    ``dropped`` says how many events this watcher missed); ``at`` is when,
    an aware ``datetime`` in UTC (``at_us`` its microseconds)."""

    kind: str
    sid: str | None
    at_us: int = msgspec.field(name="at")
    session: Session | None = None
    dropped: int = 0

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


AnyReply = (
    HelloReply | Pong | SessionReply | Page | Deleted | StatsReply | CleanupReply
    | ConfigReply | ImportReply | CompactReply | EventReply | ErrorReply
)


def _reply(kind: type[R], value: Callable[[R], T]) -> Callable[[Response], T]:
    """How a reply converts: it is a ``kind`` (the daemon answers each
    request with its own reply type) and the caller gets ``value`` of it."""

    def convert(r: Response) -> T:
        assert isinstance(r, kind)
        return value(r)

    return convert


_session = _reply(SessionReply, lambda r: r.session)
_deleted = _reply(Deleted, lambda r: r.sid)
_page = _reply(Page, lambda r: (r.sessions, r.cursor))
_stats = _reply(StatsReply, lambda r: r.stats)
_cleanup = _reply(CleanupReply, lambda r: r.result)
_config = _reply(ConfigReply, lambda r: r.config)
_config_sources = _reply(ConfigReply, lambda r: (r.config, r.sources))
_imported = _reply(ImportReply, lambda r: r.result)
_compacted = _reply(CompactReply, lambda r: r.result)
_pong = _reply(Pong, lambda r: r)


# -- arguments, checked before anything is sent ---------------------------
#
# In Python's words and naming the argument, where the daemon's decoder
# would answer in msgpack's ("Expected `int | null`, got `str`"). The
# session rules (ids, names, ttls) are sessiond.limits', which the daemon
# applies too: the same message either side.
#
# Every argument's type is checked here, and the numbers' bounds; what only
# costs more to check (an id's characters, a name's length and characters)
# is left to the daemon, which checks it anyway and says so in the same
# words. A hot operation lets a plain str or int through at the cost of a
# type test, and calls the helpers below only for anything else: a check
# of each argument by a function call would cost the pipelined rows of the
# bench a tenth of their rate.


def _flag(name: str, value: object) -> bool:
    if value is True or value is False:
        return value
    raise InvalidRequest(f"{name} must be True or False, not {value!r}")


def _text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise InvalidRequest(f"{name} must be a str, not {type(value).__name__} ({value!r})")


def _sid(sid: object) -> str:
    return sid if type(sid) is str else check_id(sid)


def _user(user: object, new: bool = True) -> str | None:
    if user is None or type(user) is str:
        return user
    name = _text("user", user)
    check_user(name, new)
    return name


def _key(key: object) -> str:
    if type(key) is str:
        return key
    name = _text("key", key)
    check_key(name)
    return name


def _version(value: object) -> int | None:
    if value is None or (type(value) is int and 1 <= value <= MAX_VERSION):
        return value
    raise InvalidRequest(
        f"expect_version must be a session's version (a whole number from 1 to "
        f"{MAX_VERSION}) or None, not {value!r}"
    )


def _meta(meta: object) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise InvalidRequest(
            f"meta must be a dict of str keys to JSON values, not {type(meta).__name__}"
        )
    for key in meta:
        _text("a meta key", key)
    return meta


def _status(status: object) -> str | None:
    if status is None:
        return None
    if isinstance(status, str) and status in model.STATUSES:
        return status
    raise InvalidRequest(f"status must be 'active', 'expired' or None, not {status!r}")


def _limit(name: str, limit: object) -> int:
    if type(limit) is int and 1 <= limit <= PAGE_MAX:
        return limit
    raise InvalidRequest(f"{name} must be a whole number from 1 to {PAGE_MAX}, not {limit!r}")


def _sessions(sessions: object) -> list[model.Session]:
    if not isinstance(sessions, Sequence) or isinstance(sessions, (str, bytes)):
        raise InvalidRequest(
            f"sessions must be a list of sessions, not {type(sessions).__name__}"
        )
    if len(sessions) > PAGE_MAX:
        raise InvalidRequest(
            f"a page holds at most {PAGE_MAX} sessions, not {len(sessions)}; "
            f"import_sessions pages any number"
        )
    for s in sessions:
        if not isinstance(s, (Session, model.Session)):
            raise InvalidRequest(
                f"sessions must be Session structs (as Client.list or "
                f"sessiond.legacy.read_sessions give them), not {type(s).__name__}"
            )
    # Either kind encodes to the same wire form (a test holds them to it),
    # which is all a request does with them.
    return list(sessions)


def watch_request(user: object) -> Watch:
    """The request that starts a watch of ``user``'s sessions (everyone's
    for ``None``); ``InvalidRequest`` for a user that is not a name."""
    return Watch(id=0, user=_user(user, new=False))


def unsendable(req: Request, exc: Exception) -> InvalidRequest:
    """Why ``req`` could not be encoded (``exc``, from msgspec), in words
    that name its field: a value that is not JSON (a set, a datetime, an
    object), an integer past 64 bits, nesting past the recursion limit."""
    for field in req.__struct_fields__:
        value = getattr(req, field)
        try:
            encoder.encode(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as why:
            return InvalidRequest(
                f"{_ARGUMENT.get(field, field)} cannot be sent: {why_unsendable(why)}; "
                f"use str, int, float, bool, None, list and dict"
            )
    return InvalidRequest(f"the request cannot be sent: {why_unsendable(exc)}")


# A request's field as the Python call names it.
_ARGUMENT = {"sid": "the session id", "value": "value", "meta": "meta"}


def why_unsendable(exc: BaseException) -> str:
    """msgspec's refusal to encode a value, in Python's words."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, OverflowError):
        return "an integer is outside -2**63 to 2**64 - 1"
    text = str(exc)
    head, tail = "Encoding objects of type ", " is unsupported"
    if text.startswith(head) and text.endswith(tail):
        return f"a value of type {text[len(head) : -len(tail)]} is not JSON"
    return text


if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec, overload

    P = ParamSpec("P")

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
        def __get__(self, obj: Batch, owner: type) -> Callable[P, Pending[T]]: ...

        @overload
        def __get__(
            self, obj: AsyncClient, owner: type
        ) -> Callable[P, Coroutine[Any, Any, T]]: ...

        def __get__(self, obj: object, owner: type) -> Any: ...

else:

    def operation(method):
        return method


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

    def _submit(self, req: Request, convert: Callable[[Response], T]) -> Reply[T]:
        raise NotImplementedError

    @operation
    def create(
        self,
        *,
        user: str | None = None,
        ttl: int | None = None,
        meta: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Reply[Session]:
        """Create a session; ``ttl`` (seconds) defaults to the daemon's
        ``default_ttl``, ``user`` to ``anonymous``, ``id`` to a random one.
        Raises ``Conflict`` when ``id`` is taken, ``TooLarge`` for a meta
        past 64 KiB of JSON."""
        if user is not None and type(user) is not str:
            user = _user(user)
        if ttl is not None and (type(ttl) is not int or not 0 < ttl <= MAX_TTL):
            ttl = check_ttl(ttl)
        if id is not None and type(id) is not str:
            id = check_id(id)
        if meta is None:
            meta = {}
        elif type(meta) is dict:
            for key in meta:
                if type(key) is not str:
                    meta = _meta(meta)
        else:
            meta = _meta(meta)
        return self._submit(Create(id=0, user=user, ttl=ttl, meta=meta, sid=id), _session)

    @operation
    def get(self, sid: str, *, touch: bool = False) -> Reply[Session]:
        """A session (``expired`` once past its deadline); ``touch`` slides
        it. Raises ``SessionNotFound``."""
        if type(sid) is not str or (touch is not False and touch is not True):
            sid, touch = check_id(sid), _flag("touch", touch)
        return self._submit(Get(id=0, sid=sid, touch=touch), _session)

    @operation
    def set(
        self, sid: str, key: str, value: Any, *, expect_version: int | None = None
    ) -> Reply[Session]:
        """Set ``meta[key]`` to a JSON value; with ``expect_version``, only
        if unchanged since. Raises ``SessionNotFound``, ``SessionExpired``,
        ``Conflict`` (another version), ``TooLarge``."""
        if type(sid) is not str or type(key) is not str or expect_version is not None:
            sid, key, expect_version = check_id(sid), _key(key), _version(expect_version)
        req = Set(id=0, sid=sid, key=key, value=value, expect_version=expect_version)
        return self._submit(req, _session)

    @operation
    def unset(self, sid: str, key: str, *, expect_version: int | None = None) -> Reply[Session]:
        """Remove ``meta[key]``; with ``expect_version``, only if unchanged
        since. Raises ``SessionNotFound``, ``SessionExpired``, ``Conflict``."""
        # Not checked as a new key: unset is how a key that entered before
        # the rules refused it goes away (see sessiond.rules.unset).
        req = Unset(id=0, sid=_sid(sid), key=_text("key", key),
                    expect_version=_version(expect_version))
        return self._submit(req, _session)

    @operation
    def delete(self, sid: str) -> Reply[str]:
        """Delete a session; returns its id. Raises ``SessionNotFound``."""
        return self._submit(Delete(id=0, sid=_sid(sid)), _deleted)

    @operation
    def expire(self, sid: str) -> Reply[Session]:
        """Expire a session now. Raises ``SessionNotFound``."""
        return self._submit(Expire(id=0, sid=_sid(sid)), _session)

    @operation
    def refresh(
        self, sid: str, *, ttl: int | None = None, revive: bool = False
    ) -> Reply[Session]:
        """Deadline = now + ``ttl`` seconds (the session's own ttl when not
        given). Raises ``SessionNotFound``, and ``SessionExpired`` for an
        expired session unless ``revive=True``."""
        req = Refresh(id=0, sid=_sid(sid), ttl=None if ttl is None else check_ttl(ttl),
                      revive=_flag("revive", revive))
        return self._submit(req, _session)

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
        req = List(
            id=0,
            status=_status(status),
            user=_user(user, new=False),
            limit=_limit("limit", limit),
            cursor=None if cursor is None else _text("cursor", cursor),
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
        req = Cleanup(
            id=0,
            before=None if before is None else to_micros("before", before),
            dry_run=_flag("dry_run", dry_run),
        )
        return self._submit(req, _cleanup)

    @operation
    def config(self, key: str | None = None) -> Reply[dict[str, Any]]:
        """All settings, or ``{key: value}``. Raises ``InvalidRequest`` for
        an unknown key."""
        return self._submit(ConfigGet(id=0, key=None if key is None else _text("key", key)),
                            _config)

    @operation
    def set_config(self, key: str, value: Any) -> Reply[dict[str, Any]]:
        """Validate, apply live and persist one setting; returns every
        setting. Raises ``InvalidRequest`` for an unknown key or a value
        the key does not take (the message says what it takes),
        ``Conflict`` when a flag or a variable of the daemon sets it."""
        req = ConfigSet(id=0, key=_text("key", key), value=value)
        return self._submit(req, _config)

    @operation
    def config_sources(
        self, key: str | None = None
    ) -> Reply[tuple[dict[str, Any], dict[str, str]]]:
        """``config(key)``, and where each setting came from: default, file,
        env or flag (empty from a daemon too old to say). Raises
        ``InvalidRequest`` for an unknown key."""
        req = ConfigGet(id=0, key=None if key is None else _text("key", key))
        return self._submit(req, _config_sources)

    @operation
    def import_page(self, sessions: Sequence[Session | model.Session]) -> Reply[ImportResult]:
        """Merge up to ``PAGE_MAX`` sessions (``import_sessions`` pages any
        number): ``Session``s as this client returns them, or as
        ``sessiond.legacy.read_sessions`` reads an export or a legacy file.
        Raises ``TooLarge`` for a request past the daemon's
        ``max_frame_bytes``."""
        return self._submit(Import(id=0, sessions=_sessions(sessions)), _imported)

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
