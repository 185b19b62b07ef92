"""Shared mode (``sessiond --backend``): the daemon on a Redis of the case's
own, against redis-py doing the same logical operation directly on the same
engine, in the same run, in interleaved rounds.

"The same logical operation" is what a user who keeps one hash per session
on their own would do for the same effect (the direct layout,
``direct_fields``: the fields the daemon keeps, each meta entry a field of
its own, under a key prefix as long as the daemon's):

- get: HGETALL. Ours also expires a session found past its deadline.
- set: HSET of one meta field. Ours also checks and bumps the version and
  adds the change to the namespace's event stream, in one script.
- create: HSET + EXPIRE, one at a time in MULTI/EXEC (atomic, as ours is),
  a hundred at a time in a pipeline(transaction=False). Ours also enters
  the session in the creation order, the deadline index, the user counts
  and the event stream.

Memory: ``INFO memory``'s used_memory grown per session on a fresh engine,
ours created through the daemon, the direct layout written by redis-py in a
database of its own on the same engine.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from itertools import cycle
from typing import Any

from benchkit.anchor import redis_pipe
from benchkit.measure import Ctx, InProcess, interleave_blocks, settled
from benchkit.rows import Row
from benchkit.servers import RedisServer, Sessiond
from benchkit.settings import DEPTH, META, TTL, USER, BenchError, Skip, log
from benchkit.stats import Summary
from sessionctl import Client, Pipeline
from sessiond.model import US, new_id, now_us

NAMESPACE = "bench"
OURS_PREFIX = "sd:{" + NAMESPACE + "}:s:"
# The direct layout's keys, as long as ours: the key costs both the same.
DIRECT_PREFIX = "bench:direct:"
assert len(DIRECT_PREFIX) == len(OURS_PREFIX)
# Sessions each side's get and set cycle over.
WORKING_SET = 2000
# Sessions a round trip while filling the engine for the memory row.
FILL_DEPTH = 1000
# The database the memory row's direct hashes go to (the daemon's is 0).
DIRECT_DB = 1
# The daemon's default event_retention: events its stream keeps.
EVENT_RETENTION = 100_000


def missing() -> str | None:
    """Why the case cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return ("redis-server is not on PATH (apt-get install redis-server): shared mode "
                "needs an engine to run on")
    if importlib.util.find_spec("redis") is None:
        return ("redis-py is not installed (pip install -e '.[shared,bench]'): the daemon's "
                "shared mode and the direct side both need it")
    return None


def direct_fields(now: int) -> dict[str, str | int]:
    """A session as the direct user keeps it: the daemon's fields (user,
    ttl, created, last access, expires, version), each meta entry a field."""
    fields: dict[str, str | int] = {
        "u": USER, "t": TTL, "c": now, "a": now, "e": now + TTL * US, "v": 1,
    }
    for k, v in META.items():
        fields["m." + k] = v
    return fields


def direct_queue_create(p: Any, now: int) -> str:
    """Queue HSET + EXPIRE of a new session on a redis-py pipeline; its key."""
    key = DIRECT_PREFIX + new_id()
    p.hset(key, mapping=direct_fields(now))
    p.expire(key, TTL)
    return key


def direct_create(r: Any) -> str:
    """HSET + EXPIRE in MULTI/EXEC: one round trip, all or nothing, as ours."""
    p = r.pipeline(transaction=True)
    key = direct_queue_create(p, now_us())
    p.execute()
    return key


def direct_fill(r: Any, n: int, depth: int = FILL_DEPTH) -> list[str]:
    """``n`` sessions in the direct layout, ``depth`` a round trip."""
    keys: list[str] = []
    while len(keys) < n:
        p = r.pipeline(transaction=False)
        now = now_us()
        keys += [direct_queue_create(p, now) for _ in range(min(depth, n - len(keys)))]
        p.execute()
    return keys


def ours_fill(c: Client, n: int, depth: int = FILL_DEPTH, every: int = 0) -> list[str]:
    """``n`` sessions created through the daemon, ``depth`` a round trip
    (logging progress each ``every``)."""
    ids: list[str] = []
    t0 = time.monotonic()
    while len(ids) < n:
        want = min(depth, n - len(ids))
        with c.pipeline() as p:
            pend = [p.create(user=USER, ttl=TTL, meta=META) for _ in range(want)]
        ids += [settled(x).id for x in pend]
        if every and len(ids) % every < depth:
            log(f"  {len(ids)} sessions through the daemon, "
                f"{len(ids) / (time.monotonic() - t0):.0f}/s")
    return ids


def used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def settled_memory(r: Any, most: float = 10.0) -> int:
    """used_memory once the engine has finished growing its key tables (it
    rehashes a grown table a step at a time, holding both meanwhile): two
    readings 0.2 s apart within 64 KiB (clients' buffers come and go), or
    the last after ``most`` seconds."""
    last = used_memory(r)
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = used_memory(r)
        if abs(now - last) <= 64 * 1024:
            return now
        last = now
    return last


def _one(call: Callable[[], object]) -> Callable[[], int]:
    def run() -> int:
        call()
        return 1
    return run


def _duels(c: Client, r: Any) -> dict[str, InProcess]:
    ours_ids: Iterator[str] = cycle(ours_fill(c, WORKING_SET))
    direct_keys: Iterator[str] = cycle(direct_fill(r, WORKING_SET))

    def ours_pipe(queue: Callable[[Pipeline[Any]], object], ack: bool = False) -> Callable[[], int]:
        def run() -> int:
            with c.pipeline(returning="ack" if ack else "session") as p:
                pend = [queue(p) for _ in range(DEPTH)]
            for x in pend:
                settled(x)
            return DEPTH
        return run

    def direct_pipe(queue: Callable[[Any, int], object]) -> Callable[[], int]:
        return redis_pipe(r, queue)

    return {
        "sequential get": (_one(lambda: c.get(next(ours_ids))),
                           _one(lambda: r.hgetall(next(direct_keys)))),
        "sequential set": (_one(lambda: c.set(next(ours_ids), "theme", "light", returning="ack")),
                           _one(lambda: r.hset(next(direct_keys), "m.theme", "light"))),
        "sequential create": (_one(lambda: c.create(user=USER, ttl=TTL, meta=META)),
                              _one(lambda: direct_create(r))),
        "pipelined get": (ours_pipe(lambda p: p.get(next(ours_ids))),
                          direct_pipe(lambda p, now: p.hgetall(next(direct_keys)))),
        "pipelined set": (ours_pipe(lambda p: p.set(next(ours_ids), "theme", "light"), ack=True),
                          direct_pipe(lambda p, now: p.hset(next(direct_keys), "m.theme",
                                                           "light"))),
        "pipelined create": (ours_pipe(lambda p: p.create(user=USER, ttl=TTL, meta=META)),
                             direct_pipe(direct_queue_create)),
    }


# Row of each duel: label, the direct side's label, target (ours / direct
# at least), note.
_ROWS: dict[str, tuple[str, str, float, str]] = {
    "sequential get": (
        "shared sequential get", "direct: HGETALL", 0.5,
        "ours: client -> daemon -> engine (TIME + HGETALL in one round trip) and back; "
        "direct: redis-py HGETALL"),
    "sequential set": (
        "shared sequential set (ack)", "direct: HSET", 0.5,
        "ours reads the record, then one script checks and bumps its version, writes it "
        "and adds an event to the stream, and answers an ack (id, version, deadline); "
        "direct: HSET of the meta field alone, an integer reply"),
    "sequential create": (
        "shared sequential create", "direct: MULTI HSET EXPIRE", 0.5,
        "ours: one script writes the hash and enters it in the order, deadline and user "
        "indexes and the event stream; direct: HSET + EXPIRE in MULTI/EXEC (one round trip, "
        "atomic as ours)"),
    "pipelined get": (
        f"shared pipelined x{DEPTH} get", "direct pipeline: HGETALL", 0.8,
        "ours: one round trip to the engine for the whole batch"),
    "pipelined set": (
        f"shared pipelined x{DEPTH} set (ack)", "direct pipeline: HSET", 0.8,
        "ours answers each set with an ack (id, version, deadline), after a version check "
        "and an event each; direct: HSET of the meta field, an integer reply"),
    "pipelined create": (
        f"shared pipelined x{DEPTH} create", "direct pipeline: HSET+EXPIRE", 0.8,
        "direct: HSET + EXPIRE in a pipeline(transaction=False), not atomic per session"),
}


def _speed(ctx: Ctx, c: Client, r: Any) -> None:
    res = interleave_blocks(ctx, _duels(c, r))
    for key, (label, anchor_label, at_least, note) in _ROWS.items():
        ours, direct = res[key]
        ctx.add(Row(label, "op/s", ours, direct, anchor_label, note=note)
                .want_ratio(at_least=at_least))


def _memory_usage(r: Any, key: str | bytes) -> int | None:
    # SAMPLES 0: every element counted, not an estimate from five.
    used = r.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
    return None if used is None else int(used)


def _breakdown(r: Any, ours_ids: list[str], total: int) -> str:
    """Where ours goes, in bytes a session: a session's hash (the mean of a
    sample), and each other key of the namespace (its indexes, counters,
    event stream) over every session in it, found by SCAN so that a change
    of the engine's layout is shown rather than missed."""
    sample = ours_ids[:: max(len(ours_ids) // 100, 1)]
    sizes = [_memory_usage(r, OURS_PREFIX + sid) for sid in sample]
    if None in sizes:
        raise BenchError(f"the daemon's sessions are not at {OURS_PREFIX}<id> (the engine's "
                         "key layout changed): update the bench's OURS_PREFIX")
    parts = [f"a session's hash {sum(s or 0 for s in sizes) / len(sample):.0f}"]
    tag = "sd:{" + NAMESPACE + "}:"
    # Keys of one kind in many (the creation order's buckets, o:<n>) are
    # added up under their kind's name.
    kinds: dict[str, int] = {}
    for key in r.scan_iter(match=tag + "*", count=10_000):
        name = key.decode()
        if name.startswith(OURS_PREFIX):
            continue
        kind = name.removeprefix(tag)
        kind = "o:*" if kind.startswith("o:") else kind
        kinds[kind] = kinds.get(kind, 0) + (_memory_usage(r, key) or 0)
    for kind, used in sorted(kinds.items()):
        if used / total >= 0.5:
            parts.append(f"{kind} {used / total:.0f}")
    return ", ".join(parts)


def _memory(ctx: Ctx, c: Client, r: Any, direct_db: Any) -> None:
    n = ctx.prof.big_n
    label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    base = settled_memory(r)
    t0 = time.monotonic()
    ours_ids = ours_fill(c, n, every=max(n // 10, FILL_DEPTH))
    ours_seconds = time.monotonic() - t0
    mid = settled_memory(r)
    t0 = time.monotonic()
    direct_fill(direct_db, n)
    direct_seconds = time.monotonic() - t0
    end = settled_memory(r)
    ours, direct = (mid - base) / n, (end - mid) / n
    log(f"  filled {n} sessions: ours {ours_seconds:.1f}s, direct {direct_seconds:.1f}s")
    # The namespace holds the speed rows' sessions too.
    total = c.stats().total_sessions
    if total < n:
        raise BenchError(f"the namespace holds {total} sessions, fewer than the {n} created")
    few = (f"; --quick: {n} sessions, so the event stream holds an event for every one "
           f"(it keeps {EVENT_RETENTION}), which it does not at 1M"
           if n <= EVENT_RETENTION else "")
    row = Row(
        f"shared memory per session ({label})", "B", Summary.one(ours), Summary.one(direct),
        "direct: hash + EXPIRE", lower_is_better=True,
        note=f"INFO memory used_memory grown / sessions; ours created through the daemon "
        f"({FILL_DEPTH} pipelined creates a round trip, {n / ours_seconds:.0f}/s) on an "
        f"engine of their own, direct the same fields as a plain hash per session with EXPIRE "
        f"in database {DIRECT_DB} of it ({n / direct_seconds:.0f}/s); "
        f"ours in B a session: {_breakdown(r, ours_ids, total)}{few}",
    )
    # The target is the issue's, at 1M (as the big case's): fewer sessions
    # share the stream's fixed retention among fewer, and say less.
    if n >= 1_000_000:
        row.want_ratio(at_most=2.0)
    else:
        row.target_shown = "<=2x at 1M"
    ctx.add(row)


@contextmanager
def _engine(ctx: Ctx, name: str) -> Iterator[tuple[Client, RedisServer]]:
    """A fresh engine of the case's own and a shared daemon on it."""
    with RedisServer(ctx.tmp / f"{name}-redis", "everysec") as rd:
        rd.start()
        with Sessiond(ctx.tmp / name, backend=f"unix://{rd.socket}",
                      namespace=NAMESPACE) as sd:
            sd.start()
            with sd.client() as c:
                backend = c.stats().backend
                if backend is None or NAMESPACE not in backend:
                    raise BenchError(f"{sd.name} is not on the case's engine: its stats "
                                     f"say backend {backend!r}")
                yield c, rd


def case_shared(ctx: Ctx) -> None:
    """A shared daemon and redis-py direct on one engine of the case's own:
    the speed rows on one, the memory row on a fresh one (whose key table
    holds nothing of the speed rows)."""
    why = missing()
    if why is not None:
        raise Skip(why)
    if not ctx.redis_ok:
        raise Skip("--no-redis leaves out every Redis, and shared mode runs on one")
    with _engine(ctx, "shared") as (c, rd), closing(rd.client()) as r:
        _speed(ctx, c, r)
    # The direct hashes go to a database of their own: each side's keys in a
    # key table of its own, grown from empty alike (a table doubles at powers
    # of two: in one table, the side that crossed one would pay for both).
    with (_engine(ctx, "shared-memory") as (c, rd), closing(rd.client()) as r,
          closing(rd.client(db=DIRECT_DB)) as direct):
        _memory(ctx, c, r, direct)
