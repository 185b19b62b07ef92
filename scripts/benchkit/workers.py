"""Client processes for the multi-client cases: a pool of forked processes
that connect once (so connecting is never timed) and then run timed windows
on command, all starting at the same instant, and send back their rates and
latencies. Each process is its own interpreter: one Python client process
cannot saturate a server, and threads of one would share one GIL."""

from __future__ import annotations

import array
import math
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from benchkit.anchor import redis_create
from benchkit.procs import REAPER, stop_processes
from benchkit.settings import (
    CONNECT_TIMEOUT,
    META,
    REQUEST_TIMEOUT,
    RESULT_GRACE,
    TTL,
    USER,
    BenchError,
)
from sessionctl import Client


@dataclass
class WorkerResult:
    rate: float = 0.0  # requests per second, summed over the worker's threads
    ops: int = 0
    lat: bytes = b""  # array('d') of seconds
    sent: bytes = b""  # array('d') of time.monotonic() at send
    error: str | None = None


class _Ops:
    """The operations a window runs, on one connection with a session of its own."""

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
        self.c = Client(address, timeout=REQUEST_TIMEOUT, autostart=False)
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


def _run_window(clients: Sequence[_Ops], run: _Run, stop: Any) -> WorkerResult:
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
    return WorkerResult(
        rate=sum(t.ops / t.elapsed for t in tallies if t.elapsed > 0),
        ops=sum(t.ops for t in tallies),
        lat=b"".join(t.lat.tobytes() for t in tallies),
        sent=b"".join(t.sent.tobytes() for t in tallies),
    )


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
            conn.send(_run_window(per_server[run.target], run, stop))
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
        ctx = multiprocessing.get_context("fork")  # cheap, and no re-import of the bench
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
        if t is None:  # a clean exit: each worker closes its connections and returns
            for conn, proc in zip(self.conns, self.procs, strict=True):
                if proc.is_alive():
                    try:
                        conn.send(None)
                    except OSError as exc:  # it died already: join below reports nothing more
                        print(f"bench: client process {proc.pid}: {exc}", file=sys.stderr)
            for proc in self.procs:
                proc.join(10)
        stop_processes(self.procs)  # on an error or Ctrl-C, or a worker that hung
        for proc in self.procs:
            if proc in REAPER.workers:
                REAPER.workers.remove(proc)
        for conn in self.conns:
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
