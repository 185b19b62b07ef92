"""Real Redis servers for the shared-mode tests: one node, and a cluster of
three masters, each on loopback ports (or a Unix socket) of its own, in a
temporary directory, started and stopped by the tests themselves.

``redis-server`` and ``redis-cli`` must be installed (``.ci/run`` installs
Debian's ``redis-server``); a missing binary fails the tests that need it
with a message saying so, rather than skipping them in silence.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 15.0
# The cluster bus listens on the port + 10000: both stay below Linux's
# default ephemeral range (32768 up), from which every outgoing connection
# of the suite (a daemon's, redis-cli's) takes its local port.
PORT_RANGE = (20000, 22768)
# Tries at a start whose chosen port another process took in between.
START_TRIES = 5


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: the shared-mode tests run real Redis servers "
            f"(apt-get install -y redis-server)"
        )
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _worker_range() -> tuple[int, int]:
    """This test process's share of PORT_RANGE: under pytest-xdist each
    worker draws from its own, so that two never pick one port at once."""
    low, high = PORT_RANGE
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1")
    if not worker.startswith("gw") or count < 2:
        return low, high
    share = (high - low) // count
    start = low + int(worker[2:]) % count * share
    return start, start + share


def free_port() -> int:
    """A loopback port that is free, and whose cluster-bus twin is too."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.randrange(*_worker_range())
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free loopback port found for a Redis server")


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if callable(predicate) and predicate():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class RedisNode:
    """One ``redis-server`` process."""

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        unix: bool = False,
        cluster: bool = False,
        appendonly: bool = False,
        password: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = 0 if unix else (port or free_port())
        # A port of our choosing may be taken by another process between
        # the choice and the bind: the first start chooses again then.
        self._chosen = not unix and not port
        self.unix = unix
        self.cluster = cluster
        self.appendonly = appendonly
        self.password = password  # requirepass: redis-cli here gives it, URLs do not
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "redis.sock"

    @property
    def url(self) -> str:
        if self.unix:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = [
            binary("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", str(self.root / "redis.log"),
            "--protected-mode", "no",
        ]
        if self.unix:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "600"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.root / "nodes.conf"),
                "--cluster-node-timeout", "2000",
            ]
        return args + list(self.extra)

    def start(self) -> RedisNode:
        for attempt in range(1, START_TRIES + 1):
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait(self.answers, START_TIMEOUT, f"redis-server on {self.url}")
            except RuntimeError as exc:
                if not (self._chosen and "Address already in use" in str(exc)
                        and attempt < START_TRIES):
                    raise
                self.port = free_port()
                continue
            break
        self._chosen = False  # a restart keeps its port: the tests' URLs name it
        return self

    def cli(self, *args: str, check: bool = True) -> str:
        where = (["-s", str(self.socket_path)] if self.unix
                 else ["-h", "127.0.0.1", "-p", str(self.port)])
        if self.password is not None:
            where += ["-a", self.password, "--no-auth-warning"]
        r = subprocess.run(
            [binary("redis-cli"), *where, *args], capture_output=True, text=True,
            timeout=30, check=False,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {r.stderr or r.stdout}")
        return r.stdout

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.root / "redis.log")
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{text}")
        try:
            return self.cli("PING", check=False).strip() == "PONG"
        except subprocess.TimeoutExpired:
            return False

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections and answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> RedisNode:
        self.stop()
        return self.start()

    def flush(self) -> None:
        self.cli("FLUSHALL")


class RedisClusterServers:
    """Three masters, every slot assigned; ``replicas`` replicas each."""

    def __init__(self, root: Path, masters: int = 3, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisNode(root / f"n{i}", cluster=True) for i in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            self.nodes[0].cli(
                "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            )
            _wait(self._ok, START_TIMEOUT, "the Redis cluster to report cluster_state:ok")
            if self.replicas:
                _wait(self._synced, START_TIMEOUT, "the replicas to sync with their masters")
        except BaseException:
            # The fixture that asked never yields, so never stops them.
            self.stop()
            raise
        return self

    def _ok(self) -> bool:
        return all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes)

    def _synced(self) -> bool:
        return all("master_link_status:up" in n.cli("INFO", "replication")
                   for n in self.nodes if "role:slave" in n.cli("INFO", "replication"))

    def master_of(self, key: str) -> RedisNode:
        """The master whose slots hold ``key``, as it says itself."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key).strip())
        for node in self.nodes:
            for line in node.cli("CLUSTER", "NODES").splitlines():
                flags, ranges = line.split()[2], line.split()[8:]
                if "myself" not in flags or "master" not in flags:
                    continue
                for r in ranges:
                    low, _, high = r.partition("-")
                    if not r.startswith("[") and int(low) <= slot <= int(high or low):
                        return node
        raise RuntimeError(f"no master says it holds the slot of {key}")

    def replica_of(self, master: RedisNode) -> RedisNode:
        """A replica of ``master``, in sync with it."""
        me = master.cli("CLUSTER", "MYID").strip()
        for node in self.nodes:
            info = node.cli("INFO", "replication")
            if (node is not master and "role:slave" in info and f"master_port:{master.port}"
                    in info and "master_link_status:up" in info):
                return node
        raise RuntimeError(f"no replica of {me} is in sync")

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running(server: RedisNode | RedisClusterServers) -> Iterator[RedisNode | RedisClusterServers]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
