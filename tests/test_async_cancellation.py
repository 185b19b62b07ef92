"""``AsyncClient`` cancelled at its await points: the connection stays in
step and nothing is left behind, not even noise in the event loop's log.

A request cancelled just as its answer arrives once made asyncio log
``InvalidStateError`` (a race in anyio's socket stream: its reader sets the
result of a future that the cancellation had just cancelled); the client
waits on its socket with ``anyio.wait_readable``, which has no such race.
The race is made to happen here on purpose: the answer is in the socket
before the loop polls, and the cancellation comes in the same turn of
the loop.
"""

from __future__ import annotations

import logging
import select
import signal
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from sessionctl import AsyncClient
from tests.conftest import Daemon, running

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("acancel")) as d:
        yield d


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def readable(c: AsyncClient) -> int:
    """The file descriptor of the client's connection."""
    sock = c._sock
    assert sock is not None
    return sock.fileno()


async def test_a_request_cancelled_as_its_answer_arrives_leaves_no_noise_and_no_stray(
    shared: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    assert shared.proc is not None
    caplog.set_level(logging.DEBUG, logger="asyncio")
    async with AsyncClient(shared.socket) as c:
        s = await c.create(user="cancelled-on-arrival")
        for _ in range(5):
            scope = anyio.CancelScope()

            async def ask(scope: anyio.CancelScope = scope) -> None:
                with scope:
                    await c.get(s.id)

            shared.proc.send_signal(signal.SIGSTOP)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask)
                    # Sent, and waiting for its answer.
                    await anyio.wait_all_tasks_blocked()
                    shared.proc.send_signal(signal.SIGCONT)
                    # The answer is in the socket before the loop polls
                    # again (this blocks the loop, on purpose) ...
                    assert select.select([readable(c)], [], [], 30)[0]
                    # ... and the cancellation comes in the turn of the loop
                    # whose poll finds it.
                    await anyio.lowlevel.checkpoint()
                    scope.cancel()
            finally:
                shared.proc.send_signal(signal.SIGCONT)
            assert (await c.ping()).pid == c.server_pid  # in step
    noise = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not noise, noise
