"""Test harness: real ``sessiond`` processes on temporary sockets and data
directories, driven through the ``sessionctl`` executable and ``Client``.

Nothing here sleeps for a fixed time: every wait polls a condition against a
deadline (``wait_until``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sessionctl import Client, Session
from sessionctl.client import NO_AUTOSTART_ENV
from sessiond import model
from sessiond.errors import DaemonUnavailable

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


@dataclass
class Daemon:
    """One sessiond process and the paths it uses."""

    root: Path
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

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

    def journal_bytes(self) -> bytes:
        """The journal's lines, without the zeros that a running (or killed)
        daemon keeps reserved after them. (Up to the first zero: a read
        that races with the daemon's writes may see zeros with data after
        them, so that is not checked here.)"""
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
            [SESSIOND, *self.extra_args, *args],
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


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``make_daemon(*args, env={...})`` starts a daemon and waits for it."""
    made: list[Daemon] = []
    counter = iter(range(1000))

    def make(*args: str, env: dict[str, str] | None = None, start: bool = True,
             root: Path | None = None) -> Daemon:
        where = root or tmp_path / f"d{next(counter)}"
        where.mkdir(mode=0o700, exist_ok=True)
        d = Daemon(where, extra_args=list(args), extra_env=dict(env or {}))
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running daemon with default settings."""
    return make_daemon()


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
