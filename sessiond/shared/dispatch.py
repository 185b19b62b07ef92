"""The shared engine's dispatcher: a batch of requests in, replies out, the
engine between.

Requests on one session that arrive together (a run) cost two round trips
to the engine however many they are: one reads every record they name
(and the engine's clock), the rules run on that view (``View``) exactly as
they run on the local store, and one commits what they changed, each
request's changes all or nothing, each record compared and set on its
version. A request whose records another daemon changed in between is run
again on what it left (``_again``): nobody's update is lost. The other
requests (a list, cleanup, import, settings, stats, watch) are the
engine's operations on many sessions (``sessiond.shared.scans``) or the
daemon's own.

The engine is the one durable place: a reply goes out once the commit it
depends on has returned, and when the engine cannot be reached nothing is
buffered here: the request fails (``BackendUnavailable``), or for a change
sent and not answered, says that its outcome is unknown.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from sessiond import config, live
from sessiond.dispatch import guess_id, no_stop
from sessiond.errors import (
    BackendUnavailable,
    Conflict,
    InternalError,
    OutcomeUnknown,
    ReadOnly,
    SessionError,
    Unsupported,
)
from sessiond.events import EventSource
from sessiond.handlers import HANDLERS, SLOW, hello, shape_refused
from sessiond.live import Live, rules_of
from sessiond.model import Change
from sessiond.protocol import (
    DECODE_ERRORS,
    ON_SESSION,
    Cleanup,
    CompactResult,
    ConfigGet,
    ConfigSet,
    ErrorReply,
    Get,
    Hello,
    Import,
    List,
    Peer,
    Ping,
    Request,
    Response,
    Shutdown,
    StatsInfo,
    Watch,
    append_frame,
    request_decoder,
    request_error,
)
from sessiond.rules import Rules
from sessiond.shared import scans
from sessiond.shared.engine import SharedStore
from sessiond.shared.view import View
from sessiond.shared.watch import StreamWatcher

log = logging.getLogger("sessiond.shared")

# Requests on one session (``protocol.ON_SESSION``) run together on a view
# of their records.
# Answered by the daemon alone (and ``Hello``, which changes its connection).
OWN = frozenset({Ping, ConfigGet, Shutdown})
# How long a request whose records keep changing under it is run again
# before it is refused (Conflict). Each round of a race on a record has a
# winner, so a request loses round after round only while others keep
# writing that record: a count of tries would fail a plain ``set`` among a
# handful of busy writers; seconds bound only how long it may be held.
AGAIN_SECONDS = 2.0
# Between tries, a random pause of up to this much, doubling from a
# millisecond: requests that lost to the same winner do not meet again
# at once.
AGAIN_PAUSE_MAX = 0.02


class _OnView:
    """The parts a handler of one session's operation sees, over a view."""

    def __init__(self, d: SharedDispatcher, view: View) -> None:
        self.store = view
        self.live = d.live
        self.started = d.started
        self.stats = d.stats


class SharedDispatcher:
    """Runs batches of requests against one namespace of the engine."""

    def __init__(self, store: SharedStore, live: Live) -> None:
        self.store = store
        self.live = live
        self.started = time.monotonic()
        self.stats: Callable[[int], Awaitable[StatsInfo]] = _no_stats
        self.request_stop: Callable[[], None] = no_stop
        self.watchers: set[StreamWatcher] = set()
        self.passed = scans.Passed()
        self._many: dict[type[Request], Callable[[Any], Awaitable[Response]]] = {
            List: self._list, Cleanup: self._cleanup, Import: self._import,
            ConfigSet: self._config_set,
        }

    async def batch(
        self, bodies: list[memoryview], bad: int, out: bytearray, peer: Peer | None = None
    ) -> tuple[EventSource | None, int, int]:
        """Handle frames that arrived together (see ``Dispatcher.batch``)."""
        budget = self.live.settings.max_reply_queue_bytes
        run: list[Request] = []
        used = 0
        if peer is None:
            peer = Peer()
        for body in bodies:
            if len(out) > budget:
                break
            used += 1
            try:
                req = request_decoder.decode(body)
            except DECODE_ERRORS as exc:
                await self._flush(run, out)
                bad += 1
                append_frame(out, _error(guess_id(body), request_error(exc)))
                continue
            bad = 0
            kind = type(req)
            refused = shape_refused(req, peer) if peer.version < 2 else None
            if kind in ON_SESSION and refused is None:
                run.append(req)
                continue
            await self._flush(run, out)
            if refused is not None:
                append_frame(out, _error(req.id, refused))
                continue
            if isinstance(req, Hello):
                try:
                    append_frame(out, hello(req, peer))
                except SessionError as exc:
                    append_frame(out, _error(req.id, exc))
                continue
            if isinstance(req, Watch):
                watcher = StreamWatcher(self.store, req.user, req.after, self.watchers)
                try:
                    first = await watcher.hello(req.id)
                except SessionError as exc:
                    # A cursor that is not an event's, the engine away: this
                    # request is refused, the connection goes on.
                    watcher.close()
                    append_frame(out, _error(req.id, exc))
                    continue
                append_frame(out, first)
                return watcher, bad, used
            append_frame(out, scans.for_peer(await self._other(req), peer))
        await self._flush(run, out)
        return None, bad, used

    async def _other(self, req: Request) -> Response:
        kind = type(req)
        try:
            if kind in OWN:
                reply, _ = HANDLERS[kind](self, req, 0)
                return reply
            many = self._many.get(kind)
            if many is not None:
                return await many(req)
            slow = SLOW.get(kind)
            if slow is not None:
                return await slow(self, req)
            raise Unsupported(f"unsupported operation {kind.__name__}")
        except SessionError as exc:
            return _error(req.id, exc)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("internal error handling %s", kind.__name__)
            return _error(req.id, InternalError(f"internal error: {exc!r}"))

    # -- requests on one session -----------------------------------------

    async def _flush(self, run: list[Request], out: bytearray) -> None:
        if run:
            for reply in await self._run(run):
                append_frame(out, reply)
            run.clear()

    async def _run(self, run: list[Request]) -> list[Response]:
        """Replies to a run of requests on sessions, in order."""
        sids = list(dict.fromkeys(s for s in (getattr(r, "sid", None) for r in run) if s))
        try:
            now, records = await self.store.fetch(sids)
        except InternalError as exc:
            if len(sids) < 2:
                return [_error(req.id, exc) for req in run]
            # A session the engine holds damaged (changed outside sessiond)
            # among others: each request alone, so that only those on it
            # are refused (rare, and a round trip or two a request).
            return [await self._again(req) for req in run]
        except SessionError as exc:
            return [_error(req.id, exc) for req in run]
        on = _OnView(self, View(rules_of(self.live.settings), records))
        replies: list[Response] = []
        groups: list[tuple[int, list[Change]]] = []
        for i, req in enumerate(run):
            reply, made = self._apply(on, req, now)
            replies.append(reply)
            if made:
                groups.append((i, made))
        if not groups:
            return replies
        try:
            applied = await self.store.commit([made for _, made in groups], now)
        except SessionError as exc:
            return await self._refused(run, exc)
        refused: dict[int, list[Change]] = {
            i: made for (i, made), ok in zip(groups, applied, strict=True) if not ok
        }
        if refused:
            # Run again, in order, each refused request and every request
            # after it on a session it changed: those were answered on a
            # view that held its changes (a read would show a state that
            # never was, a refusal be judged on one), and the commit
            # refused the later changes too.
            stale: set[str] = set()
            for i, req in enumerate(run):
                lost = refused.get(i)
                if lost is not None:
                    stale.update(c.sid for c in lost)
                if lost is not None or getattr(req, "sid", None) in stale:
                    replies[i] = await self._again(req)
        return replies

    def _apply(self, on: _OnView, req: Request, now: int) -> tuple[Response, list[Change]]:
        try:
            reply, made = HANDLERS[type(req)](on, req, now)
            return reply, made
        except SessionError as exc:
            return _error(req.id, exc), []
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("internal error handling %s", type(req).__name__)
            return _error(req.id, InternalError(f"internal error: {exc!r}")), []

    async def _again(self, req: Request) -> Response:
        """Run ``req`` alone until its commit finds its records as it read
        them (another daemon changed them meanwhile)."""
        sid = getattr(req, "sid", None)
        deadline = time.monotonic() + AGAIN_SECONDS
        tries = 0
        while True:
            tries += 1
            try:
                now, records = await self.store.fetch([sid] if sid else [])
                view = View(rules_of(self.live.settings), records)
                reply, made = self._apply(_OnView(self, view), req, now)
                if not made or await self._committed(req, made, now):
                    return reply
            except SessionError as exc:
                return _error(req.id, exc)
            if time.monotonic() >= deadline:
                return _error(req.id, Conflict(
                    f"session {sid} kept changing under this request ({tries} tries in "
                    f"{AGAIN_SECONDS:g}s); try again"
                ))
            await anyio.sleep(random.uniform(0, min(0.001 * 2**tries, AGAIN_PAUSE_MAX)))

    async def _committed(self, req: Request, made: list[Change], now: int) -> bool:
        """Whether ``req``'s changes were committed. A read's are lazy
        expiries: refused by an engine that refuses writes, its expired
        answer holds all the same (the session is past its deadline, as in
        local mode with a read-only journal: ``Dispatcher._commit``), and
        the lease holder expires it once the engine takes writes again."""
        try:
            return (await self.store.commit([made], now))[0]
        except ReadOnly:
            if _writes(req):
                raise
            return True

    async def _refused(self, run: list[Request], exc: SessionError) -> list[Response]:
        """The commit of a run failed: what each request is told."""
        replies: list[Response] = []
        for req in run:
            writes = _writes(req)
            if isinstance(exc, ReadOnly) and not writes:
                # Nothing was written: a read is answered on what stands.
                replies.append(await self._again(req))
            elif isinstance(exc, OutcomeUnknown) and not writes:
                replies.append(_error(req.id, BackendUnavailable(str(exc))))
            else:
                replies.append(_error(req.id, exc))
        return replies

    # -- the others --------------------------------------------------------

    async def _list(self, req: List) -> Response:
        return await scans.list_page(self.store, self._rules(), req, self.passed)

    async def _cleanup(self, req: Cleanup) -> Response:
        return await scans.cleanup(self.store, self._rules(), req, self.passed)

    async def _import(self, req: Import) -> Response:
        return await scans.import_page(self.store, self._rules(), req, self.passed)

    async def _config_set(self, req: ConfigSet) -> Response:
        return await scans.config_set(self.store, self.live, req, self.adopt)

    def _rules(self) -> Rules:
        return rules_of(self.live.settings)

    async def adopt(self, layers: config.Layers) -> None:
        """Put the namespace's settings in force here; a lowered
        max_lifetime is applied to every session by the daemon that
        lowered it (``scans.config_set``)."""
        self.live.put(layers)

    async def reload(self) -> live.Reloaded:
        """The config file and the namespace's settings read again (SIGHUP,
        ``reload``); the namespace's win over the file's. Keys it does not
        know are left out, and said by the engine's reading of them
        (``SharedEngine``, which also reads the namespace's again at every
        change another daemon makes). Raises as ``live.reload`` does, and
        ``BackendUnavailable``."""

        async def with_namespace(layers: config.Layers) -> config.Layers:
            return (await scans.namespace_layers(self.store, layers))[0]

        return await live.reload(self.live, self.adopt, with_namespace)

    async def compact(self) -> CompactResult:
        now, counters, _, _ = await self.store.stats()
        return CompactResult(
            bytes_before=0, bytes_after=0, sessions=counters.get("total", 0), seconds=0.0,
            note=(
                f"nothing to do: the shared engine {self.store.link.node} persists the "
                f"sessions itself (see its appendonly and auto-aof-rewrite settings)"
            ),
        )


def _writes(req: Request) -> bool:
    """Whether ``req`` changes something by itself (not a lazy expiry)."""
    return type(req).writes or (isinstance(req, Get) and req.touch)


def _error(req_id: int, exc: SessionError) -> ErrorReply:
    return ErrorReply(id=req_id, code=exc.code, message=str(exc))


async def _no_stats(now: int) -> StatsInfo:
    raise AssertionError("the server gives the dispatcher its stats")
