#!/usr/bin/env python3
"""The project's one benchmark: every speed and memory target, each measured
against an anchor taken in the same run on the same machine.

    python scripts/bench.py [--quick] [--json FILE] [--only CASE[,CASE...]]

Run it with the project's virtual environment (the ``sessiond`` and
``sessionctl`` executables are looked up next to ``sys.executable``). It
starts its own ``sessiond`` processes and, when ``redis-server`` and redis-py
are installed, its own ``redis-server`` processes, all on temporary Unix
sockets and directories, and stops every one of them on exit, Ctrl-C or
error. It writes nowhere but its temporary directory (and the --json file).

Anchors: Redis (``appendonly yes``, ``appendfsync everysec``; a second
server with ``appendfsync always`` for the fsync case) driven by redis-py;
a bare ``python -c "import msgspec, socket"`` for the CLI's start-up; and the
legacy tool's published figures for the shim, which are reference figures,
not measured here. Throughput figures are medians over interleaved rounds
(ours, anchor, ours, anchor, ...).

Exit status: 0 when every judged target passed, 1 when one failed or a case
errored, 2 on bad usage, 130 when interrupted. Speed and memory targets live
here only, never in the unit tests.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from sessionctl import Client, Pending
from sessiond.errors import DaemonUnavailable
from sessiond.model import ACTIVE, US, Session, new_id, now_us
from sessiond.records import put_line

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SESSIOND = BIN / "sessiond"
SESSIONCTL = BIN / "sessionctl"
SHIM = REPO / "scripts" / "script.sh"

META: dict[str, Any] = {"theme": "dark", "lang": "en"}
USER = "bench"
TTL = 3600
BIG_TTL = 86400  # the big data set must not start expiring while it is measured
DEPTH = 100  # pipeline depth
PAGE = 100  # list page size

START_TIMEOUT = 30.0
BIG_START_TIMEOUT = 900.0
STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 180.0
RESULT_GRACE = 120.0
SUBPROCESS_TIMEOUT = 60.0
POLL = 0.002

# The legacy tool's own figures (the shim replaces it); printed as fixed
# reference anchors because the legacy tool is not run here.
REF_LEGACY_EMPTY_MS = 115.0
REF_LEGACY_GET_100K_MS = 500.0
REF_LEGACY_SET_100K_MS = 1400.0
REF_NOTE = (
    "[ref] = reference figure, not measured here: the legacy tool's own figures "
    "(115 ms a command on an empty store; get 0.5 s and set 1.4 s at 100,000 sessions)"
)

T0 = time.monotonic()


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


class Skip(Exception):
    """A case that cannot run here; the message says why."""


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- profiles ------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    block: float  # seconds of one timed block of in-process requests
    rounds: int  # interleaved rounds of the in-process cases
    window: float  # seconds of one timed window of the multi-process cases
    proc_rounds: int  # interleaved rounds of the multi-process cases
    cli_runs: int
    big_n: int
    restarts: int  # after compaction; the first start on the written journal adds one
    compactions: int
    expiry_n: int
    shim_n: int
    shim_runs: int
    probe_baseline: float  # seconds a probing client runs before the measured action


QUICK = Profile(
    name="quick", block=0.1, rounds=2, window=0.4, proc_rounds=1, cli_runs=6,
    big_n=50_000, restarts=1, compactions=1, expiry_n=10_000, shim_n=10_000, shim_runs=3,
    probe_baseline=0.5,
)
FULL = Profile(
    name="full", block=0.4, rounds=7, window=2.0, proc_rounds=3, cli_runs=60,
    big_n=1_000_000, restarts=2, compactions=2, expiry_n=100_000, shim_n=100_000, shim_runs=15,
    probe_baseline=1.0,
)


# -- results -------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. ``ratio`` is ours / anchor in the row's unit."""

    case: str
    unit: str  # "op/s", "ms", "s", "B", "x"
    ours: float | None
    anchor: float | None = None
    anchor_label: str = ""  # what the anchor is (redis everysec, floor, ...)
    reference: bool = False  # a fixed figure, not measured here
    lower_is_better: bool = False
    target: str = ""
    passed: bool | None = None
    status: str = "ok"  # ok, skipped, error
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.anchor is None or self.anchor == 0:
            return None
        return self.ours / self.anchor

    def want_ratio(self, at_least: float | None = None, at_most: float | None = None) -> Row:
        """Judge ours / anchor (e.g. throughput vs Redis)."""
        self.target = _bound_text(at_least, at_most, "x")
        self.passed = _within(self.ratio, at_least, at_most)
        return self

    def want_value(
        self, at_least: float | None = None, at_most: float | None = None, strict: bool = False
    ) -> Row:
        """Judge ours alone against an absolute bound."""
        self.target = _bound_text(at_least, at_most, self.unit, strict)
        self.passed = _within(self.ours, at_least, at_most, strict)
        return self

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def _bound_text(
    at_least: float | None, at_most: float | None, unit: str, strict: bool = False
) -> str:
    parts = []
    if at_least is not None:
        parts.append((">" if strict else ">=") + _fmt_bound(at_least, unit))
    if at_most is not None:
        parts.append(("<" if strict else "<=") + _fmt_bound(at_most, unit))
    return " ".join(parts)


def _fmt_bound(v: float, unit: str) -> str:
    return f"{v:g}x" if unit == "x" else fmt(v, unit)


def _within(
    v: float | None, at_least: float | None, at_most: float | None, strict: bool = False
) -> bool | None:
    if v is None:
        return None
    if at_least is not None and (v <= at_least if strict else v < at_least):
        return False
    if at_most is not None and (v >= at_most if strict else v > at_most):
        return False
    return True


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "op/s":
        return f"{v / 1000:.1f}k/s" if v >= 1000 else f"{v:.0f}/s"
    if unit == "ms":
        if v < 1:
            return f"{v * 1000:.0f} us"
        return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "B":
        if v < 10_000:
            return f"{v:.0f} B"
        if v < 10_000_000:
            return f"{v / 1024:.0f} KiB"
        return f"{v / 1024 / 1024:.1f} MiB"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:g} {unit}"


def verdict(row: Row) -> str:
    if row.status != "ok":
        return row.status.upper()
    if row.passed is None:
        return "n/a" if row.target else "-"
    return "PASS" if row.passed else "FAIL"


def render_table(rows: Sequence[Row]) -> str:
    header = ("case", "ours", "anchor", "ratio", "target", "result")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        anchor = fmt(r.anchor, r.unit) if r.anchor is not None else "-"
        if r.anchor is not None:
            anchor += " [ref]" if r.reference else f" ({r.anchor_label})" if r.anchor_label else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append((r.case, fmt(r.ours, r.unit), anchor, ratio, r.target or "-", verdict(r)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def median(values: Sequence[float]) -> float:
    if not values:
        raise BenchError("no samples to take a median of")
    return statistics.median(values)


def pct(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        raise BenchError("no samples to take a percentile of")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- processes -----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the benchmark itself is SIGKILLed, its finally blocks never run; the
    # kernel must then stop the servers it started.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Reaper:
    """Everything this process started, stopped in ``cleanup`` whatever happens."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.workers: list[BaseProcess] = []

    def popen(
        self, argv: Sequence[str], *, env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as logf:
            proc = subprocess.Popen(
                list(argv), env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                # Own session: Ctrl-C reaches only the benchmark, which then
                # stops its servers in order.
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.popens.append(proc)
        return proc

    def cleanup(self) -> None:
        for w in self.workers:
            if w.is_alive():
                w.terminate()
        for w in self.workers:
            w.join(5)
            if w.is_alive():
                w.kill()
                w.join(5)
        self.workers.clear()
        for p in self.popens:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.popens:
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"bench: pid {p.pid} ignored SIGTERM; killing it", file=sys.stderr)
                p.kill()
                p.wait(10)
        self.popens.clear()


REAPER = Reaper()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no VmRSS line")


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Server:
    """A server process with a log, stopped on exit from its ``with`` block."""

    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} is not running")
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.proc.returncode}:\n{tail(self.log_path)}"
            )

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        self.proc = None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                raise BenchError(
                    f"{self.name} ignored SIGTERM for {STOP_TIMEOUT:g}s: killed"
                ) from None
        if p in REAPER.popens:
            REAPER.popens.remove(p)
        if p.returncode != 0:
            raise BenchError(
                f"{self.name} exited with status {p.returncode} on SIGTERM:\n{tail(self.log_path)}"
            )

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.stop()
            return
        try:
            self.stop()
        except BenchError as exc:  # keep the error already on its way out
            print(f"bench: while unwinding: {exc}", file=sys.stderr)


class Sessiond(Server):
    """One ``sessiond`` on its own socket, data dir and config."""

    def __init__(self, root: Path, fsync: str = "everysec") -> None:
        self.name = f"sessiond[{root.name}]"
        self.root = root
        self.fsync = fsync
        root.mkdir(mode=0o700)
        for d in ("run", "data", "home", "xdg"):
            (root / d).mkdir(mode=0o700)
        self.socket = root / "run" / "sessiond.sock"
        if len(os.fsencode(self.socket)) > 100:
            raise BenchError(f"socket path too long for AF_UNIX: {self.socket}; set TMPDIR shorter")
        self.journal = root / "data" / "data.jsonl"
        self.log_path = root / "sessiond.log"
        self._exec_at = 0.0

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Inherited systemd variables would make the daemon adopt fds or notify.
        for leaked in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                       "WATCHDOG_USEC"):
            env.pop(leaked, None)
        env.update(
            SESSIOND_SOCKET=str(self.socket),
            SESSIOND_DATA_DIR=str(self.root / "data"),
            SESSIOND_CONFIG=str(self.root / "config.json"),
            SESSIONCTL_NO_AUTOSTART="1",
            # A private home: no legacy ~/.session is imported, nothing of the
            # user's is touched.
            HOME=str(self.root / "home"),
            XDG_CONFIG_HOME=str(self.root / "home" / ".config"),
            XDG_STATE_HOME=str(self.root / "home" / ".local" / "state"),
            XDG_RUNTIME_DIR=str(self.root / "xdg"),
        )
        return env

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start and wait until it answers ping; seconds from exec to answer."""
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start without waiting (``wait_ready`` waits), to start several at once."""
        if self.proc is not None:
            raise BenchError(f"{self.name} is already running")
        self._exec_at = time.monotonic()
        self.proc = REAPER.popen(
            [str(SESSIOND), "--fsync", self.fsync], env=self.env, log_path=self.log_path
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        t0 = self._exec_at
        deadline = t0 + timeout
        while True:
            self._check_alive()
            try:
                with Client(self.socket, timeout=5) as c:
                    c.ping()
                return time.monotonic() - t0
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.name} did not answer within {timeout:g}s:\n{tail(self.log_path)}"
                    ) from None
                time.sleep(POLL)

    def client(self, timeout: float = REQUEST_TIMEOUT) -> Client:
        return Client(self.socket, timeout=timeout)

    def __enter__(self) -> Sessiond:
        return self


def redis_status() -> tuple[bool, str]:
    """Whether Redis anchors can run, and a line saying what they are."""
    server = shutil.which("redis-server")
    missing = []
    if server is None:
        missing.append("redis-server is not on PATH")
    if importlib.util.find_spec("redis") is None:
        missing.append("redis-py (pip package 'redis') is not installed")
    if server is None or missing:
        return False, "Redis anchors skipped: " + "; ".join(missing) + " (ours shown alone)"
    import redis

    out = subprocess.run(
        [server, "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    words = out.stdout.split()
    version = words[2].removeprefix("v=") if len(words) > 2 else f"unknown ({out.stdout!r})"
    hiredis = importlib.util.find_spec("hiredis") is not None
    parser = "hiredis parser" if hiredis else "pure-Python parser"
    return True, f"redis-server {version}, redis-py {redis.__version__} ({parser}), Unix socket"


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise BenchError("redis-server is not on PATH")
    return path


class RedisServer(Server):
    """One ``redis-server`` with the AOF on, on a Unix socket only."""

    def __init__(self, root: Path, appendfsync: str) -> None:
        self.name = f"redis[{root.name}]"
        self.root = root
        root.mkdir(mode=0o700)
        self.socket = root / "redis.sock"
        self.log_path = root / "redis.log"
        self.conf = root / "redis.conf"
        self.conf.write_text(
            "port 0\n"
            f"unixsocket {self.socket}\n"
            "unixsocketperm 700\n"
            f"dir {root}\n"
            "appendonly yes\n"
            f"appendfsync {appendfsync}\n"
            'save ""\n'  # the AOF is the persistence compared, not RDB snapshots
            "daemonize no\n"
            f"logfile {self.log_path}\n"
            "maxclients 2000\n"
        )

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start and wait until PING answers PONG (not LOADING)."""
        import redis

        if self.proc is not None:
            raise BenchError(f"{self.name} is already running")
        t0 = time.monotonic()
        self.proc = REAPER.popen(
            [_redis_server(), str(self.conf)],
            env=dict(os.environ), log_path=self.root / "redis.stdout",
        )
        deadline = t0 + timeout
        while True:
            self._check_alive()
            r = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)
            try:
                if r.ping():
                    return time.monotonic() - t0
            except redis.exceptions.ConnectionError:  # includes LOADING
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.name} did not answer within {timeout:g}s:\n{tail(self.log_path)}"
                    ) from None
                time.sleep(POLL)
            finally:
                r.close()

    def client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=REQUEST_TIMEOUT)

    def aof_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("appendonly*") if p.is_file()) + sum(
            p.stat().st_size for p in self.root.glob("appendonlydir/*") if p.is_file()
        )

    def rewrite_aof(self, timeout: float) -> float:
        """BGREWRITEAOF and wait for it to finish; seconds taken."""
        r = self.client()
        try:
            before = int(r.info("persistence")["aof_rewrites"])
            t0 = time.monotonic()
            r.bgrewriteaof()
            while True:
                info = r.info("persistence")
                if int(info["aof_rewrites"]) > before and not int(info["aof_rewrite_in_progress"]):
                    if info["aof_last_bgrewrite_status"] != "ok":
                        raise BenchError(
                            f"{self.name}: BGREWRITEAOF failed:\n{tail(self.log_path)}"
                        )
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    raise BenchError(f"{self.name}: BGREWRITEAOF still running after {timeout:g}s")
                time.sleep(0.01)
        finally:
            r.close()

    def __enter__(self) -> RedisServer:
        return self


def redis_fields(sid: str, user: str, ttl: int, now: int) -> dict[str, str | int]:
    """A session as one Redis hash: the record's fields, meta flattened."""
    fields: dict[str, str | int] = {
        "id": sid, "user": user, "status": "active", "ttl": ttl, "created_at": now,
        "last_access": now, "expires_at": now + ttl * US, "version": 1,
    }
    for k, v in META.items():
        fields["meta." + k] = v
    return fields


def redis_create(r: Any, user: str = USER, ttl: int = TTL) -> str:
    """HSET + EXPIRE in one MULTI/EXEC round trip: a session with a deadline, atomically."""
    sid = new_id()
    p = r.pipeline(transaction=True)
    p.hset(sid, mapping=redis_fields(sid, user, ttl, now_us()))
    p.expire(sid, ttl)
    p.execute()
    return sid


# -- worker processes ----------------------------------------------------


@dataclass
class WorkerResult:
    rate: float = 0.0  # requests per second, summed over the worker's threads
    ops: int = 0
    lat: bytes = b""  # array('d') of seconds
    sent: bytes = b""  # array('d') of time.monotonic() at send
    error: str | None = None


class _Ops:
    sid = ""
    n = 0

    def get(self) -> None:
        raise NotImplementedError

    def set(self) -> None:
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def write(self) -> None:
        self.n += 1
        if self.n & 1:
            self.create()
        else:
            self.set()

    def getset(self) -> None:
        self.n += 1
        if self.n & 1:
            self.get()
        else:
            self.set()


class _OursOps(_Ops):
    def __init__(self, address: str) -> None:
        self.c = Client(address, timeout=REQUEST_TIMEOUT)
        self.create()

    def get(self) -> None:
        self.c.get(self.sid)

    def set(self) -> None:
        self.c.set(self.sid, "theme", "light")

    def create(self) -> None:
        self.sid = self.c.create(user=USER, ttl=TTL, meta=META).id

    def close(self) -> None:
        self.c.close()


class _RedisOps(_Ops):
    def __init__(self, address: str) -> None:
        import redis

        self.r = redis.Redis(unix_socket_path=address, socket_timeout=REQUEST_TIMEOUT)
        self.create()

    def get(self) -> None:
        self.r.hgetall(self.sid)

    def set(self) -> None:
        self.r.hset(self.sid, "meta.theme", "light")

    def create(self) -> None:
        self.sid = redis_create(self.r)

    def close(self) -> None:
        self.r.close()


@dataclass(frozen=True)
class _Run:
    op: str  # a method of _Ops: get, set, write (create, set, ...), getset
    target: int  # which of the pool's servers
    threads: int
    start_at: float  # time.monotonic(), shared by every worker of the window
    duration: float | None  # None: until the pool's stop event
    timestamps: bool


@dataclass
class _Tally:
    ops: int = 0
    elapsed: float = 0.0
    lat: array.array[float] = field(default_factory=lambda: array.array("d"))
    sent: array.array[float] = field(default_factory=lambda: array.array("d"))
    error: str | None = None


def _drive(ops: _Ops, run: _Run, stop: Any, tally: _Tally) -> None:
    try:
        op: Callable[[], None] = getattr(ops, run.op)
        clock = time.monotonic
        lat, sent = tally.lat, tally.sent
        delay = run.start_at - clock()
        if delay > 0:
            time.sleep(delay)
        start = clock()
        end = run.start_at + run.duration if run.duration is not None else math.inf
        n = 0
        while True:
            t0 = clock()
            op()
            t1 = clock()
            lat.append(t1 - t0)
            if run.timestamps:
                sent.append(t0)
            n += 1
            if t1 >= end or (run.duration is None and n % 16 == 0 and stop.is_set()):
                break
        tally.ops, tally.elapsed = n, clock() - start
    except Exception as exc:  # reported to the parent, which fails the case
        tally.error = f"{type(exc).__name__}: {exc}"


def _pool_worker(
    backend: str, addresses: Sequence[str], threads: int, conn: Any, stop: Any
) -> None:
    # The parent handles Ctrl-C, then terminates us (SIGTERM, default action).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    per_server: list[list[_Ops]] = []
    try:
        make = _OursOps if backend == "ours" else _RedisOps
        for address in addresses:
            per_server.append([make(address) for _ in range(threads)])
        conn.send(WorkerResult())
        while True:
            run: _Run | None = conn.recv()
            if run is None:
                return
            clients = per_server[run.target]
            tallies = [_Tally() for _ in range(run.threads)]
            if run.threads == 1:
                _drive(clients[0], run, stop, tallies[0])
            else:
                workers = [
                    threading.Thread(target=_drive, args=(c, run, stop, t), daemon=True)
                    for c, t in zip(clients, tallies, strict=False)
                ]
                for t in workers:
                    t.start()
                for t in workers:
                    t.join()
            errors = [t.error for t in tallies if t.error]
            if errors:
                raise BenchError(errors[0])
            conn.send(WorkerResult(
                rate=sum(t.ops / t.elapsed for t in tallies if t.elapsed > 0),
                ops=sum(t.ops for t in tallies),
                lat=b"".join(t.lat.tobytes() for t in tallies),
                sent=b"".join(t.sent.tobytes() for t in tallies),
            ))
    except Exception as exc:  # reported to the parent, which fails the case
        conn.send(WorkerResult(error=f"{backend} client process: {type(exc).__name__}: {exc}"))
    finally:
        for clients in per_server:
            for c in clients:
                c.close()


class WorkerPool:
    """Client processes that connect once (``threads`` connections to each
    server, each with a session of its own) and then run timed windows on
    command, all starting at the same instant.

    ``with WorkerPool("ours", [path], 16) as pool: pool.run("set", 2.0)``."""

    def __init__(
        self, backend: str, addresses: Sequence[str], procs: int, threads: int = 1
    ) -> None:
        ctx = multiprocessing.get_context("fork")  # cheap, and no re-import of this script
        self.backend = backend
        self.threads = threads
        self.stop_event = ctx.Event()
        self.conns: list[Any] = []
        self.procs: list[BaseProcess] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            self.conns.append(parent)
            self.procs.append(ctx.Process(
                target=_pool_worker,
                args=(backend, list(addresses), threads, child, self.stop_event),
                daemon=True,
            ))
        self._running: list[Any] = []
        self._longest = 0.0

    def __enter__(self) -> WorkerPool:
        REAPER.workers.extend(self.procs)
        for proc in self.procs:
            proc.start()
        self._running = list(self.conns)
        self._longest = 0.0
        self._collect(CONNECT_TIMEOUT, "connect")
        return self

    def start(
        self, op: str, duration: float | None = None, *, procs: int | None = None,
        threads: int | None = None, target: int = 0, timestamps: bool = False,
    ) -> None:
        """Start a window on the first ``procs`` workers (``threads`` each),
        against server number ``target``."""
        if (procs or 0) > len(self.conns) or (threads or 0) > self.threads:
            raise BenchError(f"a window of {procs} x {threads} does not fit this pool")
        used = self.conns[: procs or len(self.conns)]
        # Far enough ahead that every worker has the order before it begins.
        run = _Run(op, target, threads or self.threads,
                   time.monotonic() + 0.05 + 0.002 * len(used), duration, timestamps)
        self.stop_event.clear()
        for conn in used:
            conn.send(run)
        self._running = used
        self._longest = duration or 0.0

    def stop(self) -> None:
        self.stop_event.set()

    def collect(self) -> list[WorkerResult]:
        return self._collect(self._longest + RESULT_GRACE, "finish")

    def _collect(self, timeout: float, what: str) -> list[WorkerResult]:
        deadline = time.monotonic() + timeout
        out: list[WorkerResult] = []
        for conn in self._running:
            if not conn.poll(max(deadline - time.monotonic(), 0.01)):
                raise BenchError(
                    f"{self.backend} client processes: {len(out)} of {len(self._running)} "
                    f"did {what} within {timeout:g}s"
                )
            r: WorkerResult = conn.recv()
            if r.error:
                raise BenchError(r.error)
            out.append(r)
        self._running = []
        return out

    def run(
        self, op: str, duration: float, *, procs: int | None = None, threads: int | None = None,
        target: int = 0,
    ) -> list[WorkerResult]:
        self.start(op, duration, procs=procs, threads=threads, target=target)
        return self.collect()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_event.set()
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc.is_alive() and t is None:
                try:
                    conn.send(None)
                except OSError as exc:  # it died already: join below reports nothing more
                    print(f"bench: client process {proc.pid}: {exc}", file=sys.stderr)
            proc.join(10 if t is None else 0.5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc in REAPER.workers:
                REAPER.workers.remove(proc)
            conn.close()


def latencies(results: Sequence[WorkerResult]) -> array.array[float]:
    out = array.array("d")
    for r in results:
        out.frombytes(r.lat)
    return out


def sent_and_lat(results: Sequence[WorkerResult]) -> list[tuple[float, float]]:
    pairs: list[tuple[float, float]] = []
    for r in results:
        s, lat = array.array("d"), array.array("d")
        s.frombytes(r.sent)
        lat.frombytes(r.lat)
        pairs.extend(zip(s, lat, strict=True))
    return pairs


# -- helpers for in-process cases ----------------------------------------


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


def bulk_create_redis(r: Any, n: int) -> list[str]:
    ids: list[str] = []
    now = now_us()
    while len(ids) < n:
        p = r.pipeline(transaction=False)
        for _ in range(min(500, n - len(ids))):
            sid = new_id()
            p.hset(sid, mapping=redis_fields(sid, USER, TTL, now))
            p.expire(sid, TTL)
            ids.append(sid)
        p.execute()
    return ids


@dataclass
class Ctx:
    prof: Profile
    tmp: Path
    rows: list[Row]
    redis_ok: bool
    main: Sessiond
    redis_es: RedisServer | None
    redis_al: RedisServer | None

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = f"ours {fmt(row.ours, row.unit)}"
        if row.anchor is not None:
            shown += f", anchor {fmt(row.anchor, row.unit)}"
        log(f"  {row.case}: {shown}{'  ' + verdict(row) if row.target else ''}")
        return row


# -- cases ---------------------------------------------------------------


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


def _interleave(
    ctx: Ctx, cases: dict[str, tuple[Callable[[], int], Callable[[], int] | None]]
) -> dict[str, tuple[float, float | None]]:
    """Medians of interleaved timed blocks: ours, anchor, ours, anchor..."""
    prof = ctx.prof
    for ours, anchor in cases.values():  # warm-up: first calls, caches
        rate(ours, prof.block / 4)
        if anchor is not None:
            rate(anchor, prof.block / 4)
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    for _ in range(prof.rounds):
        for name, (ours, anchor) in cases.items():
            samples[name][0].append(rate(ours, prof.block))
            if anchor is not None:
                samples[name][1].append(rate(anchor, prof.block))
    return {k: (median(o), median(a) if a else None) for k, (o, a) in samples.items()}


def case_sequential(ctx: Ctx) -> None:
    """One client, one request at a time, against redis-py on a Unix socket."""
    with ctx.main.client() as c:
        r = ctx.redis_es.client() if ctx.redis_es else None
        try:
            ours_ids = itertools.cycle(bulk_create_ours(c, 2000))
            redis_ids = itertools.cycle(bulk_create_redis(r, 2000)) if r is not None else None

            def o_create() -> int:
                c.create(user=USER, ttl=TTL, meta=META)
                return 1

            def o_get() -> int:
                c.get(next(ours_ids))
                return 1

            def o_set() -> int:
                c.set(next(ours_ids), "theme", "light")
                return 1

            def r_create() -> int:
                redis_create(r)
                return 1

            def r_get() -> int:
                r.hgetall(next(redis_ids))  # type: ignore[union-attr, arg-type]
                return 1

            def r_set() -> int:
                r.hset(next(redis_ids), "meta.theme", "light")  # type: ignore[union-attr, arg-type]
                return 1

            have = r is not None
            res = _interleave(ctx, {
                "create": (o_create, r_create if have else None),
                "get": (o_get, r_get if have else None),
                "set": (o_set, r_set if have else None),
                "list": (_ListWalkOurs(c), _ListWalkRedis(r) if have else None),
            })
        finally:
            if r is not None:
                r.close()
    targets = {"create": 1.5, "get": 1.0, "set": 1.0}
    for name in ("create", "get", "set"):
        ours, anchor = res[name]
        row = Row(f"sequential {name}", "op/s", ours, anchor, "redis")
        if anchor is not None:
            row.want_ratio(at_least=targets[name])
        else:
            row.target, row.note = f">={targets[name]:g}x", "no Redis anchor"
        ctx.add(row)
    ours, anchor = res["list"]
    ctx.add(Row(
        f"sequential list-page({PAGE})", "op/s", ours / PAGE,
        anchor / PAGE if anchor is not None else None, "redis",
        note="pages/s, counted as rows/100; ours walks with the cursor"
        + ("; Redis: SCAN COUNT 100 (about 100 keys), then one pipelined HGETALL each"
           if anchor is not None else ""),
    ))


def case_pipelined(ctx: Ctx) -> None:
    """100 requests a round trip: our ``pipeline()`` vs redis-py pipeline(transaction=False)."""
    with ctx.main.client() as c:
        r = ctx.redis_es.client() if ctx.redis_es else None
        try:
            ours_ids = itertools.cycle(bulk_create_ours(c, 2000))
            redis_ids = itertools.cycle(bulk_create_redis(r, 2000)) if r is not None else None

            def o_batch(kind: str) -> Callable[[], int]:
                def run() -> int:
                    with c.pipeline() as p:
                        if kind == "create":
                            pend = [p.create(user=USER, ttl=TTL, meta=META) for _ in range(DEPTH)]
                        elif kind == "get":
                            pend = [p.get(next(ours_ids)) for _ in range(DEPTH)]
                        else:
                            pend = [p.set(next(ours_ids), "theme", "light") for _ in range(DEPTH)]
                    for x in pend:
                        settled(x)
                    return DEPTH
                return run

            def r_batch(kind: str) -> Callable[[], int]:
                assert r is not None and redis_ids is not None

                def run() -> int:
                    p = r.pipeline(transaction=False)
                    now = now_us()
                    for _ in range(DEPTH):
                        if kind == "create":
                            sid = new_id()
                            p.hset(sid, mapping=redis_fields(sid, USER, TTL, now))
                            p.expire(sid, TTL)
                        elif kind == "get":
                            p.hgetall(next(redis_ids))
                        else:
                            p.hset(next(redis_ids), "meta.theme", "light")
                    p.execute()
                    return DEPTH
                return run

            kinds = ("create", "get", "set")
            res = _interleave(ctx, {
                k: (o_batch(k), r_batch(k) if r is not None else None) for k in kinds
            })
        finally:
            if r is not None:
                r.close()
    for k in kinds:
        ours, anchor = res[k]
        row = Row(f"pipelined x{DEPTH} {k}", "op/s", ours, anchor, "redis pipeline")
        if anchor is not None:
            row.want_ratio(at_least=2.0)
        else:
            row.target, row.note = ">=2x", "no Redis anchor"
        if k == "create" and anchor is not None:
            row.note = "Redis create here is HSET+EXPIRE in a non-transactional pipeline"
        ctx.add(row)


def _pools(
    ctx: Ctx, ours: Sequence[Path], anchor: Sequence[Path], procs: int, threads: int = 1
) -> tuple[WorkerPool, WorkerPool | None]:
    return (
        WorkerPool("ours", [str(a) for a in ours], procs, threads),
        WorkerPool("redis", [str(a) for a in anchor], procs, threads) if anchor else None,
    )


Config = tuple[int, int | None]  # (our server, anchor server or None), pool indices


def _rates(
    ctx: Ctx, ours: WorkerPool, anchor: WorkerPool | None, op: str,
    configs: dict[str, tuple[int, Config]],
) -> dict[str, tuple[float, float | None]]:
    """Aggregate rate of each config (processes, servers): medians over
    interleaved windows (ours, anchor, ours, anchor...)."""
    w = ctx.prof.window
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in configs}
    for rnd in range(ctx.prof.proc_rounds):
        log(f"  {op}: round {rnd + 1}/{ctx.prof.proc_rounds}")
        for name, (n, (o_target, a_target)) in configs.items():
            samples[name][0].append(
                sum(x.rate for x in ours.run(op, w, procs=n, target=o_target))
            )
            if anchor is not None and a_target is not None:
                samples[name][1].append(
                    sum(x.rate for x in anchor.run(op, w, procs=n, target=a_target))
                )
    return {k: (median(o), median(a) if a else None) for k, (o, a) in samples.items()}


def case_concurrent(ctx: Ctx) -> None:
    """8 and 16 client processes, each its own connection, creating and setting."""
    anchors = [ctx.redis_es.socket] if ctx.redis_es else []
    ours, anchor = _pools(ctx, [ctx.main.socket], anchors, 16)
    with ours, anchor if anchor is not None else _NoServer():
        res = _rates(ctx, ours, anchor, "write", {"8": (8, (0, 0)), "16": (16, (0, 0))})
    for n, (ours_rate, anchor_rate) in res.items():
        ctx.add(Row(
            f"{n} client processes create/set", "op/s", ours_rate, anchor_rate, "redis",
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
        configs: dict[str, tuple[int, Config]] = {}
        for i, policy in enumerate(daemons):
            rd = anchors.get(policy)
            a_target = redis_servers.index(rd) if rd is not None else None
            for n in (1, 16):
                configs[f"{policy}/{n}"] = (n, (i, a_target))
        ours, anchor = _pools(
            ctx, [sd.socket for sd in daemons.values()], [rd.socket for rd in redis_servers], 16
        )
        with ours, anchor if anchor is not None else _NoServer():
            res = _rates(ctx, ours, anchor, "set", configs)
    for policy in daemons:
        for n in (1, 16):
            ours_rate, anchor_rate = res[f"{policy}/{n}"]
            label = f"redis appendfsync {policy}" if policy in anchors else ""
            row = Row(
                f"fsync {policy}: set, {n} client{'s' if n > 1 else ''}", "op/s", ours_rate,
                anchor_rate, label,
            )
            if policy == "always" and n == 1:
                if anchor_rate is not None:
                    row.want_ratio(at_least=1.0)
                else:
                    row.target, row.note = ">=1x", "no Redis anchor"
            if policy == "no":
                row.note = "Redis not run with appendfsync no"
            ctx.add(row)
    o1, a1 = res["always/1"]
    o16, a16 = res["always/16"]
    ctx.add(Row(
        "fsync always: 16 clients / 1 client", "x", o16 / o1,
        a16 / a1 if a1 and a16 else None, "redis",
        note="group commit: one fsync for every batch that queued behind the last one",
    ).want_value(at_least=3.0))


def case_latency(ctx: Ctx) -> None:
    """p99 of get/set with 1, 16 and 256 concurrent clients (closed loop)."""
    w = ctx.prof.window
    shapes = {1: (1, 1), 16: (16, 1), 256: (16, 16)}  # clients: (processes, threads each)
    anchors = [ctx.redis_es.socket] if ctx.redis_es else []
    ours, anchor = _pools(ctx, [ctx.main.socket], anchors, 16, 16)
    p99: dict[int, tuple[list[float], list[float]]] = {n: ([], []) for n in shapes}
    p50: dict[int, list[float]] = {n: [] for n in shapes}
    with ours, anchor if anchor is not None else _NoServer():
        for rnd in range(ctx.prof.proc_rounds):
            log(f"  latency: round {rnd + 1}/{ctx.prof.proc_rounds}")
            for n, (procs, threads) in shapes.items():
                lat = sorted(latencies(ours.run("getset", w, procs=procs, threads=threads)))
                p99[n][0].append(pct(lat, 0.99) * 1000)
                p50[n].append(pct(lat, 0.50) * 1000)
                if anchor is not None:
                    a_lat = sorted(latencies(anchor.run("getset", w, procs=procs, threads=threads)))
                    p99[n][1].append(pct(a_lat, 0.99) * 1000)
    for n, (o, a) in p99.items():
        procs, threads = shapes[n]
        shape = f"{procs} process{'es' if procs > 1 else ''}" + (
            f" x {threads} threads" if threads > 1 else ""
        )
        ctx.add(Row(
            f"latency p99, {n} client{'s' if n > 1 else ''}", "ms", median(o),
            median(a) if a else None, "redis", lower_is_better=True,
            note=f"get/set alternating, back to back; {shape}; our p50 {median(p50[n]):.2f} ms; "
            "all 256 connections stay open throughout",
        ))


def _idle_connections_ours(sd: Sessiond, n: int) -> tuple[int, int]:
    with sd.client() as probe:
        probe.ping()
        time.sleep(0.2)
        before = sd.rss()
        clients = []
        try:
            for _ in range(n):
                clients.append(sd.client())
                clients[-1].ping()
            time.sleep(0.3)
            after = sd.rss()
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
    time.sleep(0.2)
    before = rd.rss()
    conns = []
    try:
        for _ in range(n):
            conn = connection(path=str(rd.socket), socket_timeout=30)
            conn.connect()
            conn.send_command("PING")
            conn.read_response()
            conns.append(conn)
        time.sleep(0.3)
        after = rd.rss()
    finally:
        for conn in conns:
            conn.disconnect()
    return before, after


def case_connections(ctx: Ctx) -> None:
    """RSS per idle connection, on fresh servers (reused memory would hide it)."""
    n = 256
    anchor = None
    with Sessiond(ctx.tmp / "conn") as sd, _maybe_redis(ctx, "conn-redis", "everysec") as rd:
        sd.spawn()
        if rd is not None:
            rd.start()
        sd.wait_ready()
        before, after = _idle_connections_ours(sd, n)
        if rd is not None:
            rb, ra = _idle_connections_redis(rd, n)
            anchor = (ra - rb) / n
    ctx.add(Row(
        f"memory per idle connection ({n} open)", "B", (after - before) / n, anchor, "redis",
        lower_is_better=True, note="VmRSS delta / 256, each connection past its hello/ping",
    ))


def case_cli(ctx: Ctx) -> None:
    """``sessionctl get ID`` as a whole process vs the interpreter's floor."""
    with ctx.main.client() as c:
        sid = c.create(user=USER, ttl=TTL, meta=META).id
    env = ctx.main.env
    python = sys.executable
    floor_cmd = [python, "-c", "import msgspec, socket"]
    ours_cmd = [python, str(SESSIONCTL), "get", sid]

    def timed(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd, env=env, capture_output=True, timeout=SUBPROCESS_TIMEOUT, check=False
        )
        dt = time.perf_counter() - t0
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace")[:300]
            raise BenchError(f"{' '.join(cmd[1:])} exited {done.returncode}: {err}")
        return dt * 1000

    for _ in range(2):  # warm the page cache for both
        timed(floor_cmd)
        timed(ours_cmd)
    floor, ours = [], []
    for _ in range(ctx.prof.cli_runs):
        floor.append(timed(floor_cmd))
        ours.append(timed(ours_cmd))
    ctx.add(Row(
        "sessionctl get ID (whole process)", "ms", median(ours), median(floor),
        'python -c "import msgspec, socket"', lower_is_better=True,
        note=f"median of {ctx.prof.cli_runs} interleaved runs, same interpreter for both",
    ).want_ratio(at_most=1.2))


# -- the big data set: restart, memory, journal size, compaction ----------


def write_journal(path: Path, ids: Sequence[str]) -> None:
    """A compacted journal, exactly as the daemon writes one (put_line)."""
    now = now_us()
    expires = now + BIG_TTL * US
    meta = dict(META)
    with path.open("wb") as f:
        chunk: list[bytes] = []
        for i, sid in enumerate(ids):
            chunk.append(put_line(Session(
                id=sid, user=f"user{i % 1000}", status=ACTIVE, ttl=BIG_TTL, meta=meta,
                created_at=now, last_access=now, expires_at=expires,
            )))
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))
    path.chmod(0o600)


def _bulk(x: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(x), x)


def load_redis(rd: RedisServer, ids: Sequence[str]) -> None:
    """Redis's mass insertion: raw RESP HSET + EXPIRE, replies checked per chunk."""
    now = now_us()
    exp = now + BIG_TTL * US
    ttl_b = str(BIG_TTL).encode()
    fixed: list[bytes] = [
        b"status", b"active", b"ttl", ttl_b, b"created_at", str(now).encode(),
        b"last_access", str(now).encode(), b"expires_at", str(exp).encode(), b"version", b"1",
    ]
    for k, v in META.items():
        fixed += [b"meta." + k.encode(), str(v).encode()]
    # Only the id and the user change from one record to the next.
    hset = b"*%d\r\n$4\r\nHSET\r\n" % (6 + len(fixed))
    fixed_tail = b"".join(_bulk(x) for x in fixed)
    expire = b"*3\r\n$6\r\nEXPIRE\r\n"
    ttl_tail = _bulk(ttl_b)
    chunk_size = 2000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REQUEST_TIMEOUT)
        s.connect(str(rd.socket))
        for start in range(0, len(ids), chunk_size):
            part = ids[start : start + chunk_size]
            out: list[bytes] = []
            for j, sid in enumerate(part):
                key = _bulk(sid.encode())
                user = _bulk(b"user%d" % ((start + j) % 1000))
                out += [hset, key, b"$2\r\nid\r\n", key, b"$4\r\nuser\r\n", user, fixed_tail,
                        expire, key, ttl_tail]
            s.sendall(b"".join(out))
            buf = b""
            while buf.count(b"\r\n") < 2 * len(part):
                data = s.recv(1 << 20)
                if not data:
                    raise BenchError(f"{rd.name} closed the connection during mass insertion")
                buf += data
            bad = [line for line in buf.split(b"\r\n") if line and not line.startswith(b":")]
            if bad:
                raise BenchError(f"{rd.name} refused mass insertion: {bad[0][:200]!r}")


def _probe_window(
    pool: WorkerPool, action: Callable[[], object], baseline: float
) -> tuple[list[float], list[float], float, object]:
    """Latencies (ms) of a probing client's gets before and during ``action``."""
    pool.start("get", None, timestamps=True)
    time.sleep(baseline)
    t0 = time.monotonic()
    result = action()
    t1 = time.monotonic()
    time.sleep(0.3)
    pool.stop()
    pairs = sent_and_lat(pool.collect())
    before = sorted(lat * 1000 for sent, lat in pairs if sent + lat < t0)
    during = sorted(lat * 1000 for sent, lat in pairs if sent < t1 and sent + lat > t0)
    if not during or not before:
        raise BenchError("the probe made no request before or during the measured action")
    return before, during, t1 - t0, result


def case_big(ctx: Ctx) -> None:
    prof = ctx.prof
    n = prof.big_n
    label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    at_full = n >= 1_000_000
    ids = [new_id() for _ in range(n)]
    with Sessiond(ctx.tmp / "big") as sd, _maybe_redis(ctx, "big-redis", "everysec") as rd:
        sd.spawn()
        if rd is not None:
            rd.start()
        sd.wait_ready()
        time.sleep(0.2)
        rss_empty = sd.rss()
        r_empty = rd.rss() if rd is not None else 0
        sd.stop()
        # The journal is written by a child process while Redis takes the same records.
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
        del ids
        # The first start is on a journal alone (no snapshot: as an older
        # sessiond or another tool leaves one), so it counts with the starts
        # from the journal alone below.
        journal_starts = [sd.start(BIG_START_TIMEOUT)]
        with sd.client() as c:
            st = c.stats()
        if st.total_sessions != n:
            raise BenchError(f"daemon loaded {st.total_sessions} sessions, expected {n}")
        log(f"  first start on it: {journal_starts[0]:.2f}s")
        r_rss_per: float | None = None

        # Compaction under a probing client, ours then Redis's BGREWRITEAOF.
        compaction_s: list[float] = []
        worst: list[float] = []
        p99s: list[float] = []
        base_worst: list[float] = []
        r_rewrite_s: list[float] = []
        r_worst: list[float] = []
        r_p99: list[float] = []
        ours_probe = WorkerPool("ours", [str(sd.socket)], 1)
        redis_probe = WorkerPool("redis", [str(rd.socket)], 1) if rd is not None else None
        with ours_probe, redis_probe if redis_probe is not None else _NoServer():
            for rnd in range(prof.compactions):
                log(f"  compaction round {rnd + 1}/{prof.compactions}")
                with sd.client(timeout=BIG_START_TIMEOUT) as c:
                    before, during, _, result = _probe_window(
                        ours_probe, c.compact, prof.probe_baseline
                    )
                compaction_s.append(result.seconds)  # type: ignore[attr-defined]
                worst.append(during[-1])
                p99s.append(pct(during, 0.99))
                base_worst.append(before[-1])
                if rd is not None and redis_probe is not None:
                    _, r_during, seconds, _ = _probe_window(
                        redis_probe, lambda: rd.rewrite_aof(BIG_START_TIMEOUT),
                        prof.probe_baseline,
                    )
                    r_rewrite_s.append(seconds)
                    r_worst.append(r_during[-1])
                    r_p99.append(pct(r_during, 0.99))
        with sd.client() as c:
            # The lines: the file runs ahead of them by the space it reserves.
            journal_bytes = c.stats().journal_bytes
        snap = sd.journal.with_suffix(".snap")
        if not snap.is_file():
            raise BenchError(f"the compaction wrote no snapshot:\n{tail(sd.log_path)}")
        snap_bytes = snap.stat().st_size
        r_aof = rd.aof_bytes() if rd is not None else None
        sd.stop()
        if rd is not None:
            rd.stop()

        # Restarts, interleaved: ours after its own compaction (snapshot, then
        # the journal after it), ours from the journal alone (the snapshot
        # set aside), Redis from its rewritten AOF.
        r_restart: list[float] = []
        if prof.restarts < 1:
            raise BenchError("the profile needs at least one restart (memory is read after it)")
        ours_starts: list[float] = []
        rss_full = rss_journal = 0
        aside = snap.with_name(snap.name + ".aside")
        rounds = prof.restarts + 1  # as many starts of each kind as there used to be in all
        for rnd in range(rounds):
            log(f"  restart round {rnd + 1}/{rounds}")
            ours_starts.append(sd.start(BIG_START_TIMEOUT))
            if rnd == 0:
                time.sleep(0.3)
                rss_full = sd.rss()
                with sd.client() as c:
                    st = c.stats()
                # Each probing client added a session of its own.
                if not n <= st.total_sessions <= n + prof.compactions:
                    raise BenchError(f"daemon loaded {st.total_sessions} sessions, expected {n}")
            sd.stop()
            snap.rename(aside)
            try:
                journal_starts.append(sd.start(BIG_START_TIMEOUT))
                if rnd == 0:
                    time.sleep(0.3)
                    rss_journal = sd.rss()
                sd.stop()
            finally:
                aside.rename(snap)
            if rd is not None:
                r_restart.append(rd.start(BIG_START_TIMEOUT))
                if rnd == 0:
                    time.sleep(0.3)
                    r_rss_per = (rd.rss() - r_empty) / n
                    r = rd.client()
                    try:
                        # Each probing client added a key of its own.
                        if not n <= r.dbsize() <= n + prof.compactions:
                            raise BenchError(f"Redis reloaded {r.dbsize()} keys, expected {n}")
                    finally:
                        r.close()
                rd.stop()

    loaded = sd.log_path.read_text(errors="replace").count(" from snapshot data.snap ")
    if loaded != len(ours_starts):
        raise BenchError(f"{loaded} of {len(ours_starts)} restarts loaded the snapshot:\n"
                         f"{tail(sd.log_path)}")
    restart = Row(
        f"restart with {label} sessions", "s", median(ours_starts),
        median(r_restart) if r_restart else None, "redis, rewritten AOF", lower_is_better=True,
        note=f"exec until ping answers; median of {len(ours_starts)} starts after the daemon's "
        "own compaction (its snapshot, then the journal after it)"
        + (f", {len(r_restart)} Redis restarts" if r_restart else ""),
    )
    if at_full:
        restart.want_value(at_most=1.3)
    else:
        restart.target = "<=1.30 s at 1M"
    ctx.add(restart)
    ctx.add(Row(
        f"start from the journal alone ({label})", "s", median(journal_starts),
        median(r_restart) if r_restart else None, "redis, rewritten AOF", lower_is_better=True,
        note=f"no snapshot beside the compacted journal; median of {len(journal_starts)} starts "
        "(the first on a journal written by put_line, the others with the snapshot set aside)",
    ))
    ctx.add(Row(
        f"memory per session ({label})", "B", (rss_full - rss_empty) / n, r_rss_per, "redis",
        lower_is_better=True, note="(VmRSS after restart - VmRSS empty) / sessions; 2-entry meta; "
        f"after a start from the journal alone: {(rss_journal - rss_empty) / n:.0f} B",
    ).want_value(at_most=480))
    ctx.add(Row(
        f"journal size ({label})", "B", journal_bytes / n,
        r_aof / n if r_aof is not None else None, "redis AOF", lower_is_better=True,
        note=f"bytes per session after compaction; ours {journal_bytes / 2**20:.0f} MiB in all, "
        f"and a snapshot beside it of {snap_bytes / n:.0f} B a session",
    ))
    ctx.add(Row(
        f"compaction of {label} sessions", "s", median(compaction_s),
        median(r_rewrite_s) if r_rewrite_s else None, "redis BGREWRITEAOF", lower_is_better=True,
        note="Client.compact(); the daemon's own figure",
    ))
    ctx.add(Row(
        f"worst get during compaction ({label})", "ms", max(worst),
        max(r_worst) if r_worst else None, "redis during BGREWRITEAOF", lower_is_better=True,
        note=f"a separate client doing gets; worst in the {prof.probe_baseline:g} s before: "
        f"{max(base_worst):.1f} ms",
    ).want_value(at_most=50))
    ctx.add(Row(
        f"p99 get during compaction ({label})", "ms", median(p99s),
        median(r_p99) if r_p99 else None, "redis during BGREWRITEAOF", lower_is_better=True,
    ))


class _NoServer:
    def __enter__(self) -> None:
        return None

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def _maybe_redis(ctx: Ctx, name: str, appendfsync: str) -> RedisServer | _NoServer:
    return RedisServer(ctx.tmp / name, appendfsync) if ctx.redis_ok else _NoServer()


# -- expiry --------------------------------------------------------------


def case_expiry(ctx: Ctx) -> None:
    """Deadlines spread evenly over 10 s while two clients keep writing."""
    n = ctx.prof.expiry_n
    spread = 10.0
    chunk = 1000
    wall_minus_mono = time.time() - time.monotonic()
    with Sessiond(ctx.tmp / "expiry") as sd:
        sd.start()
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
                    exp = settled(x).expires_at
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
    ctx.add(Row(
        f"expiry lag p99 ({size} over 10 s)", "ms", st.expiry_lag_p99_ms,
        lower_is_better=True, note=note,
    ).want_value(at_most=50, strict=True))
    ctx.add(Row(
        f"expiry lag worst ({size} over 10 s)", "ms", st.expiry_lag_max_ms,
        lower_is_better=True, note=note,
    ).want_value(at_most=250, strict=True))
    ctx.add(Row(
        "request p99 while expiring", "ms", pct(during, 0.99), lower_is_better=True,
        note=f"2 writers (create/set); worst {during[-1]:.1f} ms over {len(during)} requests",
    ))


# -- the legacy shim -----------------------------------------------------


def case_shim(ctx: Ctx) -> None:
    n = ctx.prof.shim_n
    if not SHIM.is_file():
        raise Skip("scripts/script.sh does not exist (yet)")
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

        def run(sd: Sessiond, *args: str) -> float:
            env = sd.env
            env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
            t0 = time.perf_counter()
            try:
                done = subprocess.run(
                    ["bash", str(SHIM), *args], env=env, capture_output=True,
                    timeout=SUBPROCESS_TIMEOUT, check=False,
                )
            except subprocess.TimeoutExpired:
                raise Skip(
                    f"'script.sh {' '.join(args)}' did not finish in {SUBPROCESS_TIMEOUT:g}s"
                ) from None
            dt = (time.perf_counter() - t0) * 1000
            what = f"'script.sh {args[0]}'"
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
            return dt

        samples: dict[str, list[float]] = {k: [] for k in ("get1", "getN", "set1", "setN")}
        for i in range(ctx.prof.shim_runs + 1):
            got = {
                "get1": run(small, "get", sid_small),
                "getN": run(big, "get", sid_big),
                "set1": run(small, "set", sid_small, "theme", f"t{i}"),
                "setN": run(big, "set", sid_big, "theme", f"t{i}"),
            }
            if i:  # the first round only warms up
                for k, v in got.items():
                    samples[k].append(v)
    m = {k: median(v) for k, v in samples.items()}
    size = f"{n // 1000}k"
    ctx.add(Row("shim get, 1 session", "ms", m["get1"], REF_LEGACY_EMPTY_MS, reference=True,
                lower_is_better=True, note="legacy tool, empty store"))
    ctx.add(Row("shim set, 1 session", "ms", m["set1"], REF_LEGACY_EMPTY_MS, reference=True,
                lower_is_better=True, note="legacy tool, empty store"))
    ctx.add(Row(f"shim get, {size} sessions", "ms", m["getN"], REF_LEGACY_GET_100K_MS,
                reference=True, lower_is_better=True, note="legacy tool at 100k sessions"))
    ctx.add(Row(f"shim set, {size} sessions", "ms", m["setN"], REF_LEGACY_SET_100K_MS,
                reference=True, lower_is_better=True, note="legacy tool at 100k sessions"))
    # "Must not grow with the session count": flat within the noise of
    # starting processes on a shared machine.
    for op in ("get", "set"):
        ctx.add(Row(
            f"shim {op}: {size} / 1 session", "x", m[f"{op}N"] / m[f"{op}1"], lower_is_better=True,
            note=f"median of {ctx.prof.shim_runs} interleaved runs each",
        ).want_value(at_most=1.25))


# -- the run -------------------------------------------------------------

CASES: dict[str, Callable[[Ctx], None]] = {
    "sequential": case_sequential,
    "pipelined": case_pipelined,
    "concurrent": case_concurrent,
    "fsync": case_fsync,
    "latency": case_latency,
    "connections": case_connections,
    "cli": case_cli,
    "big": case_big,
    "expiry": case_expiry,
    "shim": case_shim,
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return f"unknown ({platform.machine()}; /proc/cpuinfo names no model)"


def filesystem_of(path: Path) -> str:
    best, fstype = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sessiond benchmark: ours vs anchors, with targets")
    p.add_argument("--quick", action="store_true", help="a small version, under a minute")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results to FILE")
    p.add_argument("--only", metavar="CASES", help=f"comma-separated subset of: {', '.join(CASES)}")
    p.add_argument("--no-redis", action="store_true",
                   help="leave out the Redis anchors even when Redis is installed")
    args = p.parse_args(argv)
    if args.only:
        args.only = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = sorted(set(args.only) - set(CASES))
        if unknown:
            p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prof = QUICK if args.quick else FULL
    for exe in (SESSIOND, SESSIONCTL):
        if not exe.exists():
            print(f"bench: {exe.name} not found next to {sys.executable}; run this with the "
                  "project's virtual environment", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or (soft < hard and soft < 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    signal.signal(signal.SIGTERM, _raise_interrupt)

    started = time.time()
    if args.no_redis:
        redis_ok, redis_line = False, "Redis anchors left out (--no-redis); ours shown alone"
    else:
        redis_ok, redis_line = redis_status()
    tmp = Path(tempfile.mkdtemp(prefix="sdbench-"))
    rows: list[Row] = []
    machine: dict[str, Any] = {}
    case_seconds: dict[str, float] = {}
    interrupted = False
    try:
        main_sd = Sessiond(tmp / "main")
        main_sd.start()
        redis_es = RedisServer(tmp / "redis-everysec", "everysec") if redis_ok else None
        redis_al = RedisServer(tmp / "redis-always", "always") if redis_ok else None
        for rd in (redis_es, redis_al):
            if rd is not None:
                rd.start()
        with main_sd.client() as c:
            loop = c.stats().event_loop
        machine = {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "event_loop": loop,
            "kernel": platform.release(),
            "temp_fs": filesystem_of(tmp),
            "load_avg_at_start": os.getloadavg(),
            "redis": redis_line,
        }
        print(f"sessiond bench ({prof.name})")
        print(f"machine: {machine['cpu']}, {machine['cores']} cores "
              f"({machine['usable_cores']} usable), {machine['python']}, "
              f"event loop {loop}, kernel {machine['kernel']}")
        print(f"temp dirs on {machine['temp_fs']}; load average at start "
              + " ".join(f"{x:.2f}" for x in machine["load_avg_at_start"]))
        print(f"anchors: {redis_line}; appendonly yes, appendfsync everysec "
              "(and always for the fsync case)" if redis_ok else f"anchors: {redis_line}")
        if not args.only or "big" in args.only:
            print(f"big data set: {prof.big_n} sessions with a 2-entry meta, written directly "
                  "as a compacted journal with sessiond.records.put_line"
                  + ("; Redis gets the same records by mass insertion (raw RESP HSET+EXPIRE) "
                     "and a BGREWRITEAOF" if redis_ok else ""))
        print(flush=True)
        ctx = Ctx(prof, tmp, rows, redis_ok, main_sd, redis_es, redis_al)
        for name, fn in CASES.items():
            if args.only and name not in args.only:
                continue
            log(f"case {name}")
            case_started = time.monotonic()
            try:
                fn(ctx)
            except Skip as exc:
                log(f"  skipped: {exc}")
                rows.append(Row(name, "", None, status="skipped", note=str(exc)))
            except Exception as exc:
                # One broken case (often a product error, a SessionError) must
                # not hide the others' results: report it and go on.
                traceback.print_exc(file=sys.stderr)
                rows.append(
                    Row(name, "", None, status="error", note=f"{type(exc).__name__}: {exc}")
                )
            finally:
                case_seconds[name] = round(time.monotonic() - case_started, 1)
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        REAPER.cleanup()
        try:
            shutil.rmtree(tmp)
        except OSError as exc:
            print(f"bench: could not remove {tmp}: {exc}", file=sys.stderr)
    elapsed = time.time() - started
    print(render_table(rows))
    if any(r.reference for r in rows):
        print(REF_NOTE)
    notes = [r for r in rows if r.note]
    if notes:
        print("\nnotes:")
        for r in notes:
            print(f"  {r.case}: {r.note}")
    print(f"\n{prof.name} run took {elapsed:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({
            "profile": asdict(prof),
            "machine": machine,
            "started_at": started,
            "elapsed_seconds": elapsed,
            "interrupted": interrupted,
            "case_seconds": case_seconds,
            "rows": [r.as_json() for r in rows],
        }, indent=2) + "\n")
    if interrupted:
        return 130
    failed = any(r.status == "error" or r.passed is False for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
