"""The one exception tree shared by the daemon, the client and the CLI.

Every error that crosses the socket carries a ``code``; the client turns the
code back into the same class, so ``except SessionNotFound`` works on both
sides of the wire.
"""

from __future__ import annotations

# The type checker's only: importing typing would cost every ``sessionctl``
# run (this module is on the path of each).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SessionError(Exception):
    """Base of every error sessiond and sessionctl raise on purpose."""

    code = "internal"


class SessionNotFound(SessionError):
    """No session has that id."""

    code = "not_found"


class SessionExpired(SessionError):
    """The session exists but has expired (refresh it with revive)."""

    code = "expired"


class Conflict(SessionError):
    """The request contradicts the current state (id taken, stale version)."""

    code = "conflict"


class InvalidRequest(SessionError):
    """A value or a request shape was not acceptable."""

    code = "invalid"


class TooLarge(InvalidRequest):
    """A frame or value exceeded a configured limit."""

    code = "too_large"


class Unsupported(SessionError):
    """Unknown operation or protocol version."""

    code = "unsupported"


class ReadOnly(SessionError):
    """Writes are refused because the journal (or, for a setting, the
    config file) could not be written."""

    code = "read_only"


class Busy(SessionError):
    """The daemon refused the connection: too many clients."""

    code = "busy"


class InternalError(SessionError):
    """A bug in sessiond: the request did not complete."""

    code = "internal"


class EngineError(InternalError):
    """The shared engine answered a command with an error; ``text`` holds
    its own words (what callers that expect a particular error look at)."""

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class SessionsDamaged(InternalError):
    """A page of sessions that passed over some the shared engine holds
    damaged (changed outside sessiond: read one with ``get`` for what is
    wrong): ``damaged`` says what is wrong with each, in creation order;
    ``sessions`` and ``cursor`` are the rest of the page, to go on with.
    Raised by the client, from the page; never crosses the wire."""

    def __init__(self, sessions: list[Any], cursor: str | None, damaged: list[str]) -> None:
        super().__init__(damaged_words(damaged))
        self.sessions = sessions
        self.cursor = cursor
        self.damaged = damaged


def damaged_words(damaged: list[str]) -> str:
    """What is wrong with the first of the sessions ``damaged`` names, and
    how many more there are."""
    more = len(damaged) - 1
    return damaged[0] + (f" (and {more} more session{'s' if more > 1 else ''})" if more else "")


class DaemonUnavailable(SessionError):
    """Nothing answers on the socket (and autostart was off or failed), or
    the daemon there serves another user."""

    code = "unavailable"


class ConnectionLost(DaemonUnavailable):
    """The connection to the daemon was lost (a client's own: never sent
    over the wire); ``why`` is what happened to it, without what that
    means for a request, which the message says."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class BackendUnavailable(DaemonUnavailable):
    """The daemon answers, but the shared engine it stores sessions in does
    not: nothing was done; try again."""

    code = "backend_unavailable"


class OutcomeUnknown(BackendUnavailable):
    """The shared engine stopped answering after a change was sent to it:
    the change may or may not have been made."""

    code = "outcome_unknown"
class ClientClosed(SessionError):
    """A call on a client (or its pipeline, or its watch) after it was
    closed. Never crosses the wire."""

    code = "closed"


class ProtocolError(SessionError):
    """The peer broke the framing or sent something undecodable."""

    code = "protocol"


class JournalError(SessionError):
    """The journal on disk is damaged or cannot be written."""

    code = "journal"


class StartError(SessionError):
    """The daemon cannot start; the message says why and what to do."""

    code = "start"


class DataDirTaken(StartError):
    """Another daemon holds the lock of ``data_dir``: ``holder`` is its pid
    as the lock file says (``unknown`` if it has not written it yet)."""

    def __init__(self, holder: str, data_dir: str) -> None:
        super().__init__(f"another sessiond (pid {holder}) already uses data dir {data_dir}")
        self.holder = holder
        self.data_dir = data_dir


class ConfigError(InvalidRequest):
    """A configuration key or value is not acceptable."""


BY_CODE: dict[str, type[SessionError]] = {
    cls.code: cls
    for cls in (
        SessionNotFound,
        SessionExpired,
        Conflict,
        InvalidRequest,
        TooLarge,
        Unsupported,
        ReadOnly,
        Busy,
        InternalError,
        DaemonUnavailable,
        BackendUnavailable,
        OutcomeUnknown,
        ProtocolError,
    )
}


def from_code(code: str, message: str) -> SessionError:
    """Rebuild the exception a daemon error frame stands for."""
    return BY_CODE.get(code, SessionError)(message)
