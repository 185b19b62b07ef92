"""What the client can ask, each operation written once.

Every method of ``Operations`` builds its request and names how the reply
converts to what the caller gets; how the request is sent is ``_submit``'s
business. ``Client`` (a round trip, the value) and ``Pipeline`` (a queued
frame, a ``Pending``) differ in nothing else, as redis-py's
``Pipeline(Redis)`` overrides only ``execute_command``. A new operation is a
method here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sessiond.model import Session
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
    Expire,
    Get,
    Import,
    ImportReply,
    ImportResult,
    List,
    Page,
    Ping,
    Pong,
    Refresh,
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

if TYPE_CHECKING:
    from sessionctl.client import Client
    from sessionctl.pipeline import Pending, Pipeline

T = TypeVar("T")
R = TypeVar("R", bound=Response)


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
_stopping = _reply(Stopping, lambda r: r.pid)


if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec, overload

    P = ParamSpec("P")

    class Reply(Generic[T]):
        """What an operation's ``_submit`` hands back: a ``T`` from a
        ``Client``, a ``Pending[T]`` from a ``Pipeline`` (see ``operation``)."""

    class operation(Generic[P, T]):
        """An operation written once in ``Operations``, as each class that
        submits it returns it: ``Client.get`` returns a ``Session``,
        ``Pipeline.get`` a ``Pending[Session]``. For the type checker only:
        at run time the method is left as it is written."""

        def __init__(self, method: Callable[Concatenate[Any, P], Reply[T]]) -> None: ...

        @overload
        def __get__(self, obj: None, owner: type) -> operation[P, T]: ...

        @overload
        def __get__(self, obj: Client, owner: type) -> Callable[P, T]: ...

        @overload
        def __get__(self, obj: Pipeline, owner: type) -> Callable[P, Pending[T]]: ...

        def __get__(self, obj: object, owner: type) -> Any: ...

else:

    def operation(method):
        return method


class Operations:
    """One method per operation, written once: each builds its request and
    names how its reply converts; ``_submit`` is what differs. A ``Client``
    makes the round trip and returns the value; a ``Pipeline`` queues the
    request and returns a ``Pending`` (redis-py's ``Pipeline(Redis)``, which
    overrides only ``execute_command``, is the model)."""

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
        """Create a session; ``ttl`` defaults to the daemon's ``default_ttl``."""
        req = Create(id=0, user=user, ttl=ttl, meta=meta or {}, sid=id)
        return self._submit(req, _session)

    @operation
    def get(self, sid: str, *, touch: bool = False) -> Reply[Session]:
        """A session (``expired`` once past its deadline); ``touch`` slides it."""
        return self._submit(Get(id=0, sid=sid, touch=touch), _session)

    @operation
    def set(
        self, sid: str, key: str, value: Any, *, expect_version: int | None = None
    ) -> Reply[Session]:
        """Set ``meta[key]``; with ``expect_version``, only if unchanged since."""
        req = Set(id=0, sid=sid, key=key, value=value, expect_version=expect_version)
        return self._submit(req, _session)

    @operation
    def unset(self, sid: str, key: str, *, expect_version: int | None = None) -> Reply[Session]:
        """Remove ``meta[key]``; with ``expect_version``, only if unchanged since."""
        req = Unset(id=0, sid=sid, key=key, expect_version=expect_version)
        return self._submit(req, _session)

    @operation
    def delete(self, sid: str) -> Reply[str]:
        """Delete a session; returns its id."""
        return self._submit(Delete(id=0, sid=sid), _deleted)

    @operation
    def expire(self, sid: str) -> Reply[Session]:
        """Expire a session now."""
        return self._submit(Expire(id=0, sid=sid), _session)

    @operation
    def refresh(
        self, sid: str, *, ttl: int | None = None, revive: bool = False
    ) -> Reply[Session]:
        """Deadline = now + ttl; an expired session needs ``revive=True``."""
        req = Refresh(id=0, sid=sid, ttl=ttl, revive=revive)
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
        """One page of sessions and the cursor of the next (``None`` at the end)."""
        req = List(id=0, status=status, user=user, limit=limit, cursor=cursor)
        return self._submit(req, _page)

    @operation
    def stats(self) -> Reply[StatsInfo]:
        """Counts and the daemon's health."""
        return self._submit(Stats(id=0), _stats)

    @operation
    def cleanup(
        self, *, before: int | None = None, dry_run: bool = False
    ) -> Reply[CleanupResult]:
        """Remove expired sessions (and those due before ``before``, in µs)."""
        req = Cleanup(id=0, before=before, dry_run=dry_run)
        return self._submit(req, _cleanup)

    @operation
    def config(self, key: str | None = None) -> Reply[dict[str, Any]]:
        """All settings, or ``{key: value}``."""
        return self._submit(ConfigGet(id=0, key=key), _config)

    @operation
    def set_config(self, key: str, value: Any) -> Reply[dict[str, Any]]:
        """Validate, apply live and persist one setting."""
        req = ConfigSet(id=0, key=key, value=value)
        return self._submit(req, _config)

    @operation
    def config_sources(
        self, key: str | None = None
    ) -> Reply[tuple[dict[str, Any], dict[str, str]]]:
        """``config(key)``, and where each setting came from: default, file,
        env or flag (empty from a daemon too old to say)."""
        req = ConfigGet(id=0, key=key)
        return self._submit(req, _config_sources)

    @operation
    def import_page(self, sessions: list[Session]) -> Reply[ImportResult]:
        """Merge up to ``PAGE_MAX`` sessions (``Client.import_sessions`` pages)."""
        return self._submit(Import(id=0, sessions=sessions), _imported)

    @operation
    def compact(self) -> Reply[CompactResult]:
        """Rewrite the journal now; sizes before and after, time taken."""
        return self._submit(Compact(id=0), _compacted)

    @operation
    def ping(self) -> Reply[Pong]:
        """The daemon's pid, version and uptime."""
        return self._submit(Ping(id=0), _pong)

    @operation
    def shutdown(self) -> Reply[int]:
        """Stop the daemon, as SIGTERM does; returns its pid. It answers
        first, then finishes the requests in flight and syncs its journal.
        Raises ``Unsupported`` from a daemon too old to know the request."""
        return self._submit(Shutdown(id=0), _stopping)
