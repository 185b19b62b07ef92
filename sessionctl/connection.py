"""A client's connection, the parts both clients share: how a socket is
opened (and what a refusal says, and whether a daemon may be started), the
hello that opens a connection, and reading reply frames.

``Client`` (a plain socket) and ``sessionctl.aclient.AsyncClient`` (anyio)
do the I/O each their own way; what they must say and decide alike is
here, so that they raise the same errors in the same words.
"""

from __future__ import annotations

import array
import os
import socket as _socket
import sys
import time
from collections.abc import Callable

import msgspec

from sessionctl.results import AnyReply
from sessiond.errors import (
    ClientClosed,
    ConnectionLost,
    DaemonUnavailable,
    InvalidRequest,
    ProtocolError,
    Unsupported,
)
from sessiond.limits import MAX_TIMEOUT
from sessiond.protocol import (
    HEADER,
    OLDEST_VERSION,
    PROTOCOL_VERSION,
    Hello,
    HelloReply,
    Response,
)

# Far above any reply the daemon makes (a page is at most PAGE_MAX sessions
# of at most 64 KiB of meta each): a bigger header means a broken stream.
MAX_REPLY_BYTES = 1 << 30
# A recv(2) of this size covers any small reply in one call; far bigger sizes
# make every call map and unmap its buffer (measured: 3 us for 64 KiB, 22 us
# for 256 KiB, whatever arrives). A big reply is read in bigger calls.
RECV_BYTES = 65536
BIG_RECV_BYTES = 1 << 18
NO_AUTOSTART_ENV = "SESSIONCTL_NO_AUTOSTART"
# Booleans as systemd reads them (parse_boolean), any case; empty is unset.
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"", "0", "no", "n", "false", "f", "off"})
_decoder: msgspec.msgpack.Decoder[Response] = msgspec.msgpack.Decoder(AnyReply)
# What an encode of a request can fail with: see sessionctl.arguments,
# which says why (imported then, and only then).
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)


def decode(body: bytes | memoryview, where: str) -> Response:
    """A reply body from ``where``; ``ProtocolError`` if it is not one this
    client reads (msgspec's account of why is the error's ``__cause__``)."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(
            f"what answers on {where} sent a reply this client cannot read: it is not "
            f"sessiond, or a sessiond of another release (restart it to run this one)"
        ) from exc


def pop_frame(buf: bytearray, where: str) -> Response | None:
    """The next whole reply at the start of ``buf``, taken out of it, if
    there is one."""
    if len(buf) < HEADER:
        return None
    n = int.from_bytes(buf[:HEADER], "big")
    if n > MAX_REPLY_BYTES:
        # Nothing the daemon sends comes near: the stream is out of step.
        raise ProtocolError(
            f"reply frame of {n} bytes from {where} exceeds {MAX_REPLY_BYTES}; "
            f"the connection is out of step"
        )
    end = HEADER + n
    if len(buf) < end:
        return None
    # Decoded in place; the view is released before the bytes are dropped,
    # and when the reply cannot be read (its traceback would keep the view,
    # and the client that drops the connection must empty its buffer).
    with memoryview(buf)[HEADER:end] as view:
        response = decode(view, where)
    del buf[:end]
    return response


def use_kernel_timeouts(sock: _socket.socket, timeout: float | None) -> None:
    """Make ``sock`` blocking, with ``timeout`` enforced by the kernel
    (SO_RCVTIMEO, SO_SNDTIMEO): a socket with a Python timeout polls before
    every recv and send, two more system calls a request. A recv or send
    that times out then fails with EAGAIN."""
    sock.settimeout(None)
    if timeout is None:
        return
    micros = max(1, round(timeout * 1_000_000))  # zero would mean "never"
    # struct timeval: two C longs on Linux.
    timeval = array.array("l", divmod(micros, 1_000_000)).tobytes()
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, timeval)


def connect_patiently(sock: _socket.socket, path: str, timeout: float | None) -> None:
    """connect(2), waiting while the daemon's accept backlog is full.

    A socket with a timeout is non-blocking underneath, and a non-blocking
    Unix-socket connect fails at once with EAGAIN when the backlog is full
    instead of waiting its turn, as a blocking one would."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


# struct ucred (SO_PEERCRED): pid, uid, gid, each a C int.
_UCRED_BYTES = 12


def check_server(sock: _socket.socket, where: str) -> None:
    """Raises ``DaemonUnavailable`` unless what listens on ``where``, just
    connected on ``sock``, runs as this user (``SO_PEERCRED``: the uid of
    the process that called listen(2), which the kernel vouches for, as
    PostgreSQL's ``requirepeer`` checks it). Asked before a byte is sent:
    a socket of another user at the path (a runtime dir that is not
    private, or one that another user made first) would otherwise be told
    every session this client sends, and could answer anything. The
    daemon serves its own user only, so another uid is never the right
    one, root's included."""
    try:
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED_BYTES)
    except OSError as exc:
        raise DaemonUnavailable(
            f"cannot tell who listens on {where} (SO_PEERCRED: {exc.strerror or exc}), so "
            f"nothing was sent to it"
        ) from exc
    uid = int.from_bytes(raw[4:8], sys.byteorder, signed=True)
    me = os.geteuid()  # the kernel records effective uids, the listener's too
    if uid != me:
        raise DaemonUnavailable(
            f"refused: what listens on {where} runs as uid {uid}, not as you (uid {me}): it "
            f"is not your sessiond (each user runs a daemon of their own, on a socket of "
            f"their own), and nothing was sent to it"
        )


def autostart_off_by_env() -> bool:
    """Whether ``SESSIONCTL_NO_AUTOSTART`` turns autostart off, read as
    systemd reads a boolean: ``1``, ``yes``, ``true``, ``on`` turn it off;
    ``0``, ``no``, ``false``, ``off`` or empty leave it on. Raises
    ``InvalidRequest`` for anything else, rather than guess which was
    meant. Read here only: ``Client`` asks it for the CLI, the shim and
    Python programs alike."""
    value = os.environ.get(NO_AUTOSTART_ENV, "")
    word = value.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise InvalidRequest(
        f"{NO_AUTOSTART_ENV}={value!r} is not a boolean: 1, yes, true or on turns autostart "
        f"off; 0, no, false, off or empty leaves it on"
    )


def closed(kind: str, where: str, midway: bool = False) -> ClientClosed:
    """The error of every call on a closed ``Client`` or ``AsyncClient``;
    ``midway``: of a request that was on its way, or awaiting its answer,
    when the client closed (it may have been carried out)."""
    if midway:
        return ClientClosed(
            f"this {kind} (for {where}) was closed while a request was on its way or "
            f"awaiting its answer: whether the daemon carried it out is unknown; make a new "
            f"client to go on"
        )
    return ClientClosed(
        f"this {kind} (for {where}) is closed; make a new one (a client closes when its "
        f"'with' block ends)"
    )


def lost(where: str, exc: BaseException | None) -> ConnectionLost:
    """The error of a request whose connection to ``where`` was lost
    (``exc`` the failure, ``None`` for an end of stream): the request may
    or may not have been carried out, so it is not sent again; the
    client's next call connects again. Some of anyio's errors carry no
    message: their cause's, or their type, says what happened."""
    if exc is None:
        what = "the daemon closed the connection"
    else:
        cause = exc.__cause__
        what = str(exc) or (str(cause) if cause is not None else "") or type(exc).__name__
    return ConnectionLost(
        f"connection to {where} lost ({what}); whether the daemon carried out the "
        f"request is unknown, and the client's next call connects again", what
    )


def refusal(
    where: str, exc: OSError, off_by: str | None, started: bool, advice: Callable[[str], str]
) -> DaemonUnavailable | None:
    """What a failed connect to ``where`` raises, or ``None`` when a daemon
    should be started (nothing answers, and autostart is on). ``started``:
    one was, and answered, and now does not; ``advice`` says how to turn
    autostart on, given what turned it off."""
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        if started:
            return DaemonUnavailable(
                f"sessiond was started and answered on {where}, then stopped "
                f"answering ({exc.strerror}); see sessiond.log in its data dir (or "
                f"'journalctl --user -u sessiond' under systemd)"
            )
        if off_by is None:
            return None
        from sessionctl.autostart import start_advice
        from sessionctl.unreachable import connect_failed

        return DaemonUnavailable(connect_failed(where, exc) or (
            f"no sessiond answers on {where} ({exc.strerror}); "
            f"{start_advice(where)}, or {advice(off_by)}"
        ))
    from sessionctl.unreachable import connect_failed

    return DaemonUnavailable(connect_failed(where, exc) or f"cannot connect to {where}: {exc}")


def client_socket(
    socket: str | os.PathLike[str] | None, timeout: float | None, autostart: bool | None
) -> str:
    """Where a client made with these arguments connects (a string, as
    ``str(Path)`` gives it: ``path`` makes the Path only when asked, so that
    a CLI run need not import pathlib). Raises ``InvalidRequest`` for a
    ``socket``, ``timeout`` or ``autostart`` of the wrong kind, in
    ``sessionctl.arguments``' words; the usual arguments pass without
    importing it."""
    from sessiond.paths import socket_location

    if socket is not None and type(socket) is not str:
        from sessionctl import arguments

        socket = arguments.socket(socket)
    if not (
        (timeout is None or (type(timeout) is float and 0 < timeout <= MAX_TIMEOUT))
        and (autostart is None or type(autostart) is bool)
    ):
        from sessionctl import arguments

        arguments.timeout(timeout)
        arguments.autostart(autostart)
    return socket_location(socket)


def autostart_off_by(autostart: bool | None) -> str | None:
    """What turned autostart off (``BY_ARGUMENT``, ``BY_ENVIRONMENT``), or
    ``None`` when it is on."""
    if autostart is None:
        return BY_ENVIRONMENT if autostart_off_by_env() else None
    return None if autostart else BY_ARGUMENT


# What turned autostart off, as ``Client._autostart_advice`` is told.
BY_ARGUMENT = "argument"
BY_ENVIRONMENT = "environment"


def hello_request(version: int) -> Hello:
    """The hello that opens a connection, saying the newest protocol
    version this client speaks. A daemon of version 2 or later answers the
    lower of its own and ours. One of version 1 refuses any hello but 1
    (``Unsupported``), and the client then says hello again with
    ``OLDEST_VERSION``: one round trip more, against old daemons only."""
    return Hello(id=0, version=version, client="sessionctl")


def check_hello(hello: HelloReply, where: str) -> None:
    """Raises ``Unsupported`` unless the daemon agreed on a version of the
    protocol that this client speaks."""
    if not OLDEST_VERSION <= hello.version <= PROTOCOL_VERSION:
        raise Unsupported(
            f"sessiond {hello.server} on {where} speaks protocol version "
            f"{hello.version}, this client speaks {OLDEST_VERSION} to {PROTOCOL_VERSION}; "
            f"restart the daemon so that both run the same release"
        )


def python_advice(kind: str, off_by: str) -> str:
    """How a Python program lets a ``kind`` (``Client``, ``AsyncClient``)
    start the daemon, given what turned that off."""
    if off_by == BY_ENVIRONMENT:
        return (
            f"let the client start it: {NO_AUTOSTART_ENV}="
            f"{os.environ.get(NO_AUTOSTART_ENV, '')!r} in the environment turns that "
            f"off; unset it, or pass {kind}(autostart=True)"
        )
    return f"let the client start it: pass {kind}(autostart=True), or leave autostart out"
