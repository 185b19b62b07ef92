"""Whole processes, timed from exec to exit: ``sessionctl get`` against the
interpreter's own floor, and the legacy tool's shim against the legacy
tool's published figures. A process start varies far more than a request,
so each round times several runs of every command, interleaved, and keeps
the round's median; the rows report those medians over the rounds."""

from __future__ import annotations

import compileall
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from benchkit.measure import Ctx, bulk_create_ours
from benchkit.rows import Row
from benchkit.servers import Sessiond
from benchkit.settings import (
    BIN,
    META,
    REF_LEGACY_EMPTY_MS,
    REF_LEGACY_GET_100K_MS,
    REF_LEGACY_SET_100K_MS,
    SESSIONCTL,
    SHIM,
    SUBPROCESS_TIMEOUT,
    TTL,
    USER,
    BenchError,
    Skip,
    log,
)
from benchkit.stats import Summary, ratio


def _timed(
    argv: Sequence[str], env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Milliseconds from exec to exit, and what the process did."""
    t0 = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, capture_output=True, timeout=SUBPROCESS_TIMEOUT, check=False
    )
    return (time.perf_counter() - t0) * 1000, done


def _rounds_of_medians(
    ctx: Ctx, commands: dict[str, Callable[[], float]], runs: int, warmups: int, what: str
) -> dict[str, Summary]:
    """Each command's per-round median of ``runs`` interleaved runs, after
    ``warmups`` passes (the page cache, the daemon's first answers) that are
    not counted."""
    for _ in range(warmups):
        for run in commands.values():
            run()
    rounds: dict[str, list[float]] = {k: [] for k in commands}
    for rnd in range(ctx.prof.rounds):
        log(f"  {what}: round {rnd + 1}/{ctx.prof.rounds}")
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(runs):
            for k, run in commands.items():
                times[k].append(run())
        for k, v in times.items():
            rounds[k].append(statistics.median(v))
    return {k: Summary.of(v) for k, v in rounds.items()}


def _method(ctx: Ctx, runs: int) -> str:
    each = f"{runs} interleaved runs" if runs > 1 else "1 run"
    return f"{ctx.prof.rounds} rounds of {each} each, the median of each round"


def ensure_bytecode() -> str:
    """Byte-compile ``sessiond`` and ``sessionctl`` where the interpreter
    looks for their cached bytecode, as ``pip install`` does; the row's note
    says how they were timed.

    A checkout installed for development (``pip install -e``) has no cached
    bytecode until an import writes it, and none is ever written under
    ``PYTHONDONTWRITEBYTECODE``: every start would then compile every one
    of our modules from source, a cost no installed copy pays, while the
    floor's modules (the standard library, msgspec) come compiled."""
    failed = []
    for name in ("sessiond", "sessionctl"):
        spec = importlib.util.find_spec(name)
        places = [] if spec is None else list(spec.submodule_search_locations or [])
        for place in places:
            if not compileall.compile_dir(place, quiet=2):
                failed.append(place)
    if failed:
        return ("some of our modules could not be byte-compiled (" + ", ".join(failed)
                + "): they were compiled from source at every start")
    return "our modules byte-compiled beforehand, as an install has them"


def case_cli(ctx: Ctx) -> None:
    """``sessionctl get ID`` as a whole process vs the interpreter's floor."""
    compiled = ensure_bytecode()
    with ctx.main.client() as c:
        sid = c.create(user=USER, ttl=TTL, meta=META).id
    env = ctx.main.env
    python = sys.executable

    def command(*argv: str) -> Callable[[], float]:
        def run() -> float:
            ms, done = _timed([python, *argv], env)
            if done.returncode != 0:
                err = done.stderr.decode(errors="replace")[:300]
                raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {err}")
            return ms
        return run

    runs = ctx.prof.cli_runs
    res = _rounds_of_medians(ctx, {
        "floor": command("-c", "import msgspec, socket"),
        "ours": command(str(SESSIONCTL), "get", sid),
    }, runs, warmups=2, what="cli")
    ctx.add(Row(
        "sessionctl get ID (whole process)", "ms", res["ours"], res["floor"],
        'python -c "import msgspec, socket"', lower_is_better=True,
        note=f"{_method(ctx, runs)}; same interpreter for both; {compiled}",
    ).want_ratio(at_most=1.2))


def _shim(sd: Sessiond, op: str, sid: str) -> Callable[[], float]:
    """A timed run of ``script.sh get SID`` (or ``set SID theme tN``, with a
    new value each run so that every set writes) against ``sd``; Skip when
    the shim fails or answers without ``ok: true``."""
    env = sd.env
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    what = f"'script.sh {op}'"
    values = itertools.count()

    def run() -> float:
        args = [op, sid] if op == "get" else [op, sid, "theme", f"t{next(values)}"]
        try:
            ms, done = _timed(["bash", str(SHIM), *args], env)
        except subprocess.TimeoutExpired:
            raise Skip(f"{what} did not finish in {SUBPROCESS_TIMEOUT:g}s") from None
        if done.returncode != 0:
            err = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            first = err[0][:200] if err else "(no output)"
            raise Skip(f"{what} exited {done.returncode}: {first}")
        try:
            ok = json.loads(done.stdout).get("ok")
        except ValueError:
            raise Skip(f"{what} printed no JSON: {done.stdout[:120]!r}") from None
        if ok is not True:
            raise Skip(f"{what} answered without ok: true: {done.stdout[:200]!r}")
        return ms
    return run


def case_shim(ctx: Ctx) -> None:
    """The legacy tool's commands through the shim, on a store of one session
    and on a large one: as fast as the legacy tool's figures, and flat."""
    n = ctx.prof.shim_n
    if not SHIM.is_file():
        raise Skip("scripts/script.sh does not exist (yet)")
    compiled = ensure_bytecode()
    with Sessiond(ctx.tmp / "shim-small") as small, Sessiond(ctx.tmp / "shim-big") as big:
        small.spawn()
        big.spawn()
        small.wait_ready()
        big.wait_ready()
        with small.client() as c:
            sid_small = c.create(user="alice", ttl=TTL, meta=META).id
        with big.client() as c:
            ids = bulk_create_ours(c, n)
        sid_big = ids[len(ids) // 2]
        runs = ctx.prof.shim_runs
        m = _rounds_of_medians(ctx, {
            "get1": _shim(small, "get", sid_small),
            "getN": _shim(big, "get", sid_big),
            "set1": _shim(small, "set", sid_small),
            "setN": _shim(big, "set", sid_big),
        }, runs, warmups=1, what="shim")
    size = f"{n // 1000}k"
    refs = {
        "get1": ("shim get, 1 session", REF_LEGACY_EMPTY_MS, "legacy tool, empty store"),
        "set1": ("shim set, 1 session", REF_LEGACY_EMPTY_MS, "legacy tool, empty store"),
        "getN": (f"shim get, {size} sessions", REF_LEGACY_GET_100K_MS,
                 "legacy tool at 100k sessions"),
        "setN": (f"shim set, {size} sessions", REF_LEGACY_SET_100K_MS,
                 "legacy tool at 100k sessions"),
    }
    for key, (label, ref, note) in refs.items():
        ctx.add(Row(label, "ms", m[key], Summary.one(ref), reference=True,
                    lower_is_better=True, note=f"{note}; {compiled}"))
    # "Must not grow with the session count": flat within the noise of
    # starting processes on a shared machine.
    for op in ("get", "set"):
        ctx.add(Row(
            f"shim {op}: {size} / 1 session", "x", ratio(m[f"{op}N"], m[f"{op}1"]),
            lower_is_better=True, note=f"round by round; {_method(ctx, runs)}",
        ).want_value(at_most=1.25))
