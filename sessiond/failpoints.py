"""Failpoints: faults injected for real, for tests (``SESSIOND_FAILPOINT``).

A failpoint kills the daemon with SIGKILL at a step of compaction or of the
legacy migration, makes a journal fsync fail with EIO, makes a compaction's
snapshot fail to write, makes the encoding of a reply or of a journal line
fail as a value msgpack cannot carry would, makes the daemon speak protocol
version 1 only, makes a turn of shared mode's expiry timer fail as a bug
would, or holds a start at its replay until a signal has come (as long as
a test wants a start to take).
``SESSIOND_CLOCK_OFFSET_FILE`` names a file holding a number of seconds
(``-3600``, ``7200.5``) added to the wall clock of every process that has
it in its environment (``offset_clock``): a test steps the clock of a
running daemon for real, as NTP, a resumed laptop or a restored VM step
the machine's, without touching the machine's clock.
The disk calls a failpoint can fail are in ``sessiond.diskio``, which asks
``failpoints()`` before each.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sessiond.errors import JournalError

FAILPOINT_ENV = "SESSIOND_FAILPOINT"
# Steps where a failpoint kills the daemon with SIGKILL, the one that makes
# a journal fsync fail with EIO, and the one that makes a compaction's
# snapshot fail to write (the compaction goes on without it).
MIGRATION_COMMITTED = "migration-committed"  # after each write of a legacy migration
KILL_POINTS = (
    "compact-written", "compact-synced", "compact-renamed", "snapshot-written", "snapshot-renamed",
    MIGRATION_COMMITTED,
)
FSYNC_ERROR = "fsync-error"
SNAPSHOT_ERROR = "snapshot-error"
# Encoding a reply, or the journal lines of a batch, raises: the failures
# that follow a change the store has already applied (see ``encode_fault``).
REPLY_ENCODE_ERROR = "reply-encode-error"
LINE_ENCODE_ERROR = "line-encode-error"
ENCODE_POINTS = (REPLY_ENCODE_ERROR, LINE_ENCODE_ERROR)
# The daemon speaks protocol version 1 only, as a daemon of the release
# before version 2 did (it refuses any other hello in that one's words):
# what a new client meets when an old daemon still runs.
PROTOCOL_V1 = "protocol-v1"
# A turn of shared mode's expiry timer raises as a bug of its own would.
EXPIRY_BUG = "expiry-bug"
# The start holds before its replay until a signal the daemon blocks is
# pending (at most HOLD_SECONDS): a slow replay, without the millions of
# sessions, for the tests of a signal that comes during a start and of the
# clients that wait for a start (released with SIGHUP, which then reloads).
START_HOLD = "start-hold"
HOLD_SECONDS = 60.0

log = logging.getLogger("sessiond")


class Failpoints:
    """Parsed ``SESSIOND_FAILPOINT``: comma-separated ``name[@K][:N]``, the
    fault firing from the K-th time the step is reached (default the first),
    N times (default every time). ``fsync-error@3:1`` fails the third fsync
    only."""

    def __init__(self, spec: str) -> None:
        self._skip: dict[str, int] = {}
        self._left: dict[str, int | None] = {}
        self._lock = threading.Lock()  # fsyncs run in several worker threads
        known = (KILL_POINTS + (FSYNC_ERROR, SNAPSHOT_ERROR, PROTOCOL_V1, EXPIRY_BUG,
                                START_HOLD)
                 + ENCODE_POINTS)
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            rest, colon, count = item.partition(":")
            name, at, nth = rest.partition("@")
            if name not in known:
                raise JournalError(
                    f"{FAILPOINT_ENV}: unknown failpoint {name!r}; known: {', '.join(known)}"
                )
            for sep, number in ((at, nth), (colon, count)):
                if sep and not (number.isdigit() and int(number) > 0):
                    raise JournalError(
                        f"{FAILPOINT_ENV}: {item!r}: the numbers after '@' and ':' "
                        f"must be positive whole numbers"
                    )
            self._skip[name] = int(nth) - 1 if at else 0
            self._left[name] = int(count) if colon else None

    def armed(self, name: str) -> bool:
        """Whether the spec names this fault at all."""
        return name in self._left

    def hit(self, name: str) -> bool:
        """Whether the named fault fires now (counting this passage)."""
        with self._lock:
            if name not in self._left:
                return False
            if self._skip[name]:
                self._skip[name] -= 1
                return False
            left = self._left[name]
            if left is None:
                return True
            if left == 0:
                return False
            self._left[name] = left - 1
            return True


_failpoints: Failpoints | None = None


def failpoints() -> Failpoints:
    """The failpoints of this process, read from the environment once."""
    global _failpoints
    if _failpoints is None:
        _failpoints = Failpoints(os.environ.get(FAILPOINT_ENV, ""))
    return _failpoints


def failpoint(name: str) -> None:
    """Die here, for real, if the environment names this step."""
    if failpoints().hit(name):
        os.kill(os.getpid(), signal.SIGKILL)


def hold(name: str, signals: Iterable[signal.Signals]) -> None:
    """Wait here, if the environment names this step, until one of
    ``signals`` (which this thread blocks) is pending, or HOLD_SECONDS; the
    log says when it starts to wait, for a test to send the signal then."""
    if not failpoints().hit(name):
        return
    wanted = set(signals)
    log.warning("failpoint %s: holding until a signal is pending", name)
    deadline = time.monotonic() + HOLD_SECONDS
    while not wanted & signal.sigpending() and time.monotonic() < deadline:
        time.sleep(0.01)


CLOCK_OFFSET_ENV = "SESSIOND_CLOCK_OFFSET_FILE"


def offset_clock(clock: Callable[[], int]) -> Callable[[], int]:
    """``clock`` (microseconds) plus the seconds in the file that
    ``SESSIOND_CLOCK_OFFSET_FILE`` names, read again whenever the file
    changes (a missing or empty file: no offset). A file that does not
    hold a number raises ``JournalError`` at the first read of the clock:
    a test that wrote it wrong must not run on the real clock unawares."""
    path = os.environ[CLOCK_OFFSET_ENV]
    seen: list[Any] = [None, 0]  # the file's (mtime, size, inode), the offset

    def offset_now() -> int:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return clock()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != seen[0]:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
            try:
                seen[1] = round(float(text or "0") * 1_000_000)
            except ValueError as exc:
                raise JournalError(f"{CLOCK_OFFSET_ENV}: {path}: not a number: {text!r}") from exc
            seen[0] = key
        offset: int = seen[1]
        return clock() + offset

    return offset_now


F = TypeVar("F", bound=Callable[..., Any])


def encode_fault(name: str, encode: F) -> F:
    """``encode`` itself, or, when the environment names the failpoint, a
    wrapper that raises where the failpoint fires: the ``OverflowError`` that
    msgpack raises for an integer of 2**64 or more. Chosen once, when the
    dispatcher is made, so that a daemon without failpoints pays nothing per
    request."""
    if not failpoints().armed(name):
        return encode

    def failing(*args: Any, **kwargs: Any) -> Any:
        if failpoints().hit(name):
            raise OverflowError(f"can't serialize ints > 2**64 - 1 (injected by failpoint {name})")
        return encode(*args, **kwargs)

    return failing  # type: ignore[return-value]
