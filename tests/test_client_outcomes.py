"""A request that went out is never reported as not sent, and a request cut
short never leaves the connection out of step.

A pipeline stopped before its answers came (the daemon slow past the
client's timeout, or, for an ``AsyncClient``, a cancellation of the
caller's) leaves each ``Pending`` of a request that went out either
answered or saying that its outcome is unknown, never "not sent": its
write may have landed. A send cut off part-way through a frame drops the
connection (the daemon would read the next request as the rest of that
frame), and the next call connects again. A request on its way when its
client is closed from another thread or task says its outcome is unknown,
unlike a call made after the close. Against a real daemon, stopped with
SIGSTOP where a test needs it slow.
"""

from __future__ import annotations

import fcntl
import random
import signal
import struct
import termios
import threading
from collections.abc import Iterator

import anyio
import anyio.abc
import pytest

from sessionctl import (
    AsyncClient,
    Client,
    ClientClosed,
    DaemonUnavailable,
    Pending,
    Session,
    SessionError,
)
from sessionctl.connection import use_kernel_timeouts
from tests.conftest import Daemon, running, wait_until
from tests.test_async_client import eventually


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("outcomes")) as d:
        yield d


class Stopped:
    """The daemon SIGSTOPped for the block, SIGCONTed after."""

    def __init__(self, d: Daemon) -> None:
        assert d.proc is not None
        self.proc = d.proc

    def __enter__(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGCONT)


def unread(c: Client | AsyncClient) -> int:
    """Bytes the client sent that the daemon has not read yet (SIOCOUTQ)."""
    sock = c._sock
    assert sock is not None
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])


def impatient(c: Client, timeout: float) -> Client:
    """``c``, connected with its own (generous) timeout, now waiting at most
    ``timeout`` on this connection: the short wait is the test's, not a
    hello's or a setup call's on a loaded machine. The next connection has
    the generous one again."""
    assert c._sock is not None
    use_kernel_timeouts(c._sock, timeout)
    return c


# -- the blocking client ---------------------------------------------------------


def test_a_send_that_times_out_mid_frame_drops_the_connection_and_the_next_call_is_answered(
    shared: Daemon,
) -> None:
    with Client(shared.socket) as c:
        s = c.create(user="cut-short")
        impatient(c, 1.0)
        with Stopped(shared):
            # Far more than the socket buffers hold: part of the frame goes
            # out, then the send times out.
            with pytest.raises(DaemonUnavailable, match="did not take the request in time"):
                c.set(s.id, "big", "x" * 3_000_000)
        # Kept, the connection would carry this get as the rest of the big
        # frame, and it would never be answered.
        assert c.get(s.id).meta == {}
        assert c.ping().pid == c.server_pid


def test_a_pipeline_whose_execute_timed_out_reads_each_answer_when_asked(
    shared: Daemon,
) -> None:
    with Client(shared.socket) as c:
        s = c.create(user="timed-out")
        impatient(c, 0.5).timeout = 0.5  # and the pipeline's polls
        with Stopped(shared):
            with pytest.raises(DaemonUnavailable, match="did not answer in time"):
                with c.pipeline() as p:
                    wrote = p.set(s.id, "k", "v")
            # Sent, and not answered yet: unknown, never "not sent".
            with pytest.raises(DaemonUnavailable):
                wrote.result()

        def answered() -> Session | None:
            try:
                return wrote.result()
            except DaemonUnavailable:
                return None  # the client's short timeout, on a loaded machine

        landed = wait_until(answered, 30, "the write's answer")
        assert landed.meta == {"k": "v"}
        assert c.get(s.id).version == landed.version


def test_a_write_awaiting_its_answer_when_the_client_closes_says_its_outcome_is_unknown(
    shared: Daemon,
) -> None:
    c = Client(shared.socket, timeout=60)
    s = c.create(user="closed-midway")
    caught: list[BaseException] = []

    def write() -> None:
        try:
            c.set(s.id, "k", "v")
        except SessionError as exc:
            caught.append(exc)

    with Stopped(shared):
        t = threading.Thread(target=write)
        t.start()
        wait_until(lambda: unread(c), 10, "the write to be sent")
        c.close()
        t.join(10)
    assert len(caught) == 1 and isinstance(caught[0], ClientClosed), caught
    assert "whether the daemon carried it out is unknown" in str(caught[0])
    with pytest.raises(ClientClosed, match="is closed; make a new one"):
        c.ping()  # and a call after the close was never sent


# -- AsyncClient: cancellation -------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_a_pipeline_cancelled_after_sending_says_its_outcome_is_unknown(
    shared: Daemon,
) -> None:
    async with AsyncClient(shared.socket) as c:
        s = await c.create(user="cancelled-pipeline")
        with Stopped(shared):
            p = c.pipeline()
            wrote = [p.set(s.id, f"k{n}", n) for n in range(10)]
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:

                    async def execute(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]
                                      = anyio.TASK_STATUS_IGNORED) -> None:
                        with anyio.CancelScope() as scope:
                            task_status.started(scope)
                            await p.execute()

                    scope = await tg.start(execute)
                    # Sent (the daemon has not read it), then cancelled.

                    async def sent() -> bool:
                        return c._sock is not None and unread(c) > 0

                    await eventually(sent, "the pipeline to be sent")
                    scope.cancel()
            assert scope.cancelled_caught
        for pending in wrote:
            with pytest.raises(DaemonUnavailable, match="unknown"):
                pending.result()
        # They went out, and landed; and the client is in step.
        assert (await c.get(s.id)).meta == {f"k{n}": n for n in range(10)}
        assert (await c.ping()).pid == c.server_pid


@pytest.mark.anyio
async def test_cancelled_requests_and_pipelines_never_say_a_landed_write_was_not_sent(
    shared: Daemon,
) -> None:
    rng = random.Random(7)
    async with AsyncClient(shared.socket) as c:
        s = await c.create(user="cancelled-anywhere")
        outcomes: dict[str, str] = {}
        for n in range(150):
            key = f"k{n}"
            if n % 2:
                with anyio.move_on_after(rng.random() * 0.003):
                    await c.set(s.id, key, n)
                    outcomes[key] = "answered"
                outcomes.setdefault(key, "unknown")  # a cancelled await: unknown
            else:
                p = c.pipeline()
                pending: Pending[Session] = p.set(s.id, key, n)
                with anyio.move_on_after(rng.random() * 0.003):
                    await p.execute()
                try:
                    pending.result()
                    outcomes[key] = "answered"
                except DaemonUnavailable:
                    outcomes[key] = "unknown"
                except RuntimeError:
                    outcomes[key] = "not sent"
                except SessionError as exc:
                    outcomes[key] = f"refused: {exc}"
            # Whatever was cancelled, the next call gets its own answer.
            assert (await c.get(s.id)).id == s.id
        landed = (await c.get(s.id)).meta
    for key, outcome in outcomes.items():
        if outcome == "answered":
            assert key in landed, key
        elif outcome == "not sent":
            assert key not in landed, f"{key} landed, and its Pending said it was not sent"
        else:
            assert outcome == "unknown", (key, outcome)


@pytest.mark.anyio
async def test_an_async_write_awaiting_its_answer_when_the_client_closes_is_unknown(
    shared: Daemon,
) -> None:
    c = AsyncClient(shared.socket, timeout=60)
    s = await c.create(user="aclosed-midway")
    caught: list[BaseException] = []

    async def write() -> None:
        try:
            await c.set(s.id, "k", "v")
        except SessionError as exc:
            caught.append(exc)

    with Stopped(shared):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await anyio.wait_all_tasks_blocked()
                await c.aclose()
    assert len(caught) == 1 and isinstance(caught[0], ClientClosed), caught
    assert "whether the daemon carried it out is unknown" in str(caught[0])
    with pytest.raises(ClientClosed, match="is closed; make a new one"):
        await c.ping()
