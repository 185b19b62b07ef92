"""The daemon's disk calls, in one place: writes that complete, data syncs,
directory syncs, and the one way the project replaces a whole file.

Writes and syncs: ``pwrite_all`` and ``write_all`` write all they are given,
``sync_data`` is fdatasync where there is one (and where a failpoint can
fail it), ``pwrite_synced`` writes and syncs in one system call where the
kernel allows it, ``fsync_dir`` makes a rename or a new file durable.

A whole file, atomically (``atomic_write``, ``atomic_file``):

A reader of the target sees the old file or the whole new one, never a part,
and after a crash the target is one or the other. The new bytes go to a temp
file that ``mkstemp`` creates in the target's directory: a fresh, unguessable
name, created with O_EXCL and mode 0600, so nobody else can have made it
first (a file or a symlink planted under a predictable name would otherwise
receive what we write, and keep its owner and mode through the rename). It
is fsynced, renamed over the target, and the directory is fsynced so that
the rename itself survives a crash.

A target that is a symlink of the user's (or root's) is followed: the file
it points to is replaced, and the link stays. A target of theirs that
exists and is no regular file (a device such as /dev/null, a FIFO, a
terminal through /dev/stdout) cannot be replaced by a rename without
replacing the device itself: it is written to directly, as a shell
redirection would. Another user's symlink or FIFO, planted under the
target's name in a shared directory, is never followed or written into:
it is replaced (or, in a sticky directory, the rename is refused).

Errors are ``OSError`` naming the target (not the temp file, which is
removed): callers translate them into their own messages.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from sessiond.failpoints import FSYNC_ERROR, failpoints

PRIVATE = 0o600


class AtomicFile:
    """A temp file beside ``path``, renamed over it by ``commit``.

    For writers that open before they know what they will write (the
    export opens its target before it reaches the daemon, so that a bad
    path is refused first): ``file`` takes the bytes, ``commit`` puts them
    in place, ``discard`` throws them away. As a context manager it commits
    on success and discards on any exception.

    ``mode`` is set before the rename, so the file never appears under its
    name with another. ``prefix`` and ``suffix`` shape the temp name (for a
    caller that sweeps leftovers of an interrupted write by name). A symlink
    is followed, and a target that is no regular file is written to
    directly (see the module's docstring): then ``tmp`` is ``None``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = PRIVATE,
        prefix: str | None = None,
        suffix: str = ".tmp",
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self._done = False
        self.tmp: Path | None = None
        trusted = (os.getuid(), 0)
        st = _stat(self.path, follow=False)
        if st is not None and stat.S_ISLNK(st.st_mode) and st.st_uid in trusted:
            pointed = _stat(self.path, follow=True)
            if pointed is None or stat.S_ISREG(pointed.st_mode):
                # The file it points to is the one replaced (or made).
                self.path = Path(os.path.realpath(self.path))
            st = pointed
        if (st is not None and st.st_uid in trusted and not stat.S_ISREG(st.st_mode)
                and not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode)):
            try:
                self.file: BinaryIO = open(self.path, "wb")  # closed by commit or discard
            except OSError as exc:
                raise _about(exc, self.path) from exc
            return
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}." if prefix is None else prefix,
                suffix=suffix,
                dir=directory,
            )
        except OSError as exc:
            raise _about(exc, self.path) from exc
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flush, fsync, rename over the target, fsync the directory.
        Raises ``OSError`` naming the target (and removes the temp file)."""
        if self._done:
            raise ValueError(f"{self.path} was already committed or discarded")
        if self.tmp is None:
            # Written to directly: nothing to sync or rename.
            self._done = True
            try:
                self.file.close()
            except OSError as exc:
                raise _about(exc, self.path) from exc
            return
        try:
            self.file.flush()
            if self.mode != PRIVATE:
                os.fchmod(self.file.fileno(), self.mode)
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            raise _about(exc, self.path) from exc
        self._done = True
        try:
            fsync_dir(self.path.parent)
        except OSError as exc:
            # The new file is in place; only its durability is in doubt.
            raise _about(exc, self.path.parent) from exc

    def discard(self) -> None:
        """Remove the temp file, unless the write was committed."""
        if self._done:
            return
        self._done = True
        try:
            self.file.close()
        except OSError:
            pass  # what it failed to flush is being thrown away anyway
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.commit()
        else:
            self.discard()


@contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    *,
    mode: int = PRIVATE,
    prefix: str | None = None,
    suffix: str = ".tmp",
) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` holds what was
    written once the block ends, and is untouched if it raises. Raises
    ``OSError`` naming ``path``."""
    with AtomicFile(path, mode=mode, prefix=prefix, suffix=suffix) as out:
        yield out.file


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = PRIVATE,
    prefix: str | None = None,
    suffix: str = ".tmp",
) -> None:
    """Replace ``path`` with ``data`` atomically. Raises ``OSError`` naming
    ``path``."""
    with AtomicFile(path, mode=mode, prefix=prefix, suffix=suffix) as out:
        try:
            write_all(out.file.fileno(), data)
        except OSError as exc:
            raise _about(exc, out.path) from exc


def _stat(path: Path, follow: bool) -> os.stat_result | None:
    """``path``'s status (``None``: nothing there). Raises ``OSError`` naming it."""
    try:
        return os.stat(path, follow_symlinks=follow)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _about(exc, path) from exc


def _about(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path``: the temp file's name means nothing to anyone."""
    if exc.filename == os.fspath(path):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


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
