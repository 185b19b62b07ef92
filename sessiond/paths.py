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

from sessiond.errors import DataDirTaken, SessionError, StartError

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


def default_socket() -> Path:
    from pathlib import Path

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / APP / SOCKET_NAME
    return Path(_platformdirs()[0]) / SOCKET_NAME


def socket_path(option: str | None = None) -> Path:
    """``--socket``, then ``$SESSIOND_SOCKET``, then the default."""
    from pathlib import Path

    chosen = option or os.environ.get(SOCKET_ENV)
    return Path(chosen).expanduser() if chosen else default_socket()


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
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            joined = f"{runtime}/{APP}/{SOCKET_NAME}"
            if _normal(joined):
                return joined
    return str(socket_path(option))


def data_dir(option: str | None = None) -> Path:
    from pathlib import Path

    chosen = option or os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else Path(_platformdirs()[1])


def config_path(option: str | None = None) -> Path:
    from pathlib import Path

    chosen = option or os.environ.get(CONFIG_ENV)
    return Path(chosen).expanduser() if chosen else Path(_platformdirs()[2]) / "config.json"


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


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700 if missing; refuse one that is a symlink, is
    owned by someone else, or is open to group or others."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
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
    return path


def lock_data_dir(lock_path: Path) -> int:
    """Exclusive lock on the data dir, held for the daemon's life. Raises
    ``StartError`` when another daemon holds it or it cannot be made."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartError(
            f"cannot use data dir {lock_path.parent}: its lock file {lock_path.name} cannot be "
            f"opened: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirTaken(holder, str(lock_path.parent)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
