"""What the client can ask, each operation written once.

Every method of ``Operations`` checks its arguments, builds its request and
names how the reply converts to what the caller gets (the converters, and
the ``Session``, ``Ack`` and ``Event`` they make, are
``sessionctl.results``'); how the request is sent is ``_submit``'s
business. ``Client`` (a round trip, the value), ``Pipeline`` (a queued
frame, a ``Pending``) and ``AsyncClient`` (an awaitable) differ in nothing
else, as redis-py's ``Pipeline(Redis)`` overrides only ``execute_command``.
A new operation is a method here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sessionctl.results import (
    SESSION_KINDS,
    Ack,
    ConfigListing,
    ReloadResult,
    Session,
    to_ack,
    to_cleanup,
    to_compacted,
    to_config,
    to_config_listing,
    to_config_sources,
    to_deleted,
    to_imported,
    to_page,
    to_pong,
    to_reloaded,
    to_session,
    to_stats,
    to_stopping,
)
from sessiond import model
from sessiond.limits import MAX_TTL
from sessiond.protocol import (
    ACK,
    PAGE_MAX,
    SESSION,
    Cleanup,
    CleanupResult,
    Compact,
    CompactResult,
    ConfigGet,
    ConfigSet,
    Create,
    Delete,
    Expire,
    Get,
    Import,
    ImportResult,
    List,
    Ping,
    Pong,
    Refresh,
    Reload,
    Request,
    Response,
    Set,
    Shutdown,
    Stats,
    StatsInfo,
    Unset,
    Watch,
)

T = TypeVar("T")
# Values that are JSON as they are, told by one type test: anything else
# (a float, which may be nan; a list, a dict, a set, a date) is checked by
# sessionctl.arguments.
_PLAIN = frozenset({str, int, bool, type(None)})


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
    from sessionctl.signatures import Reply, operation, shaped
else:
    # What the type checker reads in sessionctl.signatures: at run time a
    # method is left as it is written.

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
            return self._submit(req, to_ack)
        return self._submit(req, to_session)

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
            for key, value in meta.items():
                if type(key) is not str or type(value) not in _PLAIN:
                    from sessionctl import arguments as a

                    meta = a.meta(meta)
                    break
        req = Create(id=0, user=user, ttl=ttl, meta=meta, sid=id)
        if returning is None and self._returning == SESSION:
            return self._submit(req, to_session)
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
            return self._submit(req, to_session)
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
        if (
            type(sid) is not str
            or type(key) is not str
            or expect_version is not None
            or type(value) not in _PLAIN
        ):
            from sessionctl import arguments as a

            sid, key, expect_version = a.sid(sid), a.key(key), a.version(expect_version)
            a.json_value("value", value)
        req = Set(id=0, sid=sid, key=key, value=value, expect_version=expect_version)
        if returning is None and self._returning == SESSION:
            return self._submit(req, to_session)
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
        return self._submit(Delete(id=0, sid=sid), to_deleted)

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
        no page gave, ``SessionsDamaged`` (shared mode) for a page that
        passed over sessions the engine holds damaged: it holds the page's
        sessions and cursor, to go on with."""
        from sessionctl import arguments as a

        req = List(
            id=0,
            status=a.status(status),
            user=a.user(user, new=False),
            limit=a.limit("limit", limit),
            cursor=None if cursor is None else a.text("cursor", cursor),
        )
        return self._submit(req, to_page)

    @operation
    def stats(self) -> Reply[StatsInfo]:
        """Counts and the daemon's health. Raises only what every operation
        raises (see ``Operations``)."""
        return self._submit(Stats(id=0), to_stats)

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
        return self._submit(req, to_cleanup)

    @operation
    def config(self, key: str | None = None) -> Reply[dict[str, Any]]:
        """All settings, or ``{key: value}``. Raises ``InvalidRequest`` for
        an unknown key."""
        from sessionctl import arguments as a

        return self._submit(ConfigGet(id=0, key=None if key is None else a.text("key", key)),
                            to_config)

    @operation
    def set_config(self, key: str, value: Any) -> Reply[dict[str, Any]]:
        """Validate, apply live and persist one setting; returns every
        setting. Raises ``InvalidRequest`` for an unknown key or a value
        the key does not take (the message says what it takes),
        ``Conflict`` when a flag or a variable of the daemon sets it, or
        when its config file, edited by hand, is not valid (nothing is
        written), ``ReadOnly`` when the file cannot be written."""
        from sessionctl import arguments as a

        return self._submit(ConfigSet(id=0, key=a.text("key", key), value=value), to_config)

    @operation
    def config_sources(
        self, key: str | None = None
    ) -> Reply[tuple[dict[str, Any], dict[str, str]]]:
        """``config(key)``, and where each setting came from: default, file,
        env or flag (empty from a daemon too old to say). Raises
        ``InvalidRequest`` for an unknown key."""
        from sessionctl import arguments as a

        req = ConfigGet(id=0, key=None if key is None else a.text("key", key))
        return self._submit(req, to_config_sources)

    @operation
    def config_listing(self) -> Reply[ConfigListing]:
        """Every setting, where each came from, the daemon's config file and
        why what it now holds is not in force (edited since it was read,
        or invalid), as ``sessionctl config`` shows them. Raises only what
        every operation raises (see ``Operations``)."""
        return self._submit(ConfigGet(id=0), to_config_listing)

    @operation
    def reload(self) -> Reply[ReloadResult]:
        """Have the daemon read its config file again and put it in force,
        as SIGHUP does, and say what changed. Raises ``Conflict`` when the
        file (or, in shared mode, the namespace's settings) is not valid:
        the settings in force are kept; ``ReadOnly`` as ``set_config``
        does; ``Unsupported`` from a daemon too old to know the request."""
        return self._submit(Reload(id=0), to_reloaded)

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
        return self._submit(Import(id=0, sessions=page), to_imported)

    @operation
    def compact(self) -> Reply[CompactResult]:
        """Rewrite the journal now; sizes before and after, time taken.
        Raises ``SessionError`` when the rewrite fails (the journal is left
        as it was; the message says why)."""
        return self._submit(Compact(id=0), to_compacted)

    @operation
    def ping(self) -> Reply[Pong]:
        """The daemon's pid, version and uptime. Raises only what every
        operation raises (see ``Operations``)."""
        return self._submit(Ping(id=0), to_pong)

    @operation
    def shutdown(self) -> Reply[int]:
        """Stop the daemon, as SIGTERM does; returns its pid. It answers
        first, then finishes the requests in flight and syncs its journal.
        Raises ``Unsupported`` from a daemon too old to know the request."""
        return self._submit(Shutdown(id=0), to_stopping)
