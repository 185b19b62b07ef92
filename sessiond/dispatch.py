"""Dispatch: a batch of request bodies in, reply frames and one journal commit out.

The data path is one line: frame -> typed request (msgspec validates) ->
``Store`` applies it and returns changes -> ``Journal`` persists them ->
watchers hear of them -> response frame. Frames that arrive together are
handled as one batch with one journal commit, which is what makes pipelining
and group commit pay.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from sessiond import compaction, config, live, standing, sweep
from sessiond.errors import ConfigError, InternalError, ReadOnly, SessionError, Unsupported
from sessiond.events import EventSource, Hub
from sessiond.failpoints import LINE_ENCODE_ERROR, REPLY_ENCODE_ERROR, encode_fault
from sessiond.handlers import HANDLERS, SLOW, hello, shape_refused
from sessiond.journal import Journal
from sessiond.live import Live, rules_of
from sessiond.model import Change, now_us
from sessiond.protocol import (
    DECODE_ERRORS,
    HEADER,
    LENGTH,
    NO_LENGTH,
    WRITES,
    CleanupResult,
    CompactResult,
    Event,
    EventReply,
    Get,
    Hello,
    Peer,
    StatsInfo,
    Watch,
    append_frame,
    encoder,
    request_decoder,
    request_error,
)
from sessiond.records import journal_lines
from sessiond.store import Store

# The server's logger: splitting the server into modules changes no record.
log = logging.getLogger("sessiond.server")

# Requests whose answer stands only once their changes are persisted
# (``Request.writes``).
_WRITES: Final = WRITES


class _IdOnly(msgspec.Struct):
    id: int = 0


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)



class _Turn:
    """A commit awaiting its turn to be announced: its changes (``None``
    once refused), and whether the journal has returned."""

    __slots__ = ("changes", "returned")

    def __init__(self, changes: list[Change]) -> None:
        self.changes: list[Change] | None = changes
        self.returned = False


class Dispatcher:
    """Runs batches of requests against one store and one journal, and
    tells watchers and the other parts what was committed.

    Holds the parts that requests use (the store, the journal, the hub of
    watchers, the live settings) and nothing that others own: the server
    gives it the one figure it cannot make, ``stats``, and the way to stop
    the daemon, ``request_stop``, and registers what must hear of every
    commit (``notice``)."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        hub: Hub,
        live: Live,
        stats: Callable[[int], Awaitable[StatsInfo]],
    ) -> None:
        self.store = store
        self.journal = journal
        # The numbering of the journal's batches, which replies wait on.
        self.settlement = journal.settlement
        self.hub = hub
        self.live = live
        self.stats = stats
        # Stops the daemon as SIGTERM does (the ``shutdown`` request); the
        # server sets it, as it sets ``stats``.
        self.request_stop: Callable[[], None] = no_stop
        self.started = time.monotonic()
        # Called after every commit (the timers: see ``sessiond.timers``).
        self.noticers: list[Callable[[], None]] = []
        # Commits on their way to the journal, oldest first: their changes
        # are announced to watchers in this order (``commit``).
        self._announcing: deque[_Turn] = deque()
        self.handlers = HANDLERS
        # The encoders of replies and journal lines: themselves, unless a
        # failpoint makes them fail (chosen once, not per request).
        self.encode_into = encode_fault(REPLY_ENCODE_ERROR, encoder.encode_into)
        self._journal_lines = encode_fault(LINE_ENCODE_ERROR, journal_lines)

    async def batch(
        self, bodies: list[memoryview], bad: int, out: bytearray, peer: Peer | None = None
    ) -> tuple[EventSource | None, int, int]:
        """Handle frames that arrived together on ``peer``'s connection (a
        new one speaking version 1, if not given); one journal commit for all.

        Appends the reply frames to ``out``. Stops early once they exceed
        ``max_reply_queue_bytes``, so a client that pipelines big reads
        without reading the answers never makes the daemon hold more than
        that (plus one reply) for it; the caller sends those and comes back
        for the rest. Returns the watcher if the batch ended in ``watch``,
        the count of bad frames in a row, and how many bodies were used.

        No reply leaves here carrying state that is not yet durable: the
        batch's own changes are committed first, and replies that may have
        read another batch's changes wait until those are (``standing.hold``). When
        changes they saw are refused, they are computed again."""
        budget = self.live.settings.max_reply_queue_bytes
        changes: list[Change] = []
        writes: list[tuple[int, int, int]] = []  # (start, end) of its reply in out, id
        # Looked up once: this loop runs for every request.
        handlers = self.handlers
        decode = request_decoder.decode
        encode_into = self.encode_into
        pack_length = LENGTH.pack_into
        settlement = self.settlement
        used = 0
        # The requests since the batch began or since the last request that
        # waits on I/O of its own: where their replies begin in ``out``.
        first = 0
        first_out = len(out)
        if peer is None:
            peer = Peer()
        # A connection that speaks version 1 must not ask for acks (its
        # client could not read them): checked only there.
        v1 = peer.version < 2
        for body in bodies:
            if len(out) > budget:
                break
            used += 1
            try:
                req = decode(body)
            except DECODE_ERRORS as exc:
                bad += 1
                append_frame(out, standing.error_reply(guess_id(body), request_error(exc)))
                continue
            bad = 0
            kind = type(req)
            if v1 and (refused := shape_refused(req, peer)) is not None:
                append_frame(out, standing.error_reply(req.id, refused))
                continue
            handler = handlers.get(kind)
            if handler is None:
                slow = SLOW.get(kind)
                if slow is None and kind is not Watch and kind is not Hello:
                    unknown = Unsupported(f"unsupported operation {kind.__name__}")
                    append_frame(out, standing.error_reply(req.id, unknown))
                    continue
                # These wait on I/O of their own, or (a hello) change what
                # the connection may ask: settle the batch so far first.
                if changes:
                    await self._commit(
                        changes, writes, out, bodies, first, used - 1, first_out, peer
                    )
                    changes, writes = [], []
                elif settlement.settled < settlement.accepted:
                    await standing.hold(self, out, bodies, first, used - 1, first_out, peer)
                if isinstance(req, Hello):
                    try:
                        greeting = hello(req, peer)
                    except SessionError as exc:
                        append_frame(out, standing.error_reply(req.id, exc))
                    else:
                        # Encoded as every handler's reply is (the encoder a
                        # failpoint may make fail counts it too).
                        start = len(out)
                        out += NO_LENGTH
                        try:
                            encode_into(greeting, out, -1)
                            pack_length(out, start, len(out) - start - HEADER)
                        except Exception as exc:
                            del out[start:]
                            standing.unencodable(self, out, req, [], exc)
                    v1 = peer.version < 2
                    first, first_out = used, len(out)
                    continue
                if slow is None:
                    assert isinstance(req, Watch)
                    settings = self.live.settings
                    watcher = self.hub.subscribe(
                        req.user, settings.watch_queue, settings.watch_queue_bytes
                    )
                    append_frame(out, EventReply(id=req.id, event=hello_event()))
                    return watcher, bad, used
                try:
                    append_frame(out, await slow(self, req))
                except SessionError as exc:
                    append_frame(out, standing.error_reply(req.id, exc))
                first, first_out = used, len(out)
                continue
            try:
                reply, made = handler(self, req, now_us())
            except SessionError as exc:
                append_frame(out, standing.error_reply(req.id, exc))
                continue
            except Exception as exc:  # a bug: answer, log, keep serving
                log.exception("internal error handling %s", type(req).__name__)
                bug = InternalError(f"internal error: {exc!r}")
                append_frame(out, standing.error_reply(req.id, bug))
                continue
            # append_frame, inline.
            start = len(out)
            out += NO_LENGTH
            try:
                encode_into(reply, out, -1)
            except Exception as exc:
                del out[start:]
                standing.unencodable(self, out, req, made, exc)
                continue
            end = len(out)
            pack_length(out, start, end - start - HEADER)
            if made:
                changes.extend(made)
                if kind in _WRITES or (isinstance(req, Get) and req.touch):
                    writes.append((start, end, req.id))
        if changes:
            await self._commit(changes, writes, out, bodies, first, used, first_out, peer)
        elif settlement.settled < settlement.accepted:
            # Nothing to commit, but another batch is on its way to disk,
            # and these replies may have read what it changed. (The usual
            # case, nothing in flight, costs this one comparison.)
            await standing.hold(self, out, bodies, first, used, first_out, peer)
        return None, bad, used

    async def _commit(
        self,
        changes: list[Change],
        writes: list[tuple[int, int, int]],
        out: bytearray,
        bodies: list[memoryview],
        first: int,
        end: int,
        first_out: int,
        peer: Peer,
    ) -> None:
        """Commit the changes of ``bodies[first:end]``, whose replies are
        ``out[first_out:]``. Once committed, every batch accepted before
        them has settled too (they settle in order), and none of those was
        refused after these replies were computed: had one been, this
        commit would have been refused with it."""
        failures = self.settlement.failures
        try:
            await self.commit(changes)
        except (ReadOnly, InternalError) as exc:
            # Refused, and reverted: every write's reply becomes the refusal.
            error: SessionError = exc
            final = dict.fromkeys(
                standing.frame_indices(out, first, first_out, {start for start, _, _ in writes}),
                error,
            )
            if not writes and self.settlement.failures == failures:
                # Lazy expiries of reads alone, refused by a journal that was
                # read-only already: nobody saw them, and an expired answer
                # holds (the session is past its deadline).
                return
            # The other replies may have read what was refused (a write of
            # this batch, or of one that failed with it): computed again.
            await standing.recompute(self, out, bodies, first, end, first_out, final, peer)

    async def commit(self, changes: list[Change]) -> None:
        """Persist changes already applied to the store (the latest it
        made), then announce them. Raises ``ReadOnly`` when the journal
        refuses them, ``InternalError`` when their lines cannot be encoded
        (a bug): either way they are reverted."""
        store = self.store
        try:
            data = self._journal_lines(changes)
        except Exception as exc:
            store.revert(changes)
            log.exception("internal error encoding %d journal lines; the changes are reverted",
                          len(changes))
            raise InternalError(
                f"internal error: the change could not be written to the journal ({exc!r}); "
                f"it was not made"
            ) from exc
        # Announced in the order the store made them, which is the order
        # the journal takes them in: a commit written inline may return
        # before an older one, queued for the writer thread, resumes its
        # task, and a watcher would see a session's versions out of order.
        turn = _Turn(changes)
        self._announcing.append(turn)
        try:
            await self.journal.commit(data, lambda: store.revert(changes))
        except BaseException:
            turn.changes = None  # refused (reverted) or cancelled: not made
            raise
        finally:
            turn.returned = True
            self._announce()
        for notice in self.noticers:
            notice()

    def _announce(self) -> None:
        """Publish the commits at the head of the line whose commits have
        returned; one still on its way holds back those behind it."""
        line = self._announcing
        while line and line[0].returned:
            changes = line.popleft().changes
            if changes is not None and self.hub.watchers:
                self.hub.publish(changes, now_us())

    async def adopt(self, layers: config.Layers) -> None:
        """Put new settings in force, and persist what the store's rules
        change with them (sessions brought within a lowered
        max_lifetime). Raises ``ConfigError`` for settings only shared mode
        has (``config.local_refusal``: nothing changes), ``ReadOnly`` when
        that cannot be persisted:
        the settings are then as they were."""
        refusal = config.local_refusal(layers.settings)
        if refusal is not None:
            raise ConfigError(refusal)
        old = self.live.layers
        store = self.store
        changes = store.change_rules(now_us(), rules_of(layers.settings))
        self.live.put(layers)
        if not changes:
            return
        try:
            await self.commit(changes)
        except ReadOnly:
            # The changes are reverted already; now the rules with them.
            store.rules = rules_of(old.settings)
            self.live.put(old)
            raise

    async def reload(self) -> live.Reloaded:
        """Read the config file again and put it in force (SIGHUP,
        ``reload``). Raises as ``live.reload`` does."""
        return await live.reload(self.live, self.adopt)

    async def compact(self) -> CompactResult:
        return await compaction.compact(self.journal, self.store.live_slots)

    async def cleanup(self, before: int | None, dry_run: bool) -> CleanupResult:
        return await sweep.cleanup(self, before, dry_run)



def guess_id(body: memoryview) -> int:
    """The id a body that failed to decode carries, if that much of it reads."""
    try:
        return _id_decoder.decode(body).id
    except DECODE_ERRORS:
        return 0


def hello_event() -> Event:
    """The first event a watcher is sent: it is watching."""
    return Event(kind="watching", sid=None, at=now_us())


def no_stop() -> None:
    """Stands for ``request_stop`` until the server gives its own."""
    raise AssertionError("the server gives the dispatcher its request_stop")
