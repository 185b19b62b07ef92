"""Where things live: flags, then environment, then platformdirs defaults.

``sessionctl`` resolves the socket with the same function as the daemon, so
both always agree on where to meet.

pathlib is imported only by the functions that make a Path, and ``Paths``
is a NamedTuple rather than a dataclass: every ``sessionctl`` run imports
this module, and pathlib and dataclasses would cost it several milliseconds
(``socket_location`` gives the socket, as a string, without either).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import warnings
from typing import TYPE_CHECKING, NamedTuple

from sessiond.errors import DataDirTaken, InvalidRequest, SessionError, StartError

if TYPE_CHECKING:
    from pathlib import Path

APP = "sessiond"
SOCKET_ENV = "SESSIOND_SOCKET"
DATA_DIR_ENV = "SESSIOND_DATA_DIR"
CONFIG_ENV = "SESSIOND_CONFIG"
JOURNAL_NAME = "data.jsonl"
LOCK_NAME = "sessiond.lock"
LOG_NAME = "sessiond.log"
SOCKET_NAME = "sessiond.sock"
# A Unix socket's address holds 108 bytes, the terminating NUL included.
SOCKET_PATH_MAX = 107


class UnsafePath(SessionError):
    """A directory that others could use to get at the socket or data."""

    code = "unsafe"


def _platformdirs() -> tuple[str, str, str]:
    import platformdirs

    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR platformdirs falls back to /tmp/runtime-UID
        # and warns; we create and check that directory ourselves.
        warnings.simplefilter("ignore")
        runtime = platformdirs.user_runtime_dir(APP)
    return runtime, platformdirs.user_state_dir(APP), platformdirs.user_config_dir(APP)


def xdg_dir(name: str) -> str | None:
    """``$name``, an XDG base directory (``XDG_RUNTIME_DIR``, ...), when it
    is an absolute path; ``None`` when it is unset, empty or relative. The
    XDG Base Directory spec says to ignore a relative one, as systemd does:
    a path that depends on the current directory would give a client and
    the daemon it started two different sockets."""
    value = os.environ.get(name, "")
    return value if os.path.isabs(value) else None


def default_socket() -> Path:
    from pathlib import Path

    runtime = xdg_dir("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / APP / SOCKET_NAME
    return Path(_platformdirs()[0]) / SOCKET_NAME


def _chosen(option: str | None, env: str) -> tuple[str | None, str | None]:
    """The path given (``option``, else ``$env``), and the variable it came
    from (``None``: the option, or nothing given)."""
    if option:
        return option, None
    value = os.environ.get(env)
    return (value, env) if value else (None, None)


def _expanded(text: str, source: str | None) -> Path:
    """``text`` as a Path, a leading ``~`` or ``~user`` expanded. Raises
    ``InvalidRequest`` when it names no home directory (pathlib's bare
    RuntimeError would reach the user as a traceback); ``source`` is the
    variable it came from, to name in the message."""
    from pathlib import Path

    try:
        return Path(text).expanduser()
    except RuntimeError as exc:
        user = text[1:].partition("/")[0]
        why = f"no user {user}" if user else "this user has no home directory (HOME is not set)"
        given = f"{source}={text!r}" if source else repr(text)
        raise InvalidRequest(f"cannot expand {given}: {why}") from exc


def socket_path(option: str | None = None) -> Path:
    """``--socket``, then ``$SESSIOND_SOCKET``, then the default. Raises
    ``InvalidRequest`` for a ``~user`` that names nobody."""
    chosen, source = _chosen(option, SOCKET_ENV)
    return _expanded(chosen, source) if chosen else default_socket()


def _normal(path: str) -> bool:
    """Whether ``str(Path(path)) == path``: nothing for pathlib to fold (an
    empty or ``.`` component, a trailing slash)."""
    return not (
        path in ("", ".")
        or path.endswith(("/", "/."))
        or path.startswith("./")
        or "//" in path
        or "/./" in path
    )


def socket_location(option: str | None = None) -> str:
    """``str(socket_path(option))``. In the usual case (a path with nothing
    to expand or fold) it is worked out without pathlib, which the client
    would otherwise import only for this."""
    chosen = option or os.environ.get(SOCKET_ENV)
    if chosen:
        if not chosen.startswith("~") and _normal(chosen):
            return chosen
    else:
        runtime = xdg_dir("XDG_RUNTIME_DIR")
        if runtime:
            joined = f"{runtime}/{APP}/{SOCKET_NAME}"
            if _normal(joined):
                return joined
    return str(socket_path(option))


def data_dir(option: str | None = None) -> Path:
    """``--data-dir``, then ``$SESSIOND_DATA_DIR``, then the default; raises
    as ``socket_path`` does."""
    from pathlib import Path

    chosen, source = _chosen(option, DATA_DIR_ENV)
    return _expanded(chosen, source) if chosen else Path(_platformdirs()[1])


def config_path(option: str | None = None) -> Path:
    """``--config``, then ``$SESSIOND_CONFIG``, then the default; raises as
    ``socket_path`` does."""
    from pathlib import Path

    chosen, source = _chosen(option, CONFIG_ENV)
    return _expanded(chosen, source) if chosen else Path(_platformdirs()[2]) / "config.json"


class Paths(NamedTuple):
    socket: Path
    data_dir: Path
    config: Path

    @property
    def journal(self) -> Path:
        return self.data_dir / JOURNAL_NAME

    @property
    def lock(self) -> Path:
        return self.data_dir / LOCK_NAME

    @property
    def log(self) -> Path:
        return self.data_dir / LOG_NAME


def resolve(socket: str | None = None, data: str | None = None, config: str | None = None) -> Paths:
    return Paths(socket_path(socket), data_dir(data), config_path(config))


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and every missing directory above it, each 0700;
    those that exist are left as they are. ``mkdir(parents=True)`` gives
    its mode to the last directory only: under umask 000 it would make
    ``~/.local`` world-writable, and anyone could then move
    ``~/.local/state`` away (the next daemon would start empty). Raises
    ``OSError``."""
    missing: list[Path] = []
    level = path
    while not os.path.lexists(level) and level.parent != level:
        missing.append(level)
        level = level.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            continue  # made by another process meanwhile: theirs, left alone
        # The new directory is an entry of its parent, durable only once
        # the parent is synced: else a power cut could take it away with
        # the journal (or settings) written inside it since.
        _sync_directory(level.parent)


def _sync_directory(path: Path) -> None:
    """fsync a directory (``diskio.fsync_dir``, which ``sessionctl``'s
    start-up does not import). Raises ``OSError``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        # A parent we may search but not read (mode 0711, say): no
        # descriptor of it to sync, and the system's own write-back makes
        # the entry durable in the end. Refusing to start over it would
        # trade a narrow window after a first start for no start at all.
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700 if missing (and every directory above it that
    is: see ``make_private_dirs``); refuse one that is a symlink, is owned
    by someone else, or is open to group or others, and one that another
    user could put something else in the place of (``safe_ancestors``).
    Raises ``UnsafePath``, ``OSError``."""
    make_private_dirs(path)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"unsafe permissions: {path} is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"unsafe permissions: {path} is not a directory")
    if st.st_uid != os.getuid():
        raise UnsafePath(
            f"unsafe permissions: {path} is owned by uid {st.st_uid}, not {os.getuid()}"
        )
    if st.st_mode & 0o077:
        raise UnsafePath(
            f"unsafe permissions: {path} is open to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}; run 'chmod 700 {path}')"
        )
    safe_ancestors(path)
    return path


def safe_ancestors(path: Path) -> None:
    """Refuse ``path`` when a directory above it lets another user replace
    it. A private directory keeps others out of what is in it, not out of
    its own name: whoever can write the directory that holds it can rename
    it away (even a directory of ours, full) and make their own in its
    place, with a socket of theirs for our clients to talk to or a journal
    of theirs for our next start to replay. So, as OpenSSH's StrictModes
    and tmux's socket directory check, every directory above it, on the
    path as given and on the path it resolves to, must be ours or root's
    and writable by nobody else, unless it is sticky (``/tmp``: there only
    an entry's owner can rename it). A symlink on the way must be ours or
    root's too. An ``XDG_RUNTIME_DIR`` (or a ``/tmp/runtime-UID``) that
    another user made first is refused here. Raises ``UnsafePath``,
    ``OSError``."""
    uid = os.getuid()
    given = os.path.abspath(path)
    real = os.path.realpath(given)
    seen: set[str] = set()
    for chain in (given, real):
        level = os.path.dirname(chain)
        while level not in seen:
            seen.add(level)
            st = os.lstat(level)
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid not in (uid, 0):
                    raise UnsafePath(
                        f"unsafe permissions: {level}, on the way to {path}, is a symlink of "
                        f"uid {st.st_uid} (neither you, uid {uid}, nor root), who can point "
                        f"it elsewhere"
                    )
            elif st.st_uid not in (uid, 0):
                raise UnsafePath(
                    f"unsafe permissions: {level}, above {path}, is owned by uid "
                    f"{st.st_uid} (neither you, uid {uid}, nor root), who could put another "
                    f"directory in the place of {path}"
                )
            elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise UnsafePath(
                    f"unsafe permissions: {level}, above {path}, is writable by group or "
                    f"others (mode {stat.S_IMODE(st.st_mode):o}) and not sticky: they could "
                    f"put another directory in the place of {path}; run 'chmod go-w {level}'"
                )
            parent = os.path.dirname(level)
            if parent == level:
                break
            level = parent


def others_could_write(path: Path) -> str | None:
    """Why someone else could have written the file at ``path`` (``None``:
    only we or root could): it is another uid's, or writable by group or
    others, or a directory above it lets another user put a file of theirs
    in its place (``safe_ancestors``, whose words it then quotes). Raises
    ``OSError`` (``FileNotFoundError`` when there is no such file)."""
    st = path.stat()
    uid = os.getuid()
    if st.st_uid not in (uid, 0):
        return f"is owned by uid {st.st_uid}, not by you (uid {uid}) or root"
    if st.st_mode & 0o022:
        return (f"is writable by group or others (mode {st.st_mode & 0o7777:o}; run "
                f"'chmod go-w {path}')")
    try:
        safe_ancestors(path)
    except UnsafePath as exc:
        return f"is where another user could replace it ({exc})"
    return None


class DataDirLock:
    """The data dir's lock, held for the daemon's life: ``close`` lets go.

    Two locks. One on the directory itself (flock of its descriptor):
    removing or replacing a file inside cannot undo it, so a tmp cleaner
    that took ``sessiond.lock`` away (or an ``rm`` of it by hand) lets no
    second daemon start on the same journal, where the two would write
    over each other's lines. And one on the lock file, which names the
    holder's pid for others to read, and is the lock a daemon of an older
    version takes (so that it and this one exclude each other too).
    ``file_fd`` is replaced when the daemon writes a removed lock file
    again (``sessiond.datadir``)."""

    __slots__ = ("path", "dir_fd", "file_fd", "home")

    def __init__(self, path: Path, dir_fd: int | None, file_fd: int) -> None:
        self.path = path
        self.dir_fd = dir_fd
        self.file_fd = file_fd
        # The data dir locked (device, inode): a directory moved away, and
        # another made at its path, is not it.
        st = os.fstat(dir_fd) if dir_fd is not None else os.stat(path.parent)
        self.home = (st.st_dev, st.st_ino)

    def close(self) -> None:
        for fd in (self.file_fd, self.dir_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.file_fd, self.dir_fd = -1, None


def lock_holder(lock_path: Path) -> str:
    """The pid the lock file names, as text (``unknown`` when it names
    none, or there is no lock file to read)."""
    try:
        with open(lock_path, "rb") as f:
            text = f.read(32)
    except OSError:
        return "unknown"
    return text.decode(errors="replace").strip() or "unknown"


def _lock_directory(lock_path: Path) -> int | None:
    """The data dir (``lock_path``'s parent) open and flocked; ``None``
    where its filesystem cannot lock a directory (NFS emulates flock with
    byte-range locks, which need a file open for writing): the lock file
    alone then, as before. Raises ``DataDirTaken`` when another daemon
    holds it, ``StartError`` when it cannot be opened."""
    directory = lock_path.parent
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StartError(
            f"cannot use data dir {directory}: it cannot be opened: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise DataDirTaken(lock_holder(lock_path), str(directory)) from None
        return None
    return fd


def lock_data_dir(lock_path: Path) -> DataDirLock:
    """Exclusive lock on the data dir (``DataDirLock``), held for the
    daemon's life. Raises ``DataDirTaken`` when another daemon holds it,
    ``StartError`` when it cannot be made."""
    dir_fd = _lock_directory(lock_path)
    try:
        fd = _lock_file(lock_path)
    except BaseException:
        if dir_fd is not None:
            os.close(dir_fd)
        raise
    return DataDirLock(lock_path, dir_fd, fd)


def _lock_file(lock_path: Path) -> int:
    """The lock file, open, flocked and naming this process. Never through
    a symlink (``O_NOFOLLOW``): taking the lock truncates the file, and no
    daemon makes its lock file a symlink."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StartError(
                f"cannot use data dir {lock_path.parent}: its lock file {lock_path.name} is a "
                f"symlink, which is never followed; remove it"
            ) from exc
        raise StartError(
            f"cannot use data dir {lock_path.parent}: its lock file {lock_path.name} cannot be "
            f"opened: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirTaken(holder, str(lock_path.parent)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
