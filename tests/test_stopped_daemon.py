"""A daemon stopped (SIGSTOP, Ctrl-Z, a debugger) for longer than its
clients wait: they say that it is stopped and how to resume it, rather than
only that it did not answer; once continued it serves on, and the sessions
that fell due meanwhile expire at their deadlines, without a burst of
errors."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import anyio
import pytest

from sessionctl import AsyncClient, Client
from sessiond.errors import DaemonUnavailable
from tests.conftest import Daemon, wait_until

pytestmark = pytest.mark.local_only("the daemon's own process and timer")


@pytest.fixture
def stopped(make_daemon: Callable[..., Daemon]) -> Iterator[Daemon]:
    """A daemon holding sessions due within a second, then stopped; it is
    continued at the end whatever happens."""
    d = make_daemon()
    with d.client() as c:
        for i in range(50):
            c.create(id=f"due{i}", user="u", ttl=1)
        c.create(id="long", user="u", ttl=3600)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGSTOP)
    try:
        yield d
    finally:
        d.proc.send_signal(signal.SIGCONT)


def test_a_client_of_a_stopped_daemon_says_it_is_stopped_and_how_to_resume_it(
    stopped: Daemon,
) -> None:
    assert stopped.proc is not None
    pid = stopped.proc.pid
    resume = f"its process (pid {pid}) is stopped (SIGSTOP, Ctrl-Z or a debugger); " \
             f"'kill -CONT {pid}' resumes it"
    # Before: "did not answer in time", and nothing about why.
    with pytest.raises(DaemonUnavailable, match="did not answer in time") as caught:
        with Client(stopped.socket, timeout=1) as c:
            c.get("long")
    assert resume in str(caught.value)

    async def asynchronously() -> str:
        try:
            async with AsyncClient(stopped.socket, timeout=1) as c:
                await c.get("long")
        except DaemonUnavailable as exc:
            return str(exc)
        raise AssertionError("a stopped daemon answered")

    assert resume in anyio.run(asynchronously)


def test_once_continued_what_fell_due_expires_at_its_deadline_without_errors(
    stopped: Daemon,
) -> None:
    assert stopped.proc is not None
    # Past every deadline while stopped.
    for _ in range(2):
        with pytest.raises(DaemonUnavailable):
            with Client(stopped.socket, timeout=1) as c:
                c.ping()
    stopped.proc.send_signal(signal.SIGCONT)
    with stopped.client() as c:
        def all_expired() -> bool:
            return all(s.status == "expired" for s in c.list() if s.id.startswith("due"))

        wait_until(all_expired, what="the sessions due to expire")
        sessions = [s for s in c.list() if s.id.startswith("due")]
        assert len(sessions) == 50
        assert all(s.expired_at == s.expires_at for s in sessions)
        assert c.get("long").status == "active"
    assert " ERROR " not in stopped.log_text(), stopped.log_text()
