"""The journal's own thread, for the writes (and fsyncs) of queued groups."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

import anyio


class _Job:
    __slots__ = ("func", "loop", "done", "error")

    def __init__(self, func: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self.func = func
        self.loop = loop
        # A bare future (awaited in a shielded scope, so never cancelled):
        # less than an Event costs, once a group.
        self.done: asyncio.Future[None] = loop.create_future()
        self.error: BaseException | None = None

    def finish(self) -> None:
        """On the loop, once ``func`` has returned or raised."""
        if not self.done.done():  # cancelled only by a native cancel()
            self.done.set_result(None)


class WriterThread:
    """The journal's own thread, for the writes (and fsyncs) of queued groups.

    ``anyio.to_thread.run_sync`` costs two more trips round the event loop a
    call (a checkpoint, and the capacity limiter's), which is felt most under
    ``always``: measured at ~60 us a group more than handing the group to a
    thread that is already waiting for it. The thread reports back with the
    asyncio loop's ``call_soon_threadsafe`` (the daemon runs on anyio's
    asyncio backend): ``anyio.from_thread.run_sync`` would hold the thread
    until the loop has run the callback, and a busy loop then delays the
    next group's write."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, func: Callable[[], None]) -> None:
        """``func()`` in the thread. Like ``to_thread.run_sync``, waits for
        it even when cancelled: the write it does cannot be taken back."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._main, name="sessiond-journal", daemon=True
            )
            self._thread.start()
        job = _Job(func, asyncio.get_running_loop())
        self._jobs.put(job)
        # Shielded: the caller must see the write's outcome (and account
        # for it) before a cancellation reaches it, at its next checkpoint.
        with anyio.CancelScope(shield=True):
            await job.done
        if job.error is not None:
            raise job.error

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.func()
            except BaseException as exc:  # handed to the waiting task, which raises it
                job.error = exc
            job.loop.call_soon_threadsafe(job.finish)

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None
