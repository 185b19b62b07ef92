"""A client whose connection is lost (the daemon restarted, or killed)
connects again at its next call, as redis-py's does: the call that finds
the connection gone fails with ``DaemonUnavailable`` saying where and what
happened (whether the daemon carried the request out is unknown, so it is
never sent again), the requests a pipeline sent on it and whose answers
never came settle with that same error, and the call after connects
again, with the client's autostart setting. ``Client`` and
``AsyncClient`` alike, against a real daemon really restarted.

So does one whose connection carried a reply it cannot read
(``ProtocolError``): where the next reply starts is unknown. The bad frame
comes from a peer put between the client and a real daemon
(``tests.rawwire.OutOfStep``), since the daemon never sends one."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio.to_thread
import pytest

from sessionctl import AsyncClient, Client, DaemonUnavailable, Pending, ProtocolError, Session
from tests.conftest import Daemon, running, wait_until
from tests.rawwire import OutOfStep


class LeftEarly(Exception):
    """Ends a pipeline's block after its requests went out."""


def assert_says_lost(error: DaemonUnavailable, d: Daemon) -> None:
    """The message names the socket and says what happened (never an
    empty account after a colon)."""
    message = str(error)
    assert str(d.socket) in message, message
    found = re.search(r"lost \((.+?)\)", message)
    assert found is not None and found.group(1).strip(), message


def count_sessions(d: Daemon) -> int:
    with d.client() as other:
        return len(other.list())


def test_next_call_after_daemon_restart_connects_again(daemon: Daemon) -> None:
    with daemon.client() as c:
        s = c.create()
        old_pid = c.server_pid
        daemon.restart()
        with pytest.raises(DaemonUnavailable) as lost:
            c.get(s.id)
        assert_says_lost(lost.value, daemon)
        assert "unknown" in str(lost.value)
        # Every call from then on is answered, on a connection of its own.
        for _ in range(3):
            assert c.get(s.id).id == s.id
        assert c.server_pid == daemon.proc.pid != old_pid  # type: ignore[union-attr]


def test_pipelined_write_unanswered_at_a_crash_settles_lost_and_is_not_sent_again(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None
    with daemon.client() as c:
        s = c.create()
        # Stopped, the daemon reads nothing: the creates wait in the socket.
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        with pytest.raises(LeftEarly), c.pipeline() as p:
            creates: list[Pending[Session]] = [p.create() for _ in range(16)]
            raise LeftEarly  # the 16th create sent them all
        daemon.kill()
        daemon.start()
        with pytest.raises(DaemonUnavailable) as lost:
            c.get(s.id)
        assert_says_lost(lost.value, daemon)
        for pending in creates:
            with pytest.raises(DaemonUnavailable) as same:
                pending.result()
            assert same.value is lost.value
        # Connected again; the creates were not sent again.
        assert [x.id for x in c.list()] == [s.id]


def test_pipelined_write_answered_before_a_restart_is_not_sent_again(daemon: Daemon) -> None:
    with daemon.client() as c:
        s = c.create()
        with pytest.raises(LeftEarly), c.pipeline() as p:
            creates: list[Pending[Session]] = [p.create() for _ in range(16)]
            raise LeftEarly
        # Carried out (and answered, the answers unread) before the restart.
        wait_until(lambda: count_sessions(daemon) == 17, what="the pipelined creates")
        daemon.restart()
        with pytest.raises(DaemonUnavailable):
            c.get(s.id)
        made = {pending.result().id for pending in creates}  # settled by the last read
        assert len(made) == 16
        assert {x.id for x in c.list()} == made | {s.id}


def test_reconnect_keeps_autostart_off(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    with d.client(autostart=False) as c:
        c.ping()
        d.stop()
        with pytest.raises(DaemonUnavailable) as lost:
            c.ping()
        assert_says_lost(lost.value, d)
        with pytest.raises(DaemonUnavailable) as refused:
            c.ping()
        assert "no sessiond answers" in str(refused.value)
        assert "autostart=True" in str(refused.value)
        d.start()
        assert c.ping().pid == d.proc.pid  # type: ignore[union-attr]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_async_client_says_what_happened_and_connects_again(
    daemon: Daemon, anyio_backend: str
) -> None:
    async with AsyncClient(daemon.socket) as c:
        s = await c.create()
        daemon.restart()
        with pytest.raises(DaemonUnavailable) as lost:
            await c.get(s.id)
        assert_says_lost(lost.value, daemon)
        assert not str(lost.value).rstrip().endswith(":")
        assert (await c.get(s.id)).id == s.id
        assert c.server_pid == daemon.proc.pid  # type: ignore[union-attr]


# -- a reply the client cannot read ------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The daemon behind the bad-frame peer: what answers is the same
    whatever the engine, so one local daemon serves these tests."""
    with running(tmp_path_factory.mktemp("outofstep")) as d:
        yield d


@pytest.fixture
def sid(real: Daemon) -> str:
    with real.client() as c:
        return c.create().id


@pytest.fixture
def peer(real: Daemon, tmp_path: Path) -> OutOfStep:
    """The bad-frame peer, at ``link``: a link that ``lead_to`` then points
    at the real daemon's socket, for the connection that follows."""
    found = OutOfStep(tmp_path / "peer.sock", real.socket)
    (tmp_path / "link.sock").symlink_to(tmp_path / "peer.sock")
    return found


def lead_to(link: Path, target: Path) -> None:
    new = link.with_name("new.sock")
    new.symlink_to(target)
    new.replace(link)


def test_a_reply_the_client_cannot_read_drops_the_connection_and_the_next_call_connects_again(
    real: Daemon, sid: str, peer: OutOfStep, tmp_path: Path
) -> None:
    link = tmp_path / "link.sock"
    with Client(link, timeout=10) as c:
        with pytest.raises(ProtocolError):
            c.get(sid)
        assert peer.wait(), "the client kept a connection it can no longer read"
        lead_to(link, real.socket)
        assert c.get(sid).id == sid


def test_pipelined_requests_on_a_connection_out_of_step_settle_with_its_error(
    real: Daemon, sid: str, peer: OutOfStep, tmp_path: Path
) -> None:
    link = tmp_path / "link.sock"
    with Client(link, timeout=10) as c:
        with pytest.raises(ProtocolError) as caught, c.pipeline() as p:
            gets = [p.get(sid), p.get(sid)]
        for pending in gets:
            with pytest.raises(ProtocolError) as same:
                pending.result()
            assert same.value is caught.value
        assert peer.wait(), "the client kept a connection it can no longer read"
        lead_to(link, real.socket)
        assert c.get(sid).id == sid


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("pipelined", [False, True], ids=["call", "pipeline"])
@pytest.mark.anyio
async def test_async_client_drops_a_connection_whose_reply_it_cannot_read(
    real: Daemon, sid: str, peer: OutOfStep, tmp_path: Path, pipelined: bool,
    anyio_backend: str,
) -> None:
    link = tmp_path / "link.sock"
    async with AsyncClient(link, timeout=10) as c:
        with pytest.raises(ProtocolError):
            if pipelined:
                async with c.pipeline() as p:
                    p.get(sid)
            else:
                await c.get(sid)
        assert await anyio.to_thread.run_sync(peer.wait), (
            "the client kept a connection it can no longer read"
        )
        lead_to(link, real.socket)
        assert (await c.get(sid)).id == sid
