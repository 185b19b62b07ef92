"""What the client gets back: ``Session``, ``Ack`` and ``Event`` as Python
programs use them, the replies that carry them, and how each reply converts
to what a caller of an operation gets.

Their timestamps are aware ``datetime``s in UTC, made on access from the
integer microseconds that the wire carries and that they keep
(``created_at_us`` ...). Decoding a reply costs what it cost before (the
bench decodes pages of sessions by the thousand); the daemon's own
``sessiond.model.Session`` keeps its integers. ``sessionctl.operations``
names, for each request, which converter its reply goes through.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, Union

import msgspec

from sessiond import model, protocol
from sessiond.errors import SessionsDamaged
from sessiond.protocol import (
    CleanupReply,
    CompactReply,
    ConfigReply,
    Deleted,
    ImportReply,
    Pong,
    Reloaded,
    Response,
    StatsReply,
    Stopping,
)

T = TypeVar("T")
R = TypeVar("R", bound=Response)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware ``datetime`` in UTC (exact:
    no float on the way)."""
    return EPOCH + timedelta(microseconds=us)


# -- what the client gets back ---------------------------------------------


class _Deadline:
    """``expires_at`` and ``expired_at`` as ``datetime``s, for ``Session``
    and ``Ack``, which both keep their microseconds."""

    __slots__ = ()
    expires_at_us: int
    expired_at_us: int | None

    @property
    def expires_at(self) -> datetime:
        """The deadline (past it, the daemon expires the session)."""
        return to_datetime(self.expires_at_us)

    @property
    def expired_at(self) -> datetime | None:
        us = self.expired_at_us
        return None if us is None else to_datetime(us)


class Session(msgspec.Struct, _Deadline, kw_only=True, gc=False):
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


class Ack(msgspec.Struct, _Deadline, array_like=True, gc=False):
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
    damaged: list[str] = []


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


# -- how a reply converts --------------------------------------------------


def _reply(kind: type[R], value: Callable[[R], T]) -> Callable[[Response], T]:
    """How a reply converts: it is a ``kind`` (the daemon answers each
    request with its own reply type) and the caller gets ``value`` of it."""

    def convert(r: Response) -> T:
        assert isinstance(r, kind)
        return value(r)

    return convert


to_session = _reply(SessionReply, lambda r: r.session)


def to_ack(r: Response) -> Ack:
    """An ``AckReply``'s ack; or, from a daemon of protocol version 1 (which
    answers the whole session), the ack made of the session."""
    if type(r) is AckReply:
        return r.ack
    assert isinstance(r, SessionReply)
    s = r.session
    return Ack(s.id, s.version, s.expires_at_us, s.expired_at_us)


to_deleted = _reply(Deleted, lambda r: r.sid)


def to_page(r: Response) -> tuple[list[Session], str | None]:
    """A page's sessions and the cursor of the next; ``SessionsDamaged``
    (which holds them) when it passed over sessions the shared engine holds
    damaged: a program that lists is never left to miss one unawares."""
    assert isinstance(r, Page)
    if r.damaged:
        raise SessionsDamaged(r.sessions, r.cursor, r.damaged)
    return r.sessions, r.cursor


to_stats = _reply(StatsReply, lambda r: r.stats)
to_cleanup = _reply(CleanupReply, lambda r: r.result)
to_config = _reply(ConfigReply, lambda r: r.config)
to_config_sources = _reply(ConfigReply, lambda r: (r.config, r.sources))


class ConfigListing(msgspec.Struct, kw_only=True):
    """Every setting in force (``values``), where each came from
    (``sources``: default, file, env, flag or namespace), the daemon's
    config file (``file``) and why what that file now holds is not in
    force (``file_note``; ``None``: it is). ``sources`` is empty, ``file``
    and ``file_note`` ``None``, from a daemon too old to say."""

    values: dict[str, Any]
    sources: dict[str, str]
    file: str | None = None
    file_note: str | None = None


to_config_listing = _reply(ConfigReply, lambda r: ConfigListing(
    values=r.config, sources=r.sources, file=r.file, file_note=r.file_note))
to_imported = _reply(ImportReply, lambda r: r.result)
to_compacted = _reply(CompactReply, lambda r: r.result)
to_pong = _reply(Pong, lambda r: r)
to_stopping = _reply(Stopping, lambda r: r.pid)


class ReloadResult(msgspec.Struct, kw_only=True):
    """What a reload put in force: the config file read (``file``), each
    setting it changed (``changed``: key -> [before, after]) and each key
    a layer above the file still sets (``above``: key -> flag, env or
    namespace), whose value in the file is not in force."""

    file: str
    changed: dict[str, list[Any]]
    above: dict[str, str]


to_reloaded = _reply(Reloaded, lambda r: ReloadResult(file=r.file, changed=r.changed,
                                                      above=r.above))
