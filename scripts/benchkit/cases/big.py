"""The big data set (1M sessions in a full run): restart, memory per
session, journal size, and compaction under a probing client, ours and
Redis's on the same records.

Restarts and compactions cost seconds each at 1M, so their counts are the
profile's own (``restarts``, ``compactions``), not ``--rounds``."""

from __future__ import annotations

import multiprocessing
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from benchkit.cases.bigdata import load_redis, probe_window, write_journal
from benchkit.measure import Ctx
from benchkit.procs import REAPER
from benchkit.rows import Row
from benchkit.servers import RedisServer, Sessiond, start_both
from benchkit.settings import BIG_START_TIMEOUT, BenchError, log
from benchkit.stats import Summary, percentile
from benchkit.workers import WorkerPool
from sessiond.model import new_id


@dataclass
class _Compactions:
    """One side's compaction rounds, each under a probing client's gets."""

    seconds: list[float] = field(default_factory=list)
    worst: list[float] = field(default_factory=list)  # ms, the worst get of each round
    p99: list[float] = field(default_factory=list)
    worst_before: list[float] = field(default_factory=list)

    def add(self, before: list[float], during: list[float], seconds: float) -> None:
        self.seconds.append(seconds)
        self.worst.append(during[-1])
        self.p99.append(percentile(during, 0.99))
        self.worst_before.append(before[-1])


@dataclass
class _Restarts:
    ours: list[float] = field(default_factory=list)  # after compaction: snapshot + journal
    journal: list[float] = field(default_factory=list)  # from the journal alone
    redis: list[float] = field(default_factory=list)
    rss_full: int = 0
    rss_journal: int = 0
    redis_rss_per: float | None = None


def _load(sd: Sessiond, rd: RedisServer | None, n: int) -> tuple[int, int]:
    """Memory of both servers empty; then the journal written (by a child
    process) while Redis takes the same records. The servers are left stopped."""
    ids = [new_id() for _ in range(n)]
    start_both(sd, rd)
    rss_empty = sd.settled_rss(0.2)
    r_empty = rd.rss() if rd is not None else 0
    sd.stop()
    t = time.monotonic()
    writer = multiprocessing.get_context("fork").Process(
        target=write_journal, args=(sd.journal, ids), daemon=True
    )
    REAPER.workers.append(writer)
    writer.start()
    if rd is not None:
        load_redis(rd, ids)
        log(f"  loaded Redis by mass insertion in {time.monotonic() - t:.1f}s")
    writer.join(BIG_START_TIMEOUT)
    if writer.is_alive() or writer.exitcode != 0:
        raise BenchError(f"writing the journal failed (exit code {writer.exitcode})")
    REAPER.workers.remove(writer)
    log(f"  wrote a {n}-session journal with put_line in {time.monotonic() - t:.1f}s")
    return rss_empty, r_empty


def _compact(
    ctx: Ctx, sd: Sessiond, rd: RedisServer | None
) -> tuple[_Compactions, _Compactions]:
    """Compaction under a probing client, ours then Redis's BGREWRITEAOF, in rounds."""
    prof = ctx.prof
    ours, redis = _Compactions(), _Compactions()
    ours_probe = WorkerPool("ours", [str(sd.socket)], 1)
    redis_probe = ctx.redis_pool([rd.socket] if rd is not None else [], 1)
    with ours_probe, redis_probe if redis_probe is not None else nullcontext():
        for rnd in range(prof.compactions):
            log(f"  compaction round {rnd + 1}/{prof.compactions}")
            with sd.client(timeout=BIG_START_TIMEOUT) as c:
                before, during, _, result = probe_window(
                    ours_probe, c.compact, prof.probe_baseline
                )
            ours.add(before, during, result.seconds)  # type: ignore[attr-defined]
            if rd is not None and redis_probe is not None:
                before, during, seconds, _ = probe_window(
                    redis_probe, lambda: rd.rewrite_aof(BIG_START_TIMEOUT), prof.probe_baseline
                )
                redis.add(before, during, seconds)
    return ours, redis


def _restart(
    ctx: Ctx, sd: Sessiond, rd: RedisServer | None, r_empty: int, out: _Restarts
) -> None:
    """Restarts, interleaved: ours after its own compaction (snapshot, then the
    journal after it), ours from the journal alone (the snapshot set aside),
    Redis from its rewritten AOF. Memory is read after the first of each."""
    n = ctx.prof.big_n
    most = n + ctx.prof.compactions  # each probing client added a session of its own
    snap = sd.journal.with_suffix(".snap")
    aside = snap.with_name(snap.name + ".aside")
    rounds = ctx.prof.restarts + 1  # as many starts of each kind as there used to be in all
    for rnd in range(rounds):
        log(f"  restart round {rnd + 1}/{rounds}")
        out.ours.append(sd.start(BIG_START_TIMEOUT))
        if rnd == 0:
            out.rss_full = sd.settled_rss()
            with sd.client() as c:
                st = c.stats()
            if not n <= st.total_sessions <= most:
                raise BenchError(f"daemon loaded {st.total_sessions} sessions, expected {n}")
        sd.stop()
        snap.rename(aside)
        try:
            out.journal.append(sd.start(BIG_START_TIMEOUT))
            if rnd == 0:
                out.rss_journal = sd.settled_rss()
            sd.stop()
        finally:
            aside.rename(snap)
        if rd is not None:
            out.redis.append(rd.start(BIG_START_TIMEOUT))
            if rnd == 0:
                out.redis_rss_per = (rd.settled_rss() - r_empty) / n
                r = rd.client()
                try:
                    if not n <= r.dbsize() <= most:
                        raise BenchError(f"Redis reloaded {r.dbsize()} keys, expected {n}")
                finally:
                    r.close()
            rd.stop()


def _maybe(values: list[float]) -> Summary | None:
    return Summary.of(values) if values else None


def case_big(ctx: Ctx) -> None:
    prof = ctx.prof
    n = prof.big_n
    label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    if prof.restarts < 1:
        raise BenchError("the profile needs at least one restart (memory is read after it)")
    starts = _Restarts()
    with Sessiond(ctx.tmp / "big") as sd, ctx.fresh_redis("big-redis", "everysec") as rd:
        rss_empty, r_empty = _load(sd, rd, n)
        # The first start is on a journal alone (no snapshot: as an older
        # sessiond or another tool leaves one), so it counts with the starts
        # from the journal alone below.
        starts.journal.append(sd.start(BIG_START_TIMEOUT))
        with sd.client() as c:
            st = c.stats()
        if st.total_sessions != n:
            raise BenchError(f"daemon loaded {st.total_sessions} sessions, expected {n}")
        log(f"  first start on it: {starts.journal[0]:.2f}s")
        ours, redis = _compact(ctx, sd, rd)
        with sd.client() as c:
            # The lines: the file runs ahead of them by the space it reserves.
            journal_bytes = c.stats().journal_bytes
        snap = sd.journal.with_suffix(".snap")
        if not snap.is_file():
            raise BenchError(f"the compaction wrote no snapshot:\n{sd.log_tail()}")
        snap_bytes = snap.stat().st_size
        r_aof = rd.aof_bytes() if rd is not None else None
        sd.stop()
        if rd is not None:
            rd.stop()
        _restart(ctx, sd, rd, r_empty, starts)

    loaded = sd.log_path.read_text(errors="replace").count(" from snapshot data.snap ")
    if loaded != len(starts.ours):
        raise BenchError(f"{loaded} of {len(starts.ours)} restarts loaded the snapshot:\n"
                         f"{sd.log_tail()}")
    restart = Row(
        f"restart with {label} sessions", "s", Summary.of(starts.ours), _maybe(starts.redis),
        "redis, rewritten AOF", lower_is_better=True,
        note=f"exec until ping answers; {len(starts.ours)} starts after the daemon's "
        "own compaction (its snapshot, then the journal after it)"
        + (f", {len(starts.redis)} Redis restarts" if starts.redis else ""),
    )
    if n >= 1_000_000:
        restart.want_value(at_most=1.3)
    else:
        restart.target_shown = "<=1.30 s at 1M"
    ctx.add(restart)
    ctx.add(Row(
        f"start from the journal alone ({label})", "s", Summary.of(starts.journal),
        _maybe(starts.redis), "redis, rewritten AOF", lower_is_better=True,
        note=f"no snapshot beside the compacted journal; {len(starts.journal)} starts "
        "(the first on a journal written by put_line, the others with the snapshot set aside)",
    ))
    ctx.add(Row(
        f"memory per session ({label})", "B", Summary.one((starts.rss_full - rss_empty) / n),
        Summary.one(starts.redis_rss_per) if starts.redis_rss_per is not None else None,
        "redis", lower_is_better=True,
        note="(VmRSS after restart - VmRSS empty) / sessions; 2-entry meta; after a start "
        f"from the journal alone: {(starts.rss_journal - rss_empty) / n:.0f} B",
    ).want_value(at_most=480))
    ctx.add(Row(
        f"journal size ({label})", "B", Summary.one(journal_bytes / n),
        Summary.one(r_aof / n) if r_aof is not None else None, "redis AOF",
        lower_is_better=True,
        note=f"bytes per session after compaction; ours {journal_bytes / 2**20:.0f} MiB in all, "
        f"and a snapshot beside it of {snap_bytes / n:.0f} B a session",
    ))
    ctx.add(Row(
        f"compaction of {label} sessions", "s", Summary.of(ours.seconds),
        _maybe(redis.seconds), "redis BGREWRITEAOF", lower_is_better=True,
        note="Client.compact(); the daemon's own figure",
    ))
    ctx.add(Row(
        f"worst get during compaction ({label})", "ms", Summary.of(ours.worst),
        _maybe(redis.worst), "redis during BGREWRITEAOF", lower_is_better=True,
        note=f"a separate client doing gets; the worst of each round; worst in the "
        f"{prof.probe_baseline:g} s before: {max(ours.worst_before):.1f} ms",
    ).want_value(at_most=50))
    ctx.add(Row(
        f"p99 get during compaction ({label})", "ms", Summary.of(ours.p99),
        _maybe(redis.p99), "redis during BGREWRITEAOF", lower_is_better=True,
    ))
