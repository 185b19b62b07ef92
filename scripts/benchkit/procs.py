"""The processes a run starts, and the guarantee that none outlives it:
every server and client process is registered with the ``REAPER``, which
stops them all on exit, Ctrl-C or error; if the bench itself is SIGKILLed,
the kernel stops its servers (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

from benchkit.settings import STOP_TIMEOUT, BenchError

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
        stop_processes(self.workers)
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


def stop_processes(procs: Sequence[BaseProcess]) -> None:
    """Terminate, then kill, every one still alive: all at once, since
    waiting for each in turn would keep an interrupted run waiting seconds
    a process."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


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

    def settled_rss(self, wait: float = 0.3) -> int:
        """VmRSS after a moment's rest (allocator caches, a last reply sent)."""
        time.sleep(wait)
        return self.rss()

    def _spawn(self, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        if self.proc is not None:
            raise BenchError(f"{self.name} is already running")
        self.proc = REAPER.popen(argv, env=env, log_path=log_path)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.proc.returncode}:\n{tail(self.log_path)}"
            )

    def log_tail(self) -> str:
        return tail(self.log_path)

    def _late(self, timeout: float) -> BenchError:
        return BenchError(f"{self.name} did not answer within {timeout:g}s:\n{self.log_tail()}")

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
