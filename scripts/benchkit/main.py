"""The run: the command line, the long-lived servers, each case of the
registry in turn (a broken case reports an error row and the run goes on),
the cleanup whatever happens, and the report."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from benchkit.anchor import INSTALL_HINT, check_anchor
from benchkit.cases.commands import ensure_bytecode
from benchkit.machine import Weather, describe
from benchkit.measure import Ctx
from benchkit.procs import REAPER
from benchkit.registry import CASES
from benchkit.report import Run, document, render
from benchkit.rows import Row
from benchkit.servers import RedisServer, Sessiond
from benchkit.settings import FULL, QUICK, SESSIONCTL, SESSIOND, Skip, log


def _rounds(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py", description="sessiond benchmark: ours vs anchors, with targets"
    )
    p.add_argument("--quick", action="store_true", help="a small version, about a minute")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results to FILE")
    p.add_argument("--only", metavar="CASES", help=f"comma-separated subset of: {', '.join(CASES)}")
    p.add_argument("--rounds", metavar="N", type=_rounds,
                   help=f"interleaved rounds of every comparison (default {FULL.rounds}, "
                   f"{QUICK.rounds} with --quick); the time grows with it")
    p.add_argument("--no-redis", action="store_true",
                   help="leave out the Redis anchors even when Redis is installed")
    p.add_argument("--allow-slow-anchor", action="store_true",
                   help="run the Redis anchor without hiredis (the header then warns that "
                   f"it flatters us); otherwise the bench refuses: {INSTALL_HINT}")
    args = p.parse_args(argv)
    if args.only is not None:
        args.only = [x.strip() for x in args.only.split(",") if x.strip()]
        if not args.only:
            # Not "every case": a list that came out empty (a variable not
            # set, a stray comma) is a mistake, not a request for the hour
            # the full run takes.
            p.error(f"--only names no case; choose from {', '.join(CASES)}")
        unknown = sorted(set(args.only) - set(CASES))
        if unknown:
            p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    return args


def unwritable(path: Path) -> str | None:
    """Why the results could not be written to ``path`` at the end of the
    run (``None``: they can), found out before it: a file made in its
    directory and removed, as the write will need."""
    if path.is_dir():
        return "is a directory"
    if path.exists() and not os.access(path, os.W_OK):
        return "cannot be written (permission denied)"
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        return f"cannot be written in {path.parent}: {exc.strerror}"
    return None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_cases(run: Run, ctx: Ctx, only: list[str] | None) -> None:
    for name, fn in CASES.items():
        if only and name not in only:
            continue
        log(f"case {name}")
        weather = Weather()
        started = time.monotonic()
        try:
            fn(ctx)
        except Skip as exc:
            log(f"  skipped: {exc}")
            run.rows.append(Row(name, "", None, status="skipped", note=str(exc)))
        except Exception as exc:
            # One broken case (often a product error, a SessionError) must
            # not hide the others' results: report it and go on.
            traceback.print_exc(file=sys.stderr)
            run.rows.append(
                Row(name, "", None, status="error", note=f"{type(exc).__name__}: {exc}")
            )
        finally:
            run.case_seconds[name] = round(time.monotonic() - started, 1)
            run.case_steal[name] = weather.finish().steal


def _measure(run: Run, tmp: Path, only: list[str] | None) -> None:
    # Every start the cases time (the daemon's restarts too) reads our
    # modules compiled, as an installed copy does.
    ensure_bytecode()
    main_sd = Sessiond(tmp / "main")
    main_sd.start()
    redis_es = RedisServer(tmp / "redis-everysec", "everysec") if run.anchor.run else None
    redis_al = RedisServer(tmp / "redis-always", "always") if run.anchor.run else None
    for rd in (redis_es, redis_al):
        if rd is not None:
            rd.start()
    with main_sd.client() as c:
        run.machine["event_loop"] = c.stats().event_loop
    if not only or "big" in only:
        run.big_data = (
            f"big data set: {run.prof.big_n} sessions with a 2-entry meta, written directly "
            "as a compacted journal with sessiond.records.put_line"
            + ("; Redis gets the same records by mass insertion (raw RESP HSET+EXPIRE) "
               "and a BGREWRITEAOF" if run.anchor.run else "")
        )
    ctx = Ctx(run.prof, tmp, run.rows, run.anchor.run, main_sd, redis_es, redis_al)
    _run_cases(run, ctx, only)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 when no judged target failed (UNSURE does not fail),
    1 when one failed or a case errored, 2 on bad usage or a refused anchor,
    130 when interrupted."""
    args = parse_args(argv)
    if args.json is not None and (why := unwritable(args.json)) is not None:
        # Now, not after the run: its results would be lost.
        print(f"bench: --json {args.json}: {why}", file=sys.stderr)
        return 2
    prof = (QUICK if args.quick else FULL).with_rounds(args.rounds)
    for exe in (SESSIOND, SESSIONCTL):
        if not exe.exists():
            print(f"bench: {exe.name} not found next to {sys.executable}; run this with the "
                  "project's virtual environment", file=sys.stderr)
            return 2
    anchor = check_anchor(no_redis=args.no_redis, allow_slow=args.allow_slow_anchor)
    if anchor.refusal:
        print(f"bench: {anchor.refusal}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or (soft < hard and soft < 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    signal.signal(signal.SIGTERM, _raise_interrupt)

    run = Run(prof, anchor, Weather(), time.time())
    if anchor.warning:
        log(anchor.warning)
    tmp = Path(tempfile.mkdtemp(prefix="sdbench-"))
    run.machine = describe(tmp)
    try:
        _measure(run, tmp, args.only)
    except KeyboardInterrupt:
        run.interrupted = True
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        REAPER.cleanup()
        try:
            shutil.rmtree(tmp)
        except OSError as exc:
            print(f"bench: could not remove {tmp}: {exc}", file=sys.stderr)
    run.weather.finish()
    run.elapsed = time.time() - run.started
    print(render(run))
    if args.json:
        args.json.write_text(json.dumps(document(run), indent=2) + "\n")
    if run.interrupted:
        return 130
    failed = any(r.status == "error" or r.result == "FAIL" for r in run.rows)
    return 1 if failed else 0
