"""Giving the memory of sessions gone back to the system.

Sessions deleted, purged or cleaned up free their memory to the allocator,
not to the system: glibc's malloc keeps the freed pages of its heap, and
the daemon's resident size stays at its high mark for good (measured:
100 000 sessions created and deleted, the daemon at 148 MB with none left;
65 MB of it back after one ``malloc_trim``). Redis does the same for the
same reason (``MEMORY PURGE``, and jemalloc's own purging). The trimmer
watches the store's size after each commit, and once it has fallen by
``TRIM_AFTER`` sessions from its high mark asks the allocator to hand back
what it can (``malloc_trim(0)``), off the event loop, at each tick while
the store goes on shrinking and once after: a mass delete going on
meanwhile is trimmed as it goes and when it is done, not at every step.

Where the C library has no ``malloc_trim`` (musl) the trimmer says so
once in the log and does nothing: its allocator returns memory in its own
way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.to_thread

from sessiond.store import Store
from sessiond.ticks import until_tick

log = logging.getLogger("sessiond.server")

# Sessions the store must have lost since its high mark before a trim: far
# more than ordinary churn between two ticks, far less than the drops that
# leave tens of MB behind.
TRIM_AFTER = 10_000


def malloc_trim() -> Callable[[], int] | None:
    """The C library's ``malloc_trim(0)``, or ``None`` where it has none.
    Looked up among the symbols this process has loaded already (the C
    library's among them), not by ``ctypes.util.find_library``, which runs
    ``ldconfig``."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


class Trimmer:
    """Hands freed memory back once the store has shrunk by ``TRIM_AFTER``
    sessions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.high = len(store)
        self._wake = anyio.Event()

    def notice(self) -> None:
        """After a commit (cheap: on the path of every one)."""
        count = len(self.store)
        if count > self.high:
            self.high = count
        elif self.high - count >= TRIM_AFTER:
            self._wake.set()

    async def run(self) -> None:
        # Looked up at the first need, not on the way to serving.
        await self._wake.wait()
        trim = malloc_trim()
        if trim is None:
            log.info("the C library has no malloc_trim: memory freed by sessions gone is "
                     "left to its allocator")
            return
        while True:
            await self._wake.wait()
            # A mass delete takes many commits, and what it frees is freed
            # as they go (and by the journal's writer after them): trim at
            # each tick while the store goes on shrinking, and once after.
            last = None
            while True:
                await anyio.sleep(until_tick())
                count = len(self.store)
                await anyio.to_thread.run_sync(trim)
                if last is not None and count >= last:
                    break
                last = count
            self.high = len(self.store)
            self._wake = anyio.Event()
