"""Failpoints: faults injected for real, for tests (``SESSIOND_FAILPOINT``).

A failpoint kills the daemon with SIGKILL at a step of compaction, makes a
journal fsync fail with EIO, makes a compaction's snapshot fail to write, or
makes the encoding of a reply or of a journal line fail as a value msgpack
cannot carry would. Beside them, the small disk calls that the journal, its
repair and the snapshot share: the fsync that a failpoint can fail among them.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sessiond.errors import JournalError

FAILPOINT_ENV = "SESSIOND_FAILPOINT"
# Steps where a failpoint kills the daemon with SIGKILL, the one that makes
# a journal fsync fail with EIO, and the one that makes a compaction's
# snapshot fail to write (the compaction goes on without it).
KILL_POINTS = (
    "compact-written", "compact-synced", "compact-renamed", "snapshot-written", "snapshot-renamed"
)
FSYNC_ERROR = "fsync-error"
SNAPSHOT_ERROR = "snapshot-error"
# Encoding a reply, or the journal lines of a batch, raises: the failures
# that follow a change the store has already applied (see ``encode_fault``).
REPLY_ENCODE_ERROR = "reply-encode-error"
LINE_ENCODE_ERROR = "line-encode-error"
ENCODE_POINTS = (REPLY_ENCODE_ERROR, LINE_ENCODE_ERROR)


class Failpoints:
    """Parsed ``SESSIOND_FAILPOINT``: comma-separated ``name[@K][:N]``, the
    fault firing from the K-th time the step is reached (default the first),
    N times (default every time). ``fsync-error@3:1`` fails the third fsync
    only."""

    def __init__(self, spec: str) -> None:
        self._skip: dict[str, int] = {}
        self._left: dict[str, int | None] = {}
        self._lock = threading.Lock()  # fsyncs run in several worker threads
        known = KILL_POINTS + (FSYNC_ERROR, SNAPSHOT_ERROR) + ENCODE_POINTS
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


# fdatasync skips metadata that reading the data back does not need (times),
# but not the size an append changed: measured about 8% cheaper a commit
# under ``always``. Not every system has it.
_sync_data: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def sync_data(fd: int) -> None:
    if failpoints().hit(FSYNC_ERROR):
        raise OSError(5, "Input/output error (injected by failpoint)")
    _sync_data(fd)


def describe(exc: BaseException) -> str:
    """An OS error (or any other) as the logs put it."""
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} (errno {exc.errno})"
    return str(exc)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    # Almost always whole at the first try: no view made for that.
    n = os.pwrite(fd, data, offset)
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        offset += n
        n = os.pwrite(fd, view, offset)
        view = view[n:]


# pwritev2(RWF_DSYNC) writes bytes and syncs them as fdatasync would, in one
# system call where ``pwrite_all`` and ``sync_data`` make two: measured ~4%
# more commits a second under ``always`` with one client. Linux 4.7 and
# later; elsewhere, or where the call is refused, the two calls.
_rwf_dsync: int | None = getattr(os, "RWF_DSYNC", None)
# What a refused flag looks like (an old kernel, a file system without it).
_NO_DSYNC = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})
# Errors a write reports before any I/O: the rest come from writing back,
# which is the part an fsync does.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def pwrite_synced(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """``pwrite_all``, then these bytes on disk as ``sync_data`` leaves them.
    Only these: a write made earlier and not yet synced needs ``sync_data``."""
    global _rwf_dsync
    flag = _rwf_dsync
    if flag is None or failpoints().hit(FSYNC_ERROR):
        pwrite_all(fd, data, offset)
        if flag is not None:  # the failpoint: the write landed, its sync fails
            raise OSError(errno.EIO, "Input/output error (injected by failpoint)")
        sync_data(fd)
        return
    view = memoryview(data)
    while view:
        try:
            n = os.pwritev(fd, [view], offset, flag)
        except OSError as exc:
            if exc.errno not in _NO_DSYNC or _rwf_dsync is None:
                raise
            _rwf_dsync = None
            pwrite_all(fd, view, offset)
            _sync_data(fd)  # the failpoint was asked above, for this sync
            return
        view = view[n:]
        offset += n


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
