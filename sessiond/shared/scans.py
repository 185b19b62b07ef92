"""The shared engine's operations on many sessions: a page of the list,
cleanup, an import page, and the namespace's settings.

Each is a loop of the rules' per-session steps over records read from the
engine a chunk at a time (as the local store's are loops over its own),
committed back with the same compare and set as any request: a record
another daemon changed meanwhile is read again and judged again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sessiond import config, rules
from sessiond.errors import (
    ConfigError,
    InternalError,
    InvalidRequest,
    ReadOnly,
    SessionError,
    TooLarge,
    Unsupported,
    damaged_words,
)
from sessiond.live import Live, rules_of
from sessiond.model import PURGED, Change, Record
from sessiond.protocol import (
    DAMAGED_SAID,
    Cleanup,
    CleanupReply,
    CleanupResult,
    ConfigReply,
    ConfigSet,
    ErrorReply,
    Import,
    ImportReply,
    ImportResult,
    List,
    Page,
    Peer,
    Response,
)
from sessiond.rules import Rules
from sessiond.shared.engine import SCAN_MOST, Aside, Damaged, SharedStore
from sessiond.shared.view import View
from sessiond.store import PAGE_MAX_BYTES, RECORD_OVERHEAD_BYTES

log = logging.getLogger("sessiond.shared")

# Keys the engine's own settings stand for in shared mode: refused, naming them.
ENGINE_OWNED = {
    "fsync": "appendfsync (and appendonly)",
    "compact_growth_percent": "auto-aof-rewrite-percentage",
    "compact_min_bytes": "auto-aof-rewrite-min-size",
    "compact_interval": "auto-aof-rewrite-percentage and auto-aof-rewrite-min-size",
}


# Sessions held damaged that one request passed over, named one by one in
# the log; the rest are counted.
SAY_MOST = 10
# How many of them a daemon remembers having named (each is named once):
# past that, one not remembered is named again when a request meets it.
SAID_MOST = 100_000


class Passed:
    """Sessions the engine holds damaged (changed outside sessiond) that
    lists, cleanups and imports went on past: each named in the log once,
    however many requests meet it."""

    def __init__(self) -> None:
        self._said: set[str | bytes] = set()

    def say(self, damaged: Iterable[Aside], by: str) -> None:
        """Name in the log those of ``damaged`` (ids and what is wrong)
        not named yet; ``by``: the request that passed over them."""
        new = [(sid, why) for sid, why in dict(damaged).items() if sid not in self._said]
        for _, why in new[:SAY_MOST]:
            log.error("%s; %s passed over it, as lists, cleanups and imports do (and exports "
                      "are refused) until it is repaired or deleted", why, by)
        if len(new) > SAY_MOST:
            log.error("%s passed over %d more sessions the engine holds damaged",
                      by, len(new) - SAY_MOST)
        room = max(0, SAID_MOST - len(self._said))
        self._said.update(sid for sid, _ in new[:room])


def for_peer(reply: Response, peer: Peer) -> Response:
    """``reply`` as ``peer``'s connection may have it: one of a version
    before ``DAMAGED_SAID`` would not see what a page or a cleanup passed
    over, and has it refused, naming the first, as it was before."""
    if peer.version >= DAMAGED_SAID:
        return reply
    if isinstance(reply, Page) and reply.damaged:
        exc = InternalError(damaged_words(reply.damaged))
    elif isinstance(reply, CleanupReply) and reply.result.damaged:
        r = reply.result
        exc = InternalError(
            f"cleanup passed over sessions the engine holds damaged, whether due or not: "
            f"{damaged_words(r.damaged)}; {r.removed_count} other session"
            f"{'' if r.removed_count == 1 else 's'} "
            f"{'would be removed' if r.dry_run else 'removed'}"
        )
    else:
        return reply
    return ErrorReply(id=reply.id, code=exc.code, message=str(exc))


async def commit_each(
    store: SharedStore, groups: list[list[Change]], now: int
) -> list[bool]:
    """Commit changes of one record each; which were applied."""
    return await store.commit(groups, now) if groups else []


def each_alone(
    settings: Rules,
    records: Iterable[Record],
    step: Callable[[View, Record, int, list[Change]], object],
    now: int,
) -> list[list[Change]]:
    """The changes ``step`` (a rule on one record: ``rules.lazy_expire``,
    ``rules.cap_record``) makes to each record judged alone, one group per
    record it changed: what ``commit_each`` takes."""
    groups: list[list[Change]] = []
    for record in records:
        made: list[Change] = []
        step(View.of(settings, [record]), record, now, made)
        if made:
            groups.append(made)
    return groups


def purges(settings: Rules, records: Iterable[Record]) -> list[list[Change]]:
    """The changes that remove each of ``records``, one group each."""
    groups: list[list[Change]] = []
    for record in records:
        made: list[Change] = []
        View.of(settings, [record]).put(made, PURGED, record, None)
        groups.append(made)
    return groups


def _cursor(text: str | None) -> int:
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InvalidRequest(f"invalid list cursor {text!r}")
    return int(text)


async def list_page(
    store: SharedStore, settings: Rules, req: List, passed: Passed
) -> Response:
    """As ``Store.list_page``: up to ``limit`` sessions after the cursor, in
    creation order, within ``PAGE_MAX_BYTES``; a past-due one expired. One
    the engine holds damaged is passed over and named in ``damaged``."""
    after = _cursor(req.cursor)
    given = after > 0
    page: list[Record] = []
    damaged: list[Damaged] = []
    size = 0
    cursor: str | None = None
    while True:
        want = req.limit - len(page)
        now, last, more, entries = await store.page(after, want, req.user, cursor=given)
        given = False
        changes: list[list[Change]] = []
        for entry in entries:
            if len(page) >= req.limit or size >= PAGE_MAX_BYTES:
                more = True
                break
            if isinstance(entry, Damaged):
                # Its words count as a record's bytes do: a namespace of
                # damaged keys is named a page at a time.
                damaged.append(entry)
                size += len(entry.why) + RECORD_OVERHEAD_BYTES
                last = entry.seq
                continue
            made: list[Change] = []
            record = rules.lazy_expire(View.of(settings, [entry]), entry, now, made)
            if made:
                changes.append(made)
            if req.status is None or record.status == req.status:
                page.append(record)
                size += len(record.meta_json) + RECORD_OVERHEAD_BYTES
            last = record.seq
        # An expiry another daemon raced is no reason to fail a read: the
        # record is expired either way. Nor is an engine that refuses
        # writes: the page shows them expired all the same (as a ``get``
        # does), and the lease holder expires them once it takes writes.
        try:
            await commit_each(store, changes, now)
        except ReadOnly:
            pass
        after = last
        if not more:
            break
        if len(page) >= req.limit or size >= PAGE_MAX_BYTES:
            cursor = str(last)
            break
    passed.say([(d.sid, d.why) for d in damaged], "a list")
    return Page(id=req.id, sessions=[r.to_session() for r in page], cursor=cursor,
                damaged=[d.why for d in damaged])


def _split(entries: list[Record | Damaged], damaged: list[Damaged]) -> list[Record]:
    """The records among a page's ``entries``; the others added to ``damaged``."""
    records: list[Record] = []
    for entry in entries:
        if isinstance(entry, Damaged):
            damaged.append(entry)
        else:
            records.append(entry)
    return records


async def cleanup(
    store: SharedStore, settings: Rules, req: Cleanup, passed: Passed
) -> Response:
    """As ``Store.cleanup``, a chunk of the namespace at a time. A session
    the engine holds damaged is passed over (whether it was due cannot be
    told) and named in ``damaged``."""
    before = req.before
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise InvalidRequest(f"before must be a timestamp in microseconds, not {before!r}")
    removed: list[str] = []
    damaged: list[Damaged] = []
    after = 0
    while True:
        now, last, more, entries = await store.page(after, SCAN_MOST, None)
        doomed = [r for r in _split(entries, damaged) if rules.doomed(r, now, before)]
        if not req.dry_run:
            doomed = await _purge(store, settings, doomed, now, before, damaged)
        removed += [r.id for r in doomed]
        if not more:
            break
        after = last
    passed.say([(d.sid, d.why) for d in damaged], "a cleanup")
    _, counters, _, _ = await store.stats()
    total = counters.get("total", 0)
    result = CleanupResult(
        dry_run=req.dry_run, removed_count=len(removed),
        remaining_count=total - (len(removed) if req.dry_run else 0), removed_ids=removed,
        damaged=[d.why for d in damaged],
    )
    return CleanupReply(id=req.id, result=result)


async def _purge(
    store: SharedStore, settings: Rules, doomed: list[Record], now: int, before: int | None,
    damaged: list[Damaged],
) -> list[Record]:
    """Remove ``doomed``; those changed meanwhile are read again and removed
    if they still are (one changed outside sessiond meanwhile is added to
    ``damaged``). Returns those removed."""
    removed: list[Record] = []
    for _ in range(3):
        if not doomed:
            break
        applied = await commit_each(store, purges(settings, doomed), now)
        removed += [r for r, ok in zip(doomed, applied, strict=True) if ok]
        missed = {r.id: r.seq for r, ok in zip(doomed, applied, strict=True) if not ok}
        if not missed:
            break
        held: dict[str, str] = {}
        now, fresh = await store.fetch(list(missed), held)
        damaged += [Damaged(missed[sid], sid, why) for sid, why in held.items()]
        doomed = [r for r in fresh.values() if r is not None and rules.doomed(r, now, before)]
    return removed


async def import_page(
    store: SharedStore, settings: Rules, req: Import, passed: Passed
) -> Response:
    """As ``Store.import_sessions``: each record admitted by the rules on
    what the engine holds of its id, and committed alone. An id whose
    session the engine holds damaged is skipped, saying why, and the rest
    imported."""
    tally = rules.Imported()
    pending = list(req.sessions)
    damaged: list[Aside] = []
    for _ in range(3):
        if not pending:
            break
        held: dict[str, str] = {}
        now, records = await store.fetch(list({s.id: None for s in pending}), held)
        damaged += held.items()
        v = View.of(settings, [r for r in records.values() if r is not None])
        groups: list[list[Change]] = []
        outcomes: list[tuple[str, str, bool]] = []
        for session in pending:
            if session.id in held:
                tally.refuse(session.id, InternalError(held[session.id]))
                continue
            made: list[Change] = []
            try:
                outcome, late = rules.admit(v, now, session, made)
            except (InvalidRequest, TooLarge) as exc:
                tally.refuse(session.id, exc)
                continue
            if made:
                groups.append(made)
                outcomes.append((session.id, outcome, late))
            else:
                tally.count(session.id, outcome, late)
        applied = await commit_each(store, groups, now)
        retry = {sid for (sid, _, _), ok in zip(outcomes, applied, strict=True) if not ok}
        for (sid, outcome, late), ok in zip(outcomes, applied, strict=True):
            if ok:
                tally.count(sid, outcome, late)
        pending = [s for s in pending if s.id in retry]
    for session in pending:
        tally.refuse(session.id, InvalidRequest("changed by another daemon while importing"))
    passed.say(damaged, "an import")
    result = ImportResult(
        imported=tally.imported, updated=tally.updated, skipped=tally.skipped,
        reasons=tally.reasons, already_expired=tally.already_expired,
    )
    return ImportReply(id=req.id, result=result)


# -- the namespace's settings ----------------------------------------------


async def namespace_layers(
    store: SharedStore, layers: config.Layers
) -> tuple[config.Layers, list[str]]:
    """``layers`` with the namespace's settings (from the engine) in the
    place of the config file's, and the keys among them this sessiond
    does not know (a newer sessiond's, or written by hand), which it
    leaves out: one daemon of an older release must run, and restart,
    among newer ones. Raises ``ConfigError`` naming a bad value."""
    stored = await store.settings()
    unknown = sorted(set(stored) - set(config.KEYS))
    values: dict[str, Any] = {}
    for key, text in stored.items():
        if key in unknown:
            continue
        try:
            values[key] = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"the namespace's setting {key} is not JSON: {exc}") from exc
    try:
        config.validate(values)
    except ConfigError as exc:
        raise ConfigError(f"the namespace's settings in the engine: {exc}") from exc
    return layers.with_namespace(values), unknown


async def config_set(
    store: SharedStore,
    live: Live,
    req: ConfigSet,
    adopt: Callable[[config.Layers], Awaitable[None]],
) -> Response:
    """A setting of the namespace changed: in force on every daemon of it
    within a second (each reads it on the change's event)."""
    async with live.lock:
        # A bad key or value is told as in local mode, before anything else.
        new = live.layers.with_key(req.key, req.value)
        value = getattr(new.settings, req.key)
        owned = ENGINE_OWNED.get(req.key)
        if owned is not None:
            raise Unsupported(
                f"{req.key} is not a setting of sessiond in shared mode: the shared engine "
                f"persists the sessions, by its own {owned}; set that on the server"
            )
        now = await store.time()
        # The replicas setting lowered is held to its new count: the way
        # on when replicas are gone (a change acknowledged under the
        # setting before it would fail as of unknown outcome), and losing
        # it in a failover leaves the stricter count in force.
        lowered = (min(value, live.settings.replicas) if req.key == "replicas" else None)
        await store.set_setting(req.key, json.dumps(value).encode(), now, replicas=lowered)
        await adopt(new)
        cap = new.settings.max_lifetime
        if req.key == "max_lifetime" and cap:
            # Every time it is set, not only when lowered: the scan is
            # idempotent, and it is how a scan that failed (a damaged hash,
            # the engine away) is finished once the cause is gone.
            await _cap_existing(store, rules_of(new.settings), cap)
    return ConfigReply(
        id=req.id, config={req.key: value}, sources={req.key: new.source(req.key)}
    )


async def _cap_existing(store: SharedStore, settings: Rules, cap: int) -> None:
    """``cap_all`` after ``max_lifetime`` was stored: a scan that fails
    raises its error again, saying that the setting is in force all the same
    and how to finish."""
    try:
        await cap_all(store, settings)
    except SessionError as exc:
        raise type(exc)(
            f"max_lifetime {cap} is in force, but the existing sessions were not all "
            f"brought within it yet: {exc}; once that is fixed, run the command again "
            f"to finish"
        ) from exc


async def cap_all(store: SharedStore, settings: Rules) -> None:
    """Bring every session within a lowered ``max_lifetime``
    (``rules.cap_record``), going over those another daemon changed
    meanwhile again (they may still be over it). Raises ``InternalError``
    naming the sessions the engine holds damaged, once the others are."""
    damaged: list[Damaged] = []
    for _ in range(3):
        after = 0
        raced = False
        damaged = []
        while True:
            now, last, more, entries = await store.page(after, SCAN_MOST, None)
            groups = each_alone(settings, _split(entries, damaged), rules.cap_record, now)
            raced |= not all(await commit_each(store, groups, now))
            if not more:
                break
            after = last
        if not raced:
            break
    if damaged:
        raise InternalError(damaged_words([d.why for d in damaged]))
