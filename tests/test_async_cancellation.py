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

import gc
import logging
import select
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing

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


async def eventually(holds: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``holds`` until it does, for 30 s at most."""
    delay = 0.005
    try:
        with anyio.fail_after(30):
            while not await holds():
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_watch_whose_wait_is_cancelled_goes_on_and_misses_no_event(
    shared: Daemon,
) -> None:
    user = f"timed-watch-{time.monotonic_ns()}"
    async with AsyncClient(shared.socket) as c:
        async with aclosing(c.watch(user=user)) as events:
            before = (await c.stats()).watchers

            async def first() -> None:
                assert (await events.__anext__()).kind == "created"

            # Started, and one event read: the waits below are for events.
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)

                async def watching() -> bool:
                    return (await c.stats()).watchers == before + 1

                await eventually(watching, "the watch to start")
                await c.create(user=user)
            for _ in range(3):
                # A caller's timeout on each wait; nothing comes meanwhile.
                with anyio.move_on_after(0.05) as scope:
                    await events.__anext__()
                assert scope.cancelled_caught
            made = [await c.create(user=user) for _ in range(3)]
            with anyio.fail_after(30):
                seen = [(await events.__anext__()).sid for _ in made]
    assert seen == [s.id for s in made]


async def test_a_watch_left_by_break_closes_its_connection_and_warns_of_nothing(
    shared: Daemon,
) -> None:
    user = f"left-watch-{time.monotonic_ns()}"
    async with AsyncClient(shared.socket) as c:
        before = (await c.stats()).watchers

        async def watch_one() -> None:
            async for event in c.watch(user=user):  # no aclosing
                assert event.kind == "created"
                break

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_one)

            async def watching() -> bool:
                return (await c.stats()).watchers == before + 1

            await eventually(watching, "the watch to start")
            await c.create(user=user)
        gc.collect()

        async def closed() -> bool:
            return (await c.stats()).watchers == before

        await eventually(closed, "the watch's connection to close")


async def test_a_watch_closed_from_another_task_ends_the_loop_waiting_on_it(
    shared: Daemon,
) -> None:
    seen: list[str] = []
    async with AsyncClient(shared.socket) as c:
        before = (await c.stats()).watchers
        events = c.watch(user=f"closed-watch-{time.monotonic_ns()}")

        async def loop() -> None:
            async for event in events:
                seen.append(event.kind)
            seen.append("ended")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(loop)

                async def watching() -> bool:
                    return (await c.stats()).watchers == before + 1

                await eventually(watching, "the watch to start")
                await events.aclose()
        assert seen == ["ended"]
        # The client is not closed, and the watch's connection is.
        async def closed() -> bool:
            return (await c.stats()).watchers == before

        await eventually(closed, "the watch's connection to close")


async def test_a_watch_as_an_async_context_manager_closes_its_connection_at_the_end(
    shared: Daemon,
) -> None:
    user = f"with-watch-{time.monotonic_ns()}"
    async with AsyncClient(shared.socket) as c:
        before = (await c.stats()).watchers
        async with c.watch(user=user) as events:
            made = await c.create(user=user)  # before the watch starts: not seen

            async def later() -> None:
                async def watching() -> bool:
                    return (await c.stats()).watchers == before + 1

                await eventually(watching, "the watch to start")
                await c.delete(made.id)

            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                with anyio.fail_after(30):
                    event = await events.__anext__()
            assert (event.kind, event.sid) == ("deleted", made.id)

        async def closed() -> bool:
            return (await c.stats()).watchers == before

        await eventually(closed, "the watch's connection to close")
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()  # the iteration is over
