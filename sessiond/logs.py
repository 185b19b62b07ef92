"""Where the daemon's log goes, and in the form that fits there.

* **journald** (run by systemd, stderr connected to the journal): systemd
  says so in ``JOURNAL_STREAM`` (``DEVICE:INODE`` of that stream), which we
  believe only if it names our stderr, as ``sd_journal_stream_fd`` users do:
  a process started from a shell that runs under systemd inherits the
  variable with its stderr pointed elsewhere. The journal stamps each line
  with the time and our pid itself, so a line is ``<N>message``: ``N`` is
  the syslog priority, which journald reads off and strips, so that
  ``journalctl -p warning`` finds our warnings. The journal splits a stream
  at newlines, so every line of a multi-line record (a traceback) carries
  the prefix, or its tail would land as ``info``.
* **a file** (``--log-file``, as autostart runs the daemon): the usual
  format, and the file rotates by size (``MAX_BYTES`` by default, keeping
  ``BACKUPS`` old files: ``sessiond.log.1`` is the newest of those). Our
  stderr follows the file, so that whatever reaches stderr rather than the
  logging module (a traceback that ends the process, a message from the
  interpreter) lands in the current file and not in one rotated away.
* **stderr** otherwise, in the usual format.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import stat
import sys
from collections.abc import Mapping
from logging.handlers import RotatingFileHandler
from pathlib import Path

from sessiond.diskio import describe
from sessiond.errors import StartError

FORMAT = "%(asctime)s sessiond[%(process)d] %(levelname)s %(message)s"
JOURNAL_STREAM = "JOURNAL_STREAM"
MAX_BYTES = 1024 * 1024
BACKUPS = 3

# Syslog priorities (sd-daemon(3)'s SD_CRIT ... SD_DEBUG), from the most
# severe level down; a level between two takes the lower one's.
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    """The syslog priority of a logging level."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return _DEBUG_PRIORITY


def stderr_is_journal(environ: Mapping[str, str], fd: int = 2) -> bool:
    """Whether ``fd`` is the stream ``JOURNAL_STREAM`` names. A value that
    is not ``DEVICE:INODE`` names nothing, as for libsystemd."""
    device, sep, inode = environ.get(JOURNAL_STREAM, "").partition(":")
    if not sep:
        return False
    try:
        wanted = (int(device), int(inode))
    except ValueError:
        return False
    try:
        st = os.fstat(fd)
    except OSError:  # no stderr at all: nothing to match
        return False
    return (st.st_dev, st.st_ino) == wanted


class JournalFormatter(logging.Formatter):
    """``<N>message``, every line of the record prefixed."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class LogFile(RotatingFileHandler):
    """``--log-file``: appended to, private to the user (0600) as the data
    dir is, rotated by size, with our stderr pointed at the current file.

    It rotates only once ``start_rotating`` is called (when the daemon holds
    its data dir): a second daemon that starts only to find the data dir
    taken logs its one line without renaming the files under the first."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.rotating = False
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._point_stderr_here()

    def _open(self) -> io.TextIOWrapper:
        fd = open_log(self.baseFilename)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return self.rotating and bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        super().doRollover()
        self._point_stderr_here()

    def _point_stderr_here(self) -> None:
        if self.stream is None:
            return
        sys.stderr.flush()
        os.dup2(self.stream.fileno(), 2)


class LogRefused(OSError):
    """A log file that is not this user's to write (``open_log``)."""


def open_log(path: str) -> int:
    """``path`` open for appending, created 0600: a descriptor. Refused
    (``LogRefused``) when it is another user's: a file of theirs would be
    told everything this daemon logs, and a symlink of theirs (planted
    under the name in ``/tmp``) would have the daemon append its lines to
    whatever of this user's it points at, its journal among them. A symlink
    of the user's or root's is followed, as ``sessiond.diskio`` follows
    one; a device of root's (``/dev/null``, a terminal) is written to.
    Raises ``OSError``."""
    uid = os.getuid()
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (uid, 0):
            raise LogRefused(errno.EPERM, f"it is a symlink of uid {st.st_uid}, not yours "
                                          f"(uid {uid}): not followed", path)
    else:
        flags |= os.O_NOFOLLOW  # a symlink put there since: refused (ELOOP), not followed
    # Non-blocking: a FIFO with no reader fails at once instead of hanging.
    fd = os.open(path, flags, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid != uid and not (st.st_uid == 0 and not stat.S_ISREG(st.st_mode)):
            raise LogRefused(errno.EPERM, f"it is owned by uid {st.st_uid}, not by you (uid "
                                          f"{uid}), who would read what this daemon logs", path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            # A hard link made in a shared directory to a file of the
            # user's (its journal) would have the log appended to that file,
            # as Postfix refuses to deliver to a mailbox with another name.
            raise LogRefused(errno.EPERM, f"it has {st.st_nlink} hard links, so it is also "
                                          f"another file of yours, which the log would be "
                                          f"appended to", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def setup(level: int, log_file: Path | None = None, max_bytes: int = MAX_BYTES,
          backups: int = BACKUPS) -> None:
    """Send the log where it fits (see the module's text).

    Raises ``StartError`` when ``log_file`` cannot be opened."""
    handler: logging.Handler
    if log_file is not None:
        try:
            handler = LogFile(log_file, max_bytes, backups)
        except LogRefused as exc:
            raise StartError(f"cannot use the log file {log_file}: {exc.strerror}") from exc
        except OSError as exc:
            raise StartError(f"cannot open the log file {log_file}: {describe(exc)}") from exc
        handler.setFormatter(logging.Formatter(FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JournalFormatter() if stderr_is_journal(os.environ) else logging.Formatter(FORMAT)
        )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)


def start_rotating() -> None:
    """Let the log file rotate from now on: this daemon holds its data dir."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogFile):
            handler.rotating = True
