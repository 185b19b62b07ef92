"""One client in this process: requests one at a time (sequential), and
100 at a time in one round trip (pipelined), against redis-py doing the
same on the long-lived everysec Redis."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from benchkit.anchor import bulk_create_redis, pipe_create, redis_create, redis_pipe
from benchkit.measure import Ctx, InProcess, bulk_create_ours, interleave_blocks, settled
from benchkit.rows import Row
from benchkit.settings import DEPTH, META, PAGE, TTL, USER
from sessionctl import Client, Pipeline


class _ListWalkOurs:
    def __init__(self, c: Client) -> None:
        self.c = c
        self.cursor: str | None = None

    def __call__(self) -> int:
        page, self.cursor = self.c.list_page(limit=PAGE, cursor=self.cursor)
        return len(page)


class _ListWalkRedis:
    """SCAN COUNT 100, then every hash it named in one pipelined round trip."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self.cursor = 0

    def __call__(self) -> int:
        self.cursor, keys = self.r.scan(self.cursor, count=PAGE)
        p = self.r.pipeline(transaction=False)
        for k in keys:
            p.hgetall(k)
        p.execute()
        return len(keys)


def _one(call: Callable[[], object]) -> Callable[[], int]:
    def run() -> int:
        call()
        return 1
    return run


def _ids(c: Client, r: Any) -> tuple[Iterator[str], Iterator[str]]:
    """Sessions to get and set, 2000 on each side, cycled."""
    ours = itertools.cycle(bulk_create_ours(c, 2000))
    redis = itertools.cycle(bulk_create_redis(r, 2000)) if r is not None else iter(())
    return ours, redis


def case_sequential(ctx: Ctx) -> None:
    """One client, one request at a time, against redis-py on a Unix socket."""
    with ctx.main.client() as c, ctx.redis_client() as r:
        ours_ids, redis_ids = _ids(c, r)
        have = r is not None
        res = interleave_blocks(ctx, {
            "create": (_one(lambda: c.create(user=USER, ttl=TTL, meta=META)),
                       _one(lambda: redis_create(r)) if have else None),
            "get": (_one(lambda: c.get(next(ours_ids))),
                    _one(lambda: r.hgetall(next(redis_ids))) if have else None),
            "set": (_one(lambda: c.set(next(ours_ids), "theme", "light")),
                    _one(lambda: r.hset(next(redis_ids), "meta.theme", "light")) if have else None),
            "list": (_ListWalkOurs(c), _ListWalkRedis(r) if have else None),
        })
    for name, at_least in (("create", 1.5), ("get", 1.0), ("set", 1.0)):
        ours, anchor = res[name]
        ctx.add(Row(f"sequential {name}", "op/s", ours, anchor, "redis")
                .want_ratio(at_least=at_least))
    ours, anchor = res["list"]

    def per_page(v: float) -> float:
        return v / PAGE

    ctx.add(Row(
        f"sequential list-page({PAGE})", "op/s", ours.map(per_page),
        anchor.map(per_page) if anchor is not None else None, "redis",
        note="pages/s, counted as rows/100; ours walks with the cursor"
        + ("; Redis: SCAN COUNT 100 (about 100 keys), then one pipelined HGETALL each"
           if anchor is not None else ""),
    ))


def case_pipelined(ctx: Ctx) -> None:
    """100 requests a round trip: our ``pipeline()`` vs redis-py pipeline(transaction=False).

    Each row says its reply shape. Our ``set`` row asks for acks
    (``pipeline(returning="ack")``: id, version, deadline), as Redis's
    ``HSET`` answers with an integer; its twin answers with the whole
    session against ``HSET`` + ``HGETALL``, both sides returning the whole
    record. ``get`` and ``create`` answer whole sessions."""
    with ctx.main.client() as c, ctx.redis_client() as r:
        ours_ids, redis_ids = _ids(c, r)

        def ours(
            queue: Callable[[Pipeline[Any]], object], returning: str = "session"
        ) -> Callable[[], int]:
            def run() -> int:
                with c.pipeline(returning=returning) as p:  # type: ignore[call-overload]
                    pend = [queue(p) for _ in range(DEPTH)]
                for x in pend:
                    settled(x)
                return DEPTH
            return run

        def redis(queue: Callable[[Any, int], object]) -> Callable[[], int] | None:
            return None if r is None else redis_pipe(r, queue)

        def hset_hgetall(p: Any, now: int) -> None:
            sid = next(redis_ids)
            p.hset(sid, "meta.theme", "light")
            p.hgetall(sid)

        def our_set(p: Pipeline[Any]) -> object:
            return p.set(next(ours_ids), "theme", "light")

        duels: dict[str, InProcess] = {
            "create": (ours(lambda p: p.create(user=USER, ttl=TTL, meta=META)),
                       redis(pipe_create)),
            "get": (ours(lambda p: p.get(next(ours_ids))),
                    redis(lambda p, now: p.hgetall(next(redis_ids)))),
            "set": (ours(our_set, "ack"),
                    redis(lambda p, now: p.hset(next(redis_ids), "meta.theme", "light"))),
            "set twin": (ours(our_set), redis(hset_hgetall)),
        }
        res = interleave_blocks(ctx, duels)
    # label, anchor label, target (ours / Redis at least), note
    rows: dict[str, tuple[str, str, float | None, str]] = {
        "create": ("create (whole session)", "redis pipeline: HSET+EXPIRE", 2.0,
                   "Redis create here is HSET+EXPIRE in a non-transactional pipeline"),
        "get": ("get (whole session)", "redis pipeline: HGETALL", 2.0, ""),
        "set": ("set (ack)", "redis pipeline: HSET, integer reply", 1.0,
                "ours answers each set with an ack (id, version, deadline), Redis's HSET "
                "with an integer"),
        "set twin": ("set (whole session) vs HSET+HGETALL",
                     "redis pipeline: HSET+HGETALL, whole hash", None,
                     "the fair twin: both sides answer each set with the whole record"),
    }
    for key, (label, anchor_label, at_least, note) in rows.items():
        ours_s, anchor_s = res[key]
        row = Row(f"pipelined x{DEPTH} {label}", "op/s", ours_s, anchor_s,
                  anchor_label, note=note if anchor_s is not None else "")
        ctx.add(row.want_ratio(at_least=at_least) if at_least is not None else row)
