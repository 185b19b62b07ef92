"""Keeping the data dir's files at their paths while the daemon runs.

A tmp cleaner, an ``rm`` by hand, or a backup script's ``mv`` can take the
lock file or the journal away from under a running daemon, which goes on
holding them open: nothing fails, and that is the danger.

* **The journal.** Writes would go on into a file that no path leads to
  (removed) or that the next start does not read (renamed, or another
  file put in its place): acknowledged, then lost at the next start. Once
  a second the daemon checks that ``data.jsonl`` still leads to the file
  it writes (the same device and inode). When it does not, writes are
  refused (``Journal.lost``) until a compaction has written the whole
  state, which memory holds, to the path again: the compactor tries at
  once and retries on its own, as after a failed fsync. A write made in
  the second before the check is in memory and in that rewrite, so
  nothing acknowledged is lost unless the daemon dies before the rewrite
  (PostgreSQL, which checks its lock file once a minute, shuts down
  instead; the state here lives in memory and can be put back).
* **The data dir itself.** Moved away or removed (and perhaps made again,
  by another daemon that now holds the new one): writes are refused as
  above, and nothing is written at the path until it leads to the
  directory this daemon locked again (``compaction.at_home``), when the
  rewrite puts the journal back. (A restart meanwhile would start on
  whatever is at the path, without what the moved directory holds.)
* **The lock file.** The data dir stays locked without it (the lock is on
  the directory too: ``paths.DataDirLock``), but it names the holder to
  clients, autostart and a second daemon: it is written again, saying so.

``SocketKeeper`` (``sessiond.rebind``) does the same for the socket.
"""

from __future__ import annotations

import fcntl
import logging
import os

import anyio

from sessiond import paths
from sessiond.diskio import describe
from sessiond.journal import Journal
from sessiond.ticks import TICK, until_tick

log = logging.getLogger("sessiond")

CHECK_INTERVAL = TICK
Identity = tuple[int, int]


def _at(path: os.PathLike[str]) -> Identity | None:
    """What ``path`` leads to; ``None`` once nothing does. Raises
    ``OSError`` when that cannot be told."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def _of(fd: int) -> Identity:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class DataDirKeeper:
    """Watches the lock file and (for the local engine) the journal."""

    def __init__(self, lock: paths.DataDirLock, journal: Journal | None) -> None:
        self.lock = lock
        self.journal = journal
        self._said: str | None = None  # the lock's last problem logged (said once)

    async def run(self) -> None:
        """Check every ``CHECK_INTERVAL`` seconds (at each tick:
        ``sessiond.ticks``), for the daemon's life."""
        while True:
            await anyio.sleep(until_tick())
            self.check()

    def check(self) -> None:
        if not self._at_home():
            return
        if self.journal is not None:
            self._check_journal(self.journal)
        self._check_lock()

    def _at_home(self) -> bool:
        """Whether the data dir's path still leads to the directory locked.
        When it does not (moved away, removed, another made in its place),
        nothing is written there: writes are refused until it is back."""
        directory = self.lock.path.parent
        try:
            now = _at(directory)
        except OSError as exc:
            self._say(f"cannot tell whether data dir {directory} is still this daemon's: "
                      f"{describe(exc)}")
            return False
        if now == self.lock.home:
            return True
        journal = self.journal
        if journal is not None and not journal.readonly.file_lost:
            journal.lost(f"data dir {directory} was moved, removed or replaced while the "
                         f"daemon ran, so what is written would not be found at the next "
                         f"start; put it back, or restart sessiond")
        elif journal is None:
            self._say(f"data dir {directory} was moved, removed or replaced while the "
                      f"daemon ran; restart sessiond")
        return False

    def _check_journal(self, journal: Journal) -> None:
        file = journal.file
        # A compaction swaps the file in two steps (the rename, then the
        # descriptor): between them the path leads to the new file.
        if file is None or journal.readonly.file_lost or journal.rewrites.lock.locked():
            return
        try:
            now = _at(journal.path)
        except OSError as exc:
            log.warning("cannot tell whether journal %s is still the file written: %s",
                        journal.path, describe(exc))
            return
        if now == _of(file.fd):
            return
        what = "removed or renamed" if now is None else "replaced by another file"
        journal.lost(f"journal {journal.path} was {what} while the daemon ran, so what is "
                     f"written to it would not be found at the next start")

    def _check_lock(self) -> None:
        lock = self.lock
        try:
            now = _at(lock.path)
            if now == _of(lock.file_fd):
                self._said = None
                return
        except OSError as exc:
            self._say(f"cannot tell whether lock file {lock.path} is still this daemon's: "
                      f"{describe(exc)}")
            return
        if now is not None:
            self._say(f"lock file {lock.path} is no longer this daemon's (another file is "
                      f"there now): leaving it alone")
            return
        try:
            fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._say(f"lock file {lock.path} was removed and cannot be written again: "
                      f"{describe(exc)}; retrying every {CHECK_INTERVAL:g}s")
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            self._say(f"lock file {lock.path} was removed and cannot be written again: "
                      f"{describe(exc)}; retrying every {CHECK_INTERVAL:g}s")
            return
        os.close(lock.file_fd)
        lock.file_fd = fd
        self._said = None
        log.warning("lock file %s was removed while this daemon ran: wrote it again (the "
                    "data dir stayed locked meanwhile)", lock.path)

    def _say(self, problem: str) -> None:
        if problem != self._said:
            log.warning("%s", problem)
            self._said = problem
