"""Where the shared engine is: ``--backend URL`` read, checked and redacted.

``redis://[user[:password]@]host[:port][/db]``, ``rediss://`` for TLS,
``unix:///path/to/redis.sock[?db=N]``; ``valkey://`` and ``valkeys://`` are
the same as ``redis://`` and ``rediss://``. A password can also come from
``SESSIOND_BACKEND_PASSWORD`` or a file (``--backend-password-file``), which
win over one in the URL. The password is kept apart from the URL from the
moment it is read: what is logged, shown in ``stats`` or put in an error is
``Backend.shown``, which never holds it.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sessiond.errors import ConfigError

PASSWORD_ENV = "SESSIOND_BACKEND_PASSWORD"
SCHEMES = {
    "redis": False, "valkey": False, "rediss": True, "valkeys": True, "unix": False,
}
DEFAULT_PORT = 6379
# A namespace names keys' hash tag: what braces would break is refused.
NAMESPACE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Backend:
    """A parsed backend address; ``password`` never leaves this object but
    for the connection."""

    scheme: str
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""  # a Unix socket
    db: int = 0
    username: str | None = None
    tls: bool = False
    password: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The address as it may be shown anywhere: no password."""
        user = f"{self.username}@" if self.username else ""
        if self.path:
            return f"unix://{user}{self.path}" + (f"?db={self.db}" if self.db else "")
        db = f"/{self.db}" if self.db else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}{db}"

    def client_kwargs(self) -> dict[str, Any]:
        """What redis-py's client takes to reach this backend."""
        kwargs: dict[str, Any] = {"db": self.db, "password": self.password}
        if self.username:
            kwargs["username"] = self.username
        if self.path:
            kwargs["unix_socket_path"] = self.path
        else:
            kwargs.update(host=self.host, port=self.port, ssl=self.tls)
        return kwargs


def parse(url: str, password: str | None = None) -> Backend:
    """A ``Backend`` from ``url``; ``password``, when given, wins over one in
    the URL. Raises ``ConfigError`` saying what is wrong, never quoting a
    password."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"backend URL is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"backend URL scheme {scheme or '(none)'!r} is not one of "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ConfigError(f"backend URL option {unknown[0]!r} is not known (only db=N)")
    try:
        # urlsplit reads the port lazily: a bad one raises here.
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError("backend URL has a port that is not a number from 1 to 65535") from None
    username = unquote(parts.username) if parts.username else None
    in_url = unquote(parts.password) if parts.password is not None else None
    secret = password if password is not None else in_url
    if scheme == "unix":
        if not parts.path:
            raise ConfigError("backend URL unix:// needs the socket's path: unix:///path/redis.sock")
        db = _db(query.get("db", ["0"])[0])
        return Backend("unix", path=unquote(parts.path), db=db, username=username, password=secret)
    if not parts.hostname:
        raise ConfigError(f"backend URL {scheme}:// needs a host: {scheme}://host:port")
    path = parts.path.strip("/")
    db = _db(path if path else query.get("db", ["0"])[0])
    return Backend(
        scheme, host=parts.hostname, port=port, db=db, username=username,
        tls=SCHEMES[scheme], password=secret,
    )


def _db(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 10_000:
        raise ConfigError(f"backend database must be a number from 0, not {text!r}")
    return int(text)


def password_from(environ: dict[str, str], password_file: str | None) -> str | None:
    """The password from ``--backend-password-file`` or the environment (the
    file wins), or ``None``. Raises ``ConfigError`` naming the file."""
    if password_file:
        try:
            with Path(password_file).expanduser().open() as f:
                mode = os.fstat(f.fileno()).st_mode
                text = f.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the backend password file {password_file}: {exc.strerror}"
            ) from exc
        if mode & 0o004:
            # As ssh refuses a private key others can read: the password
            # opens every session of every daemon on the backend.
            raise ConfigError(
                f"the backend password file {password_file} can be read by every user of "
                f"this machine (mode {stat.S_IMODE(mode):o}), so it is not used; run "
                f"'chmod o-r {password_file}'"
            )
        return text.rstrip("\r\n")
    value = environ.get(PASSWORD_ENV)
    return value if value else None


def check_namespace(name: str) -> str:
    if not NAMESPACE_RE.fullmatch(name):
        raise ConfigError(
            f"namespace {name!r} must be 1 to 64 of A-Z a-z 0-9 . _ - (it names the "
            f"engine's keys)"
        )
    return name
