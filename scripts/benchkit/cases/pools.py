"""Many clients at once, each its own process and connection: aggregate
write throughput, throughput under each fsync policy (group commit), and
latency percentiles from 1 to 256 concurrent clients."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from benchkit.measure import (
    Ctx,
    Duel,
    Measure,
    PerRequest,
    interleave,
    pool_duel,
    watched_rate,
)
from benchkit.rows import Row, fmt_summary
from benchkit.servers import Sessiond
from benchkit.stats import Summary, percentile, ratio
from benchkit.workers import WorkerPool, latencies


def _anchor_sockets(ctx: Ctx) -> list[Path]:
    return [ctx.redis_es.socket] if ctx.redis_es else []


def case_concurrent(ctx: Ctx) -> None:
    """8 and 16 client processes, each its own connection, creating and setting."""
    ours = WorkerPool("ours", [str(ctx.main.socket)], 16)
    anchor = ctx.redis_pool(_anchor_sockets(ctx), 16)
    with ours, anchor if anchor is not None else nullcontext():
        res = interleave(ctx.prof.rounds, {
            n: pool_duel(ours, anchor, "write", ctx.prof.window, n) for n in (8, 16)
        }, "write")
    for n, (ours_s, anchor_s) in res.items():
        ctx.add(Row(
            f"{n} client processes create/set", "op/s", ours_s, anchor_s, "redis",
            note="aggregate; each process alternates create and set on its own connection",
        ))


def case_fsync(ctx: Ctx) -> None:
    """Write throughput under each fsync policy, 1 and 16 clients."""
    # Fresh daemons for all three, so that only the policy differs.
    with Sessiond(ctx.tmp / "fsync-always", "always") as always, \
            Sessiond(ctx.tmp / "fsync-everysec", "everysec") as everysec, \
            Sessiond(ctx.tmp / "fsync-no", "no") as nosync:
        daemons = {"always": always, "everysec": everysec, "no": nosync}
        for sd in daemons.values():
            sd.spawn()
        for sd in daemons.values():
            sd.wait_ready()
        anchors = {"always": ctx.redis_al, "everysec": ctx.redis_es}
        redis_servers = [rd for rd in (ctx.redis_al, ctx.redis_es) if rd is not None]
        ours = WorkerPool("ours", [str(sd.socket) for sd in daemons.values()], 16)
        anchor = ctx.redis_pool([rd.socket for rd in redis_servers], 16)
        duels: dict[str, Duel] = {}
        for i, policy in enumerate(daemons):
            rd = anchors.get(policy)
            a_target = redis_servers.index(rd) if rd is not None else None
            for n in (1, 16):
                duels[f"{policy}/{n}"] = pool_duel(
                    ours, anchor, "set", ctx.prof.window, n, (i, a_target)
                )
        # One client under always: the servers' scheduler counts as well.
        sched_ours, sched_anchor = PerRequest(), PerRequest()
        duels["always/1"] = (
            watched_rate(ours, "set", ctx.prof.window, 1, 0, always.pid, sched_ours),
            watched_rate(anchor, "set", ctx.prof.window, 1,
                         redis_servers.index(ctx.redis_al), ctx.redis_al.pid, sched_anchor)
            if anchor is not None and ctx.redis_al is not None else None,
        )
        with ours, anchor if anchor is not None else nullcontext():
            res = interleave(ctx.prof.rounds, duels, "set")
    for policy in daemons:
        for n in (1, 16):
            ours_s, anchor_s = res[f"{policy}/{n}"]
            label = f"redis appendfsync {policy}" if policy in anchors else ""
            row = Row(
                f"fsync {policy}: set, {n} client{'s' if n > 1 else ''}", "op/s", ours_s,
                anchor_s, label,
            )
            if policy == "always" and n == 1:
                row.want_ratio(at_least=1.0)
            if policy == "no":
                row.note = "Redis not run with appendfsync no"
            ctx.add(row)
    o1, a1 = res["always/1"]
    o16, a16 = res["always/16"]
    # Round by round: the 16 clients' window against the one client's of the same round.
    group = ratio(o16, o1)
    ctx.add(Row(
        "fsync always: 16 clients / 1 client", "x", group,
        ratio(a16, a1) if a1 is not None and a16 is not None else None, "redis",
        note="group commit: one fsync for every batch that queued behind the last one",
    ).want_value(at_least=3.0))
    ctx.add(_migrations_row(sched_ours, sched_anchor))


def _migrations_row(ours: PerRequest, anchor: PerRequest) -> Row:
    """Informational: how often the server moved to another CPU a request,
    one client under always (see benchkit.sched). Redis's figures go in the
    note, not the anchor column: a ratio of counts this close to zero says
    nothing."""
    case = "fsync always, 1 client: CPU migrations a request"
    if not ours.migrations:
        return Row(case, "", None, status="skipped",
                   note="this kernel keeps no /proc/PID/task/TID/sched statistics")
    redis = ""
    if anchor.migrations:
        redis = (f"; Redis (appendfsync always) "
                 f"{fmt_summary(Summary.of(anchor.migrations), '/req', True)}, preempted "
                 f"{Summary.of(anchor.preempted).median:.2f} a request")
    return Row(
        case, "/req", Summary.of(ours.migrations),
        note=f"informational; every thread of the server process, counted around each "
        f"window of the 1-client row; ours preempted {Summary.of(ours.preempted).median:.2f} "
        f"a request (switched out while it could still run){redis}",
    )


def case_latency(ctx: Ctx) -> None:
    """p99 of get/set with 1, 16 and 256 concurrent clients (closed loop)."""
    w = ctx.prof.window
    shapes = {1: (1, 1), 16: (16, 1), 256: (16, 16)}  # clients: (processes, threads each)
    ours = WorkerPool("ours", [str(ctx.main.socket)], 16, 16)
    anchor = ctx.redis_pool(_anchor_sockets(ctx), 16, 16)
    p50: dict[int, list[float]] = {n: [] for n in shapes}

    def p99(pool: WorkerPool, procs: int, threads: int, p50s: list[float] | None) -> Measure:
        def run() -> float:
            lat = sorted(latencies(pool.run("getset", w, procs=procs, threads=threads)))
            if p50s is not None:
                p50s.append(percentile(lat, 0.50) * 1000)
            return percentile(lat, 0.99) * 1000
        return run

    with ours, anchor if anchor is not None else nullcontext():
        res = interleave(ctx.prof.rounds, {
            n: (p99(ours, procs, threads, p50[n]),
                p99(anchor, procs, threads, None) if anchor is not None else None)
            for n, (procs, threads) in shapes.items()
        }, "latency")
    for n, (ours_s, anchor_s) in res.items():
        procs, threads = shapes[n]
        shape = f"{procs} process{'es' if procs > 1 else ''}" + (
            f" x {threads} threads" if threads > 1 else ""
        )
        ctx.add(Row(
            f"latency p99, {n} client{'s' if n > 1 else ''}", "ms", ours_s, anchor_s, "redis",
            lower_is_better=True,
            note=f"get/set alternating, back to back; {shape}; our p50 "
            f"{Summary.of(p50[n]).median:.2f} ms; all 256 connections stay open throughout",
        ))
