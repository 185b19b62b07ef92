"""The journal's writer thread (``sessiond.writer``): a group handed to it
is waited for to the end, even by a task cancelled meanwhile (a write
cannot be taken back, so its caller must account for it), and what the
write raises is raised in the task."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.lowlevel
import pytest

from sessiond.writer import WriterThread


def test_a_cancelled_task_still_waits_for_the_write_it_handed_over() -> None:
    # And returns from the wait normally, so that its caller accounts for
    # the write (the journal's size, the group's settling) before the
    # cancellation reaches it at its next checkpoint.
    writer = WriterThread()
    started = threading.Event()
    finished: list[float] = []
    returned: list[float] = []
    past_checkpoint: list[bool] = []

    def slow_write() -> None:
        started.set()
        # The write's own length, not a synchronisation: the task must not
        # get past its wait before this returns, however long it takes.
        time.sleep(0.2)
        finished.append(time.monotonic())

    async def go() -> None:
        async with anyio.create_task_group() as tg:

            async def hand_over() -> None:
                await writer.run(slow_write)
                returned.append(time.monotonic())
                await anyio.lowlevel.checkpoint()
                past_checkpoint.append(True)

            tg.start_soon(hand_over)
            await anyio.to_thread.run_sync(started.wait, 10)
            tg.cancel_scope.cancel()

    try:
        anyio.run(go)
        assert finished and returned and finished[0] <= returned[0]
        assert past_checkpoint == []  # the cancellation came at the checkpoint
        # The thread goes on taking groups.
        again: list[bool] = []
        anyio.run(writer.run, lambda: again.append(True))
        assert again == [True]
    finally:
        writer.stop()


def test_what_the_write_raises_is_raised_in_the_waiting_task() -> None:
    writer = WriterThread()

    def failing_write() -> None:
        raise OSError(28, "No space left on device")

    try:
        with pytest.raises(OSError, match="No space left"):
            anyio.run(writer.run, failing_write)
    finally:
        writer.stop()
