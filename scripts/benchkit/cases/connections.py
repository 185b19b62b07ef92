"""Memory per idle connection, on fresh servers (memory a server already
used and freed would hide what a new connection costs)."""

from __future__ import annotations

from typing import Any

from benchkit.measure import Ctx
from benchkit.rows import Row
from benchkit.servers import RedisServer, Sessiond, start_both
from benchkit.settings import BenchError
from benchkit.stats import Summary

IDLE = 256


def _idle_connections_ours(sd: Sessiond, n: int) -> tuple[int, int]:
    with sd.client() as probe:
        probe.ping()
        before = sd.settled_rss(0.2)
        clients = []
        try:
            for _ in range(n):
                clients.append(sd.client())
                clients[-1].ping()
            after = sd.settled_rss()
            seen = probe.stats().connections
            if seen < n:
                raise BenchError(f"daemon reports {seen} connections, expected {n + 1}")
        finally:
            for c in clients:
                c.close()
    return before, after


def _idle_connections_redis(rd: RedisServer, n: int) -> tuple[int, int]:
    import redis

    connection: Any = redis.UnixDomainSocketConnection
    before = rd.settled_rss(0.2)
    conns = []
    try:
        for _ in range(n):
            conn = connection(path=str(rd.socket), socket_timeout=30)
            conn.connect()
            conn.send_command("PING")
            conn.read_response()
            conns.append(conn)
        after = rd.settled_rss()
    finally:
        for conn in conns:
            conn.disconnect()
    return before, after


def case_connections(ctx: Ctx) -> None:
    """RSS per idle connection: one measurement each, no rounds (the memory
    of a fresh server is not what the machine's weather moves)."""
    anchor = None
    with Sessiond(ctx.tmp / "conn") as sd, ctx.fresh_redis("conn-redis", "everysec") as rd:
        start_both(sd, rd)
        before, after = _idle_connections_ours(sd, IDLE)
        if rd is not None:
            rb, ra = _idle_connections_redis(rd, IDLE)
            anchor = Summary.one((ra - rb) / IDLE)
    ctx.add(Row(
        f"memory per idle connection ({IDLE} open)", "B", Summary.one((after - before) / IDLE),
        anchor, "redis", lower_is_better=True,
        note=f"VmRSS delta / {IDLE}, each connection past its hello/ping",
    ))
