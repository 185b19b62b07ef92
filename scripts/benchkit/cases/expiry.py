"""Expiry under load: sessions whose deadlines are spread over 10 seconds,
expired by the daemon's own timer while two clients keep writing. One
measurement: the lags are the daemon's own figures over every expiry.

The same on a shared daemon (``shared-expiry``): the holder of the
namespace's lease expires them, on the engine's clock, with the same bound."""

from __future__ import annotations

import math
import time

from benchkit.cases.shared import NAMESPACE, missing
from benchkit.measure import Ctx, bulk_create_ours, settled
from benchkit.rows import Row
from benchkit.servers import RedisServer, Sessiond
from benchkit.settings import META, BenchError, Skip, log
from benchkit.stats import Summary, percentile
from benchkit.workers import WorkerPool, sent_and_lat
from sessiond.model import US


def case_expiry(ctx: Ctx) -> None:
    """Deadlines spread evenly over 10 s while two clients keep writing."""
    with Sessiond(ctx.tmp / "expiry") as sd:
        sd.start()
        _expire_under_load(ctx, sd, "")


def case_shared_expiry(ctx: Ctx) -> None:
    """The same on a daemon whose sessions are on a Redis of the case's own
    (one node, as the issue's bound is stated)."""
    why = missing()
    if why is not None:
        raise Skip(why)
    if not ctx.redis_ok:
        raise Skip("--no-redis leaves out every Redis, and shared mode runs on one")
    with RedisServer(ctx.tmp / "shared-expiry-redis", "everysec") as rd:
        rd.start()
        with Sessiond(ctx.tmp / "shared-expiry", backend=f"unix://{rd.socket}",
                      namespace=NAMESPACE) as sd:
            sd.start()
            _expire_under_load(ctx, sd, "shared ")


def _expire_under_load(ctx: Ctx, sd: Sessiond, label: str) -> None:
    n = ctx.prof.expiry_n
    spread = 10.0
    chunk = 1000
    wall_minus_mono = time.time() - time.monotonic()
    with sd.client() as c, WorkerPool("ours", [str(sd.socket)], 2) as writers:
        # Every session is created before the first deadline, so the
        # creations themselves are not what delays expiry: time a few
        # first, and leave room for the rest (slower with writers on).
        t = time.monotonic()
        bulk_create_ours(c, 2 * chunk)
        lead = 1.0 + 1.5 * n * (time.monotonic() - t) / (2 * chunk)
        writers.start("write", None, timestamps=True)
        base = c.stats().expiries_done
        t0 = time.monotonic()
        first_target = time.time() + lead
        first_deadline = math.inf
        last_deadline = 0
        made = 0
        while made < n:
            count = min(chunk, n - made)
            now = time.time()
            # ttl is whole seconds: aim each session at its slot in the
            # spread; creation times smear the rest.
            with c.pipeline() as p:
                pend = [
                    p.create(
                        user=f"u{j % 50}", meta=META,
                        ttl=max(1, round(first_target + spread * (made + j) / n - now)),
                    )
                    for j in range(count)
                ]
            made += count
            for x in pend:
                exp = settled(x).expires_at_us
                first_deadline = min(first_deadline, exp)
                last_deadline = max(last_deadline, exp)
        created_in = time.monotonic() - t0
        margin = first_deadline / US - time.time()
        log(f"  created {n} sessions in {created_in:.2f}s, {margin:.2f}s before the first "
            "deadline")
        # No stats until the last deadline has passed: stats walks the
        # deadlines due within a minute, which would itself delay expiry.
        wait = last_deadline / US - time.time() + 0.5
        if wait > 0:
            time.sleep(wait)
        deadline = time.monotonic() + 60
        while True:
            st = c.stats()
            if st.expiries_done - base >= n:
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {st.expiries_done - base} of {n} sessions expired 60 s after "
                    "their last deadline"
                )
            time.sleep(0.25)
        done_at = time.monotonic()
        writers.stop()
        pairs = sent_and_lat(writers.collect())
    start_mono = first_deadline / US - wall_minus_mono
    during = sorted(lat * 1000 for sent, lat in pairs if start_mono <= sent <= done_at)
    if not during:
        raise BenchError("the writers made no request while sessions expired")
    spread_s = (last_deadline - first_deadline) / US
    note = (f"as the daemon reports it (stats); deadlines over {spread_s:.1f} s, all created "
            f"{max(margin, 0):.1f} s before the first" if margin > 0 else
            f"creation overran the first deadline by {-margin:.1f} s")
    size = f"{n // 1000}k"
    for which, lag, bound in (("p99", st.expiry_lag_p99_ms, 50),
                              ("worst", st.expiry_lag_max_ms, 250)):
        ctx.add(Row(
            f"{label}expiry lag {which} ({size} over 10 s)", "ms", Summary.one(lag),
            lower_is_better=True, note=note,
        ).want_value(at_most=bound, strict=True))
    ctx.add(Row(
        f"{label}request p99 while expiring", "ms", Summary.one(percentile(during, 0.99)),
        lower_is_better=True,
        note=f"2 writers (create/set); worst {during[-1]:.1f} ms over {len(during)} requests",
    ))
