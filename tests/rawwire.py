"""A raw client for tests that must break the protocol on purpose.

``Client`` only speaks well-formed requests; these helpers put arbitrary
bytes on the socket and read back whatever frames the daemon answers with,
decoded as plain msgpack (so an unexpected reply shape still shows up).
"""

from __future__ import annotations

import os
import socket
import threading
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


class OutOfStep:
    """A peer that puts one bad frame on a real daemon's connection (which
    never sends one): it listens at ``path``, and for the one connection it
    takes, passes the client's hello to the daemon at ``daemon_socket`` and
    its answer back, answers the request that follows with a frame no
    client can read, then notes whether the client hangs up (``wait``)."""

    # msgpack's one byte that stands for nothing.
    BAD_BODY = b"\xc1"

    def __init__(self, path: Path, daemon_socket: Path, timeout: float = 10.0) -> None:
        self.daemon_socket = daemon_socket
        self.timeout = timeout
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(os.fspath(path))
        self.server.listen()
        self.hung_up: bool | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.settimeout(self.timeout)
            conn, _ = self.server.accept()
            with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as daemon:
                conn.settimeout(self.timeout)
                daemon.settimeout(self.timeout)
                daemon.connect(os.fspath(self.daemon_socket))
                daemon.sendall(_take_frame(conn))  # the hello
                conn.sendall(_take_frame(daemon))
                _take_frame(conn)
                conn.sendall(frame(self.BAD_BODY))
                try:
                    while conn.recv(65536):
                        pass  # what else the client sent before it knew
                    self.hung_up = True
                except TimeoutError:
                    self.hung_up = False
        except BaseException as exc:  # told to the test by wait()
            self.error = exc
        finally:
            self.server.close()

    def wait(self) -> bool:
        """Whether the client hung up after the bad frame."""
        self.thread.join(self.timeout * 2)
        assert not self.thread.is_alive(), "the bad-frame peer did not finish"
        if self.error is not None:
            raise self.error
        assert self.hung_up is not None
        return self.hung_up


def _take_frame(sock: socket.socket) -> bytes:
    """One whole frame off ``sock``, header and all, as it came."""
    head = _exactly(sock, HEADER)
    return head + _exactly(sock, int.from_bytes(head, "big"))


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"the connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


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
