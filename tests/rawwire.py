"""A raw client for tests that must break the protocol on purpose.

``Client`` only speaks well-formed requests; these helpers put arbitrary
bytes on the socket and read back whatever frames the daemon answers with,
decoded as plain msgpack (so an unexpected reply shape still shows up).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import msgspec

from sessionctl import Client

HEADER = 4


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER, "big") + body


def request(**fields: Any) -> bytes:
    """A framed request from plain values (no validation on our side)."""
    return frame(msgspec.msgpack.encode(fields))


class Raw:
    """One Unix-socket connection driven byte by byte."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self._connect(os.fspath(path), timeout)
        except BaseException:
            self.sock.close()
            raise
        self.buf = bytearray()

    def _connect(self, path: str, timeout: float) -> None:
        # With a timeout the socket is non-blocking underneath, and a full
        # accept backlog then fails at once (EAGAIN) instead of waiting.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(self, **fields: Any) -> None:
        self.send(request(**fields))

    def read_frame(self) -> dict[str, Any] | None:
        """The next reply frame, or ``None`` once the daemon has closed."""
        while True:
            if len(self.buf) >= HEADER:
                n = int.from_bytes(self.buf[:HEADER], "big")
                if len(self.buf) >= HEADER + n:
                    body = bytes(self.buf[HEADER : HEADER + n])
                    del self.buf[: HEADER + n]
                    reply = msgspec.msgpack.decode(body)
                    assert isinstance(reply, dict), reply
                    return reply
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                assert not self.buf, f"connection closed inside a frame: {bytes(self.buf)!r}"
                return None
            self.buf += chunk

    def call(self, **fields: Any) -> dict[str, Any]:
        """Send one request and return its reply (which must come)."""
        self.send_request(**fields)
        reply = self.read_frame()
        assert reply is not None, f"daemon closed the connection after {fields!r}"
        return reply

    def error(self, data: bytes) -> dict[str, Any]:
        """Send raw bytes and return the error frame they earn."""
        self.send(data)
        reply = self.read_frame()
        assert reply is not None, "daemon closed the connection instead of answering"
        assert reply.get("r") == "error", reply
        return reply

    def at_eof(self) -> bool:
        """Read until the daemon closes; True once it has."""
        return self.read_frame() is None


State = tuple[list[dict[str, Any]], dict[str, Any]]


def snapshot(where: Path | Client) -> State:
    """The daemon's whole state as seen by a normal client: every session,
    the settings, and the stats counters that move only when state does."""
    if isinstance(where, Path):
        with Client(where, timeout=30) as c:
            return snapshot(c)
    # One round trip for all three: the fuzz test takes thousands of these.
    with where.pipeline() as p:
        page = p.list_page()
        stats = p.stats()
        config = p.config()
    found, cursor = page.result()
    if cursor is not None:
        found = where.list()
    st = stats.result()
    counters = {
        k: getattr(st, k)
        for k in ("total_sessions", "active", "expired", "unique_users", "expiries_done",
                  "purges_done", "journal_bytes", "write_errors", "read_only")
    }
    counters["config"] = config.result()
    return [msgspec.to_builtins(s) for s in found], counters


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def seed(socket_path: Path) -> list[str]:
    """A few long-lived sessions, so that "state intact" means something."""
    with Client(socket_path) as c:
        return [
            c.create(user=f"user{i}", ttl=86400, meta={"n": i, "tags": ["a", "b"]}).id
            for i in range(3)
        ]


def write_config(path: Path, **settings: Any) -> None:
    path.write_bytes(msgspec.json.encode(settings))
    path.chmod(0o600)
