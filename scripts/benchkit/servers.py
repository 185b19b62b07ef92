"""The servers a run starts: ``sessiond`` and ``redis-server``, each on its
own temporary Unix socket and directory, each stopped on exit from its
``with`` block (and by the reaper whatever happens)."""

from __future__ import annotations

import os
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from benchkit.procs import Server
from benchkit.settings import POLL, REQUEST_TIMEOUT, SESSIOND, START_TIMEOUT, BenchError
from sessionctl import Client
from sessiond.errors import DaemonUnavailable


class Sessiond(Server):
    """One ``sessiond`` on its own socket, data dir and config: on its
    journal, or with ``backend`` (a URL) on that shared engine's
    ``namespace``, where the engine's own appendfsync stands for ``fsync``."""

    def __init__(
        self, root: Path, fsync: str = "everysec", *, backend: str | None = None,
        namespace: str = "default",
    ) -> None:
        self.name = f"sessiond[{root.name}]"
        self.root = root
        self.fsync = fsync
        self.backend = backend
        self.namespace = namespace
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
        self._exec_at = time.monotonic()
        # Shared mode refuses --fsync (the engine's appendfsync rules there).
        mode = (["--backend", self.backend, "--namespace", self.namespace]
                if self.backend is not None else ["--fsync", self.fsync])
        self._spawn([str(SESSIOND), *mode], self.env, self.log_path)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        t0 = self._exec_at
        deadline = t0 + timeout
        while True:
            self._check_alive()
            try:
                # Never autostart: a client that finds the socket not bound
                # yet would start a daemon of its own on it (everysec, in the
                # user's data dir), the bench's would exit for want of its
                # socket, and the rows would measure the stray.
                with Client(self.socket, timeout=5, autostart=False) as c:
                    c.ping()
                return time.monotonic() - t0
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise self._late(timeout) from None
                time.sleep(POLL)

    def client(self, timeout: float = REQUEST_TIMEOUT) -> Client:
        return Client(self.socket, timeout=timeout, autostart=False)

    def __enter__(self) -> Sessiond:
        return self


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

        t0 = time.monotonic()
        self._spawn([_redis_server(), str(self.conf)], dict(os.environ),
                    self.root / "redis.stdout")
        deadline = t0 + timeout
        while True:
            self._check_alive()
            r = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)
            try:
                if r.ping():
                    return time.monotonic() - t0
            except redis.exceptions.ConnectionError:  # includes LOADING
                if time.monotonic() > deadline:
                    raise self._late(timeout) from None
                time.sleep(POLL)
            finally:
                r.close()

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), db=db,
                           socket_timeout=REQUEST_TIMEOUT)

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
                            f"{self.name}: BGREWRITEAOF failed:\n{self.log_tail()}"
                        )
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    raise BenchError(f"{self.name}: BGREWRITEAOF still running after {timeout:g}s")
                time.sleep(0.01)
        finally:
            r.close()

    def __enter__(self) -> RedisServer:
        return self


def start_both(sd: Sessiond, rd: RedisServer | None) -> None:
    """Start a sessiond and (when there is one) a Redis side by side."""
    sd.spawn()
    if rd is not None:
        rd.start()
    sd.wait_ready()


def maybe_redis(
    tmp: Path, redis_ok: bool, name: str, appendfsync: str
) -> AbstractContextManager[RedisServer | None]:
    """A fresh Redis for a case when the anchors run; None (in a ``with``) otherwise."""
    return RedisServer(tmp / name, appendfsync) if redis_ok else nullcontext()
