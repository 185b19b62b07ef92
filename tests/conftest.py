"""Test harness: real ``sessiond`` processes on temporary sockets and data
directories, driven through the ``sessionctl`` executable and ``Client``.

Every test that starts a daemon (``daemon``, ``make_daemon``, or a module's
own through ``engine``) runs three times: against the local engine, against
one real Redis, and against a real three-master Redis Cluster
(``tests/redis_servers.py``; the servers start once per run, and each daemon
gets a namespace of its own). A test about the journal, or otherwise about
the local engine alone, is marked ``local_only("why")`` and runs once; one
about shared mode alone, ``shared_only("why")``, runs on Redis and the Cluster.
A test that damages or reconfigures its engine starts one of its own
(``make_redis``) and points daemons at it (``make_daemon_on(backend=...)``).

Nothing here sleeps for a fixed time: every wait polls a condition against a
deadline (``wait_until``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sessionctl import Client, Session
from sessionctl.connection import NO_AUTOSTART_ENV
from sessiond import model
from sessiond.errors import DaemonUnavailable
from tests.redis_servers import RedisClusterServers, RedisNode

BIN = Path(sys.executable).parent
SESSIOND = str(BIN / "sessiond")
SESSIONCTL = str(BIN / "sessionctl")
START_TIMEOUT = 15.0


@pytest.fixture(autouse=True, scope="session")
def no_autostart_in_this_process() -> Iterator[None]:
    """``Client()`` starts a daemon when none answers, and tests make
    clients for daemons that are stopped on purpose: without this, each
    would start a real daemon on the developer's own socket and data dir.
    The autostart tests turn it back on, with every path in a temp dir."""
    before = os.environ.get(NO_AUTOSTART_ENV)
    os.environ[NO_AUTOSTART_ENV] = "1"
    yield
    if before is None:
        del os.environ[NO_AUTOSTART_ENV]
    else:
        os.environ[NO_AUTOSTART_ENV] = before


# -- engines -----------------------------------------------------------------

ENGINES = ("local", "redis", "cluster")
# A test about shared mode itself (tests/test_shared_*.py) is marked
# ``shared_only("why")`` and runs against one Redis and the Cluster.
SHARED_ENGINES = ("redis", "cluster")


@dataclass(frozen=True)
class Engine:
    """Where a test's daemons keep their sessions: ``backend`` is ``None``
    for the local engine, else the URL of a real Redis or Redis Cluster."""

    name: str
    backend: str | None = None

    @property
    def shared(self) -> bool:
        return self.backend is not None


LOCAL = Engine("local")


def pytest_configure(config: pytest.Config) -> None:
    """Our modules byte-compiled once, by the controller, before any worker
    starts: the suite starts thousands of ``sessiond`` and ``sessionctl``
    processes, and a development checkout has no cached bytecode until an
    import writes it, which none does under ``PYTHONDONTWRITEBYTECODE``:
    each process would compile every module it imports from source, which
    no installed copy does (a fifth of the CPU of a CLI test file)."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller did it
    import compileall

    import sessionctl
    import sessiond

    for package in (sessiond, sessionctl):
        root = Path(package.__file__ or "").parent
        if not compileall.compile_dir(root, quiet=2):
            raise pytest.UsageError(f"cannot byte-compile {root}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        local_only = metafunc.definition.get_closest_marker("local_only")
        shared_only = metafunc.definition.get_closest_marker("shared_only")
        names = (["local"] if local_only is not None
                 else list(SHARED_ENGINES) if shared_only is not None else list(ENGINES))
        metafunc.parametrize("engine", names, indirect=True, scope="module")


@pytest.fixture(scope="session")
def redis_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    node = RedisNode(tmp_path_factory.mktemp("redis")).start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def make_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisNode]]:
    """Factory: ``make_redis(**RedisNode options)`` starts a Redis of the
    test's own (to stop, pause, reconfigure or lock with a password),
    stopped at the test's end."""
    made: list[RedisNode] = []

    def make(**options: Any) -> RedisNode:
        node = RedisNode(tmp_path_factory.mktemp("own-redis"), **options)
        made.append(node)
        return node.start()

    yield make
    for node in made:
        node.stop()


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Engine:
    """The engine this run of the test uses (parametrized: see the module's
    docstring)."""
    name = getattr(request, "param", "local")
    if name == "redis":
        return Engine(name, request.getfixturevalue("redis_single").url)
    if name == "cluster":
        return Engine(name, request.getfixturevalue("redis_cluster").url)
    return Engine(name)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def needs(program: str) -> str:
    """Where ``program`` is on PATH; the test is skipped where it is not."""
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed")
    return found


def gone(pid: int) -> bool:
    """Dead, or a zombie nobody has reaped yet (it was started detached)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids of daemons a test caused to start; each is stopped afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        wait_until(partial(gone, pid), 15, f"autostarted sessiond {pid} to exit")


@dataclass
class Daemon:
    """One sessiond process and the paths it uses."""

    root: Path
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    engine: Engine = LOCAL
    # Daemons given the same namespace (and engine) share their sessions.
    namespace: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:12]}")

    @property
    def engine_args(self) -> list[str]:
        if self.engine.backend is None:
            return []
        return ["--backend", self.engine.backend, "--namespace", self.namespace]

    @property
    def socket(self) -> Path:
        return self.root / "run" / "sessiond.sock"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def journal(self) -> Path:
        return self.data_dir / "data.jsonl"

    @property
    def kept_in(self) -> str:
        """A pattern of what stats says the sessions are kept in (its
        ``journal_path``): the journal, or the engine and namespace."""
        import re

        if not self.engine.shared:
            return re.escape(str(self.journal))
        return rf"redis://127\.0\.0\.1:\d+( \(cluster\))? namespace {self.namespace}"

    def journal_bytes(self) -> bytes:
        """The journal's lines, without the zeros that a running (or killed)
        daemon keeps reserved after them. (Up to the first zero: a read
        that races with the daemon's writes may see zeros with data after
        them, so that is not checked here.) A daemon on a shared engine has
        no journal: empty, always, so that "the journal did not change"
        holds trivially there (tests check the sessions too)."""
        if self.engine.shared:
            return b""
        data = self.journal.read_bytes()
        end = data.find(b"\0")
        return data if end < 0 else data[:end]

    def append_to_journal(self, data: bytes) -> None:
        """Write ``data`` after the journal's lines, where the daemon's next
        write would have gone (over its reserved zeros)."""
        end = len(self.journal_bytes())
        with self.journal.open("r+b") as f:
            f.seek(end)
            f.write(data)

    @property
    def log(self) -> Path:
        return self.root / "sessiond.stderr"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SESSIOND_SOCKET=str(self.socket),
            SESSIOND_DATA_DIR=str(self.data_dir),
            SESSIOND_CONFIG=str(self.config),
            SESSIONCTL_NO_AUTOSTART="1",
            HOME=str(self.root / "home"),
            XDG_CONFIG_HOME=str(self.root / "home" / ".config"),
        )
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.extra_env)
        return env

    def start(self, *args: str, wait: bool = True, **popen: Any) -> Daemon:
        (self.root / "run").mkdir(mode=0o700, exist_ok=True)
        (self.root / "home").mkdir(mode=0o700, exist_ok=True)
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [SESSIOND, *self.engine_args, *self.extra_args, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            **popen,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"sessiond exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            try:
                with Client(self.socket, timeout=5) as c:
                    c.ping()
                return True
            except DaemonUnavailable:
                return False

        wait_until(ready, timeout, "sessiond to answer")

    def memory_mb(self, field: str = "VmRSS") -> float:
        """A size of the daemon's memory from /proc/PID/status, in MB:
        ``VmRSS`` (resident now) or ``VmHWM`` (its peak so far)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} in /proc/PID/status")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, **kw: Any) -> Client:
        return Client(self.socket, **kw)

    def ctl(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the real ``sessionctl`` executable against this daemon."""
        full_env = self.env
        if env:
            full_env.update(env)
        return subprocess.run(
            [SESSIONCTL, *args], env=full_env, input=input, capture_output=True,
            text=True, timeout=timeout, check=False,
        )

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the journal can tell."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def restart(self, *args: str) -> Daemon:
        self.stop()
        return self.start(*args)


@contextlib.contextmanager
def _daemons(tmp_path: Path, engine: Engine | None) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []
    counter = iter(range(1000))

    def make(*args: str, env: dict[str, str] | None = None, start: bool = True,
             root: Path | None = None, namespace: str | None = None,
             backend: str | None = None, config: dict[str, Any] | None = None) -> Daemon:
        where = root or tmp_path / f"d{next(counter)}"
        where.mkdir(mode=0o700, exist_ok=True)
        on = engine if backend is None else Engine("own", backend)
        if on is None:
            raise AssertionError("make_daemon_on needs backend=URL (an engine of the test's own)")
        d = Daemon(where, extra_args=list(args), extra_env=dict(env or {}), engine=on)
        if namespace is not None:
            d.namespace = namespace
        if config is not None:
            d.config.write_text(json.dumps(config))
        made.append(d)
        if start:
            d.start()
        return d

    try:
        yield make
    finally:
        for d in made:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


@pytest.fixture
def make_daemon(tmp_path: Path, engine: Engine) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``make_daemon(*args, env={...})`` starts a daemon on the
    test's engine and waits for it; ``config={...}`` writes its config file
    first; ``namespace=`` shares another's; ``backend=URL`` puts it on
    another engine (one of ``make_redis``'s)."""
    with _daemons(tmp_path, engine) as make:
        yield make


@pytest.fixture
def make_daemon_on(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``make_daemon`` for a test about an engine of its own (``make_redis``):
    every daemon needs ``backend=URL``, and the test runs once, not once
    per engine of the suite."""
    with _daemons(tmp_path, None) as make:
        yield make


@contextlib.contextmanager
def running(root: Path, engine: Engine = LOCAL) -> Iterator[Daemon]:
    """A daemon on ``engine`` (the local one unless given) for a whole
    module, stopped cleanly after."""
    d = Daemon(root, engine=engine).start()
    yield d
    if d.stop() != 0:
        d.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running daemon with default settings."""
    return make_daemon()


FAILPOINT = "SESSIOND_FAILPOINT"


def restarted(d: Daemon) -> Daemon:
    """kill -9 and start again without the failpoint (``FAILPOINT`` in its
    ``extra_env``): the journal alone speaks."""
    d.kill()
    del d.extra_env[FAILPOINT]
    return d.start()


def run_sessiond(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``sessiond`` as a one-off command (``--check``, ``--repair``)
    on ``d``'s data directory."""
    return subprocess.run(
        [SESSIOND, *args], env=d.env, capture_output=True, text=True, timeout=60, check=False
    )


def stored(d: Daemon) -> dict[str, Session]:
    """Every session ``d`` holds, by id, as a client reads them."""
    with d.client() as c:
        return {s.id: s for s in c.iter_sessions()}


def as_read(s: model.Session) -> Session:
    """A session in the daemon's own form (integer stamps), as a client
    reads it back: the same wire bytes, read by the client."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=Session)


def as_held(s: Session) -> model.Session:
    """A session as a client read it, in the daemon's own form: what the
    journal's writers (``put_line``) take."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=model.Session)
