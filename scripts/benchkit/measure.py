"""How a case measures: the context a case runs in, and interleaved rounds.

Every comparison runs as rounds of (ours, anchor) in turn, each side doing
a fixed amount of work a round, so that both meet the same machine weather
(see stats.py); a case hands ``interleave`` one pair of measuring functions
per row and gets back each side's Summary over the rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchkit.rows import Row, fmt_summary
from benchkit.sched import read_sched
from benchkit.servers import RedisServer, Sessiond, maybe_redis
from benchkit.settings import META, TTL, USER, BenchError, Profile, log
from benchkit.stats import Summary
from benchkit.workers import WorkerPool
from sessionctl import Client, Pending

Measure = Callable[[], float]  # one round of one side: a figure
Duel = tuple[Measure, Measure | None]  # ours, anchor (None: no anchor in this run)
Sides = tuple[Summary, Summary | None]
K = TypeVar("K", bound=Hashable)


@dataclass
class Ctx:
    """What a case gets: the profile, a temporary directory, the long-lived
    servers, and where its rows go."""

    prof: Profile
    tmp: Path
    rows: list[Row]
    redis_ok: bool
    main: Sessiond
    redis_es: RedisServer | None
    redis_al: RedisServer | None

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = f"ours {fmt_summary(row.ours, row.unit, True)}"
        if row.anchor is not None:
            shown += f", anchor {fmt_summary(row.anchor, row.unit, True)}"
        if row.ratio is not None:
            shown += f", ratio {fmt_summary(row.ratio, 'x', True)}"
        log(f"  {row.case}: {shown}{'  ' + row.result if row.target else ''}")
        return row

    def fresh_redis(
        self, name: str, appendfsync: str
    ) -> AbstractContextManager[RedisServer | None]:
        """A Redis of the case's own (None in the ``with`` when the anchors do not run)."""
        return maybe_redis(self.tmp, self.redis_ok, name, appendfsync)

    @contextmanager
    def redis_client(self) -> Iterator[Any]:
        """A redis-py client of the long-lived everysec Redis, or None."""
        if self.redis_es is None:
            yield None
            return
        r = self.redis_es.client()
        try:
            yield r
        finally:
            r.close()

    def redis_pool(self, sockets: list[Path], procs: int, threads: int = 1) -> WorkerPool | None:
        """A pool of Redis clients, or None when the anchors do not run."""
        if not self.redis_ok or not sockets:
            return None
        return WorkerPool("redis", [str(s) for s in sockets], procs, threads)


def interleave(rounds: int, duels: Mapping[K, Duel], what: str = "") -> dict[K, Sides]:
    """Each duel's two sides over ``rounds`` rounds: every round runs every
    duel, ours then its anchor, in the table's order."""
    samples: dict[K, tuple[list[float], list[float]]] = {k: ([], []) for k in duels}
    for rnd in range(rounds):
        if what:
            log(f"  {what}: round {rnd + 1}/{rounds}")
        for name, (ours, anchor) in duels.items():
            samples[name][0].append(ours())
            if anchor is not None:
                samples[name][1].append(anchor())
    return {k: (Summary.of(o), Summary.of(a) if a else None) for k, (o, a) in samples.items()}


def rate(op: Callable[[], int], seconds: float) -> float:
    """Units per second of ``op`` (which returns the units it did) over a block."""
    done = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        done += op()
        now = time.perf_counter()
        if now >= end:
            return done / (now - t0)


InProcess = tuple[Callable[[], int], Callable[[], int] | None]


def interleave_blocks(ctx: Ctx, duels: dict[str, InProcess]) -> dict[str, Sides]:
    """In-process request loops: rates of timed blocks, after a warm-up
    (first calls, caches) that is not counted."""
    block = ctx.prof.block
    for ours, anchor in duels.values():
        rate(ours, block / 4)
        if anchor is not None:
            rate(anchor, block / 4)

    def timed(op: Callable[[], int]) -> Measure:
        return lambda: rate(op, block)

    return interleave(ctx.prof.rounds, {
        k: (timed(ours), timed(anchor) if anchor is not None else None)
        for k, (ours, anchor) in duels.items()
    })


def pool_rate(pool: WorkerPool, op: str, seconds: float, procs: int, target: int) -> float:
    """Aggregate requests a second of ``procs`` workers in one window."""
    return sum(x.rate for x in pool.run(op, seconds, procs=procs, target=target))


def pool_duel(
    ours: WorkerPool, anchor: WorkerPool | None, op: str, seconds: float, procs: int,
    targets: tuple[int, int | None] = (0, 0),
) -> Duel:
    """Windows of ``procs`` workers doing ``op``: ours against server
    ``targets[0]`` of its pool, the anchor against ``targets[1]`` of its own
    (None: no anchor for this row)."""
    ours_target, anchor_target = targets

    def ours_side() -> float:
        return pool_rate(ours, op, seconds, procs, ours_target)

    if anchor is None or anchor_target is None:
        return ours_side, None
    return ours_side, lambda: pool_rate(anchor, op, seconds, procs, anchor_target)


@dataclass
class PerRequest:
    """A server's scheduler counts a request, round by round (see sched.py)."""

    migrations: list[float] = field(default_factory=list)
    preempted: list[float] = field(default_factory=list)


def watched_rate(
    pool: WorkerPool, op: str, seconds: float, procs: int, target: int, pid: int,
    per: PerRequest,
) -> Measure:
    """``pool_rate``, reading the scheduler counts of the server process
    ``pid`` before and after each window (outside it) into ``per``; where
    the kernel keeps none, ``per`` stays empty."""

    def run() -> float:
        before = read_sched(pid)
        results = pool.run(op, seconds, procs=procs, target=target)
        after = read_sched(pid)
        ops = sum(r.ops for r in results)
        if before is not None and after is not None and ops:
            moved = after - before
            per.migrations.append(moved.migrations / ops)
            per.preempted.append(moved.preempted / ops)
        return sum(r.rate for r in results)

    return run


def settled(pending: object) -> Any:
    """The answer to a pipelined request (the pipeline's methods are annotated
    with the value's type, but hand back a ``Pending``)."""
    if not isinstance(pending, Pending):
        raise BenchError(f"a pipelined call returned {type(pending).__name__}, not Pending")
    return pending.result()


def bulk_create_ours(c: Client, n: int, ttl: int = TTL) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        with c.pipeline() as p:
            pend = [p.create(user=USER, ttl=ttl, meta=META) for _ in range(min(500, n - len(ids)))]
        ids.extend(settled(x).id for x in pend)
    return ids
