"""Wire protocol: 4-byte big-endian length + msgpack body.

Requests are a tagged union on ``op``; responses on ``r``. Every request
carries an integer ``id`` that its response echoes, so a client may send many
requests before reading any answer (pipelining). This module must not import
anyio: the CLI imports it on every start.

It is also the one codec of both ends: the daemon and the client encode
frames with ``append_frame``, ``frame`` and ``error_frame`` below, and the
daemon decodes requests with ``decode_request``.

No ``from __future__ import annotations`` here: msgspec would then have to
eval every field's annotation text when it builds a decoder, which costs
each ``sessionctl`` run about a millisecond.
"""

import typing
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

from sessiond import PROTOCOL_VERSION as PROTOCOL_VERSION
from sessiond.errors import InvalidRequest, SessionError, Unsupported
from sessiond.limits import ID_MAX, ID_RULE, KEY_MAX, MAX_TTL, USER_MAX
from sessiond.model import Session

HEADER: Final = 4
DEFAULT_MAX_FRAME: Final = 4 * 1024 * 1024
PAGE_MAX: Final = 1000

ReqId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Ttl = Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL)]
# An id's length only: its characters are checked by the rules, where an id
# is looked up and missed or made (``rules.require``, ``rules.create``), in
# the same words. A pattern here cost most of a request's decode, for
# every request on a session, to refuse what is almost never sent.
Sid = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=KEY_MAX)]
User = Annotated[str, msgspec.Meta(min_length=1, max_length=USER_MAX)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=PAGE_MAX)]
Status = Annotated[str, msgspec.Meta(pattern=r"^(active|expired)$")]
# What a request on one session is answered with (protocol version 2):
# the whole session (the default, and all that version 1 knows), or an
# ``AckReply``, the few fields that say the change landed.
Returning = Literal["session", "ack"]
SESSION: Final = "session"
ACK: Final = "ack"


# Every request and response type, in the order defined (each class enters
# itself): the decoders' tagged unions are made of these, so adding a
# message is writing its class, once.
REQUESTS: "list[type[Request]]" = []
RESPONSES: "list[type[Response]]" = []


class Request(
    msgspec.Struct, tag_field="op", kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    id: ReqId
    # Whether its answer stands only once its changes are persisted. (A
    # read's only changes are lazy expiries: if the journal refuses them the
    # answer still holds, so reads keep working.)
    writes: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        REQUESTS.append(cls)


# The oldest version a daemon still speaks. A hello says the newest its
# client speaks; the daemon answers the lower of that and its own, and
# speaks that on the connection (version 1 until a hello says otherwise).
# Version 2 added ``returning`` and ``AckReply``; version 3, ``damaged`` in
# a page and a cleanup's result; nothing else differs.
OLDEST_VERSION: Final = 1
# From this version on, a page and a cleanup go on past sessions the shared
# engine holds damaged (changed outside sessiond) and name them in
# ``damaged``. A connection of an older version would not see them: such a
# page or cleanup is refused, naming the first, as before.
DAMAGED_SAID: Final = 3


class Hello(Request, tag="hello"):
    version: int
    client: str = ""


class Peer:
    """One connection, as the daemon's dispatcher sees it: the protocol
    version its hello agreed on (``OLDEST_VERSION`` until one does)."""

    __slots__ = ("version",)

    def __init__(self) -> None:
        self.version = OLDEST_VERSION


class Ping(Request, tag="ping"):
    pass


class Create(Request, tag="create"):
    writes = True
    user: User | None = None
    ttl: Ttl | None = None
    meta: dict[Key, Any] = {}
    sid: Sid | None = None
    returning: Returning = SESSION


class Get(Request, tag="get"):
    sid: Sid
    touch: bool = False
    returning: Returning = SESSION


class Set(Request, tag="set"):
    writes = True
    sid: Sid
    key: Key
    value: Any
    expect_version: int | None = None
    returning: Returning = SESSION


class Unset(Request, tag="unset"):
    writes = True
    sid: Sid
    key: Key
    expect_version: int | None = None
    returning: Returning = SESSION


class Delete(Request, tag="delete"):
    writes = True
    sid: Sid


class List(Request, tag="list"):
    status: Status | None = None
    user: User | None = None
    limit: Limit = PAGE_MAX
    cursor: str | None = None


class Expire(Request, tag="expire"):
    writes = True
    sid: Sid
    returning: Returning = SESSION


class Refresh(Request, tag="refresh"):
    writes = True
    sid: Sid
    ttl: Ttl | None = None
    revive: bool = False
    returning: Returning = SESSION


class Stats(Request, tag="stats"):
    pass


class Cleanup(Request, tag="cleanup"):
    writes = True
    before: int | None = None
    dry_run: bool = False


class ConfigGet(Request, tag="config_get"):
    key: str | None = None


class ConfigSet(Request, tag="config_set"):
    key: str
    value: Any


class Import(Request, tag="import"):
    writes = True
    sessions: Annotated[list[Session], msgspec.Meta(max_length=PAGE_MAX)]


class Compact(Request, tag="compact"):
    pass


class Watch(Request, tag="watch"):
    user: User | None = None
    # Resume after the event with this cursor (shared mode: events are kept
    # in the engine; the local daemon keeps none, and starts from now).
    after: str | None = None


class Shutdown(Request, tag="shutdown"):
    """Stop the daemon, as SIGTERM does; answered before it stops."""


class Reload(Request, tag="reload"):
    """Read the config file again and put it in force, as SIGHUP does;
    answered once it is in force (or refused, the settings unchanged)."""


class Response(msgspec.Struct, tag_field="r", kw_only=True):
    id: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        RESPONSES.append(cls)


class HelloReply(Response, tag="hello"):
    version: int
    server: str
    pid: int


class Pong(Response, tag="pong"):
    pid: int
    version: str
    uptime: float


class SessionReply(Response, tag="session"):
    session: Session


class Ack(msgspec.Struct, array_like=True, gc=False):
    """The session a request changed (or read), in the fewest bytes: its
    id (a ``create`` made it), its version, its deadline, and when it
    expired (``None`` while active: a ``get`` or ``refresh`` that found it
    expired says so). An array on the wire, not a map: a fifth the size
    of the whole session, which is the point."""

    sid: str
    version: int
    expires_at: int
    expired_at: int | None


class AckReply(Response, tag="ack"):
    """The answer to a request sent with ``returning="ack"`` (version 2)."""

    ack: Ack


class Page(Response, tag="page"):
    sessions: list[Session]
    cursor: str | None = None
    # Version 3: what is wrong with each session the page passed over, in
    # creation order (shared mode: held damaged by the engine).
    damaged: list[str] = []


class Deleted(Response, tag="deleted"):
    sid: str


class StatsInfo(msgspec.Struct, kw_only=True):
    total_sessions: int
    active: int
    expired: int
    unique_users: int
    average_ttl_seconds: float
    due_next_minute: int
    expiries_done: int
    purges_done: int
    expiry_lag_max_ms: float
    expiry_lag_p99_ms: float
    pid: int
    version: str
    uptime_seconds: float
    event_loop: str
    connections: int
    watchers: int
    journal_path: str
    journal_bytes: int
    fsync: str
    compacted_bytes: int
    last_compaction_at: int | None
    last_compaction_seconds: float | None
    compactions: int
    write_errors: int
    read_only: str | None
    # Where each setting in force came from: default, file, env or flag.
    # (Defaults on this and every field added later: an older peer's
    # StatsInfo still decodes.)
    config_sources: dict[str, str] = {}
    # The rewritten journal a compaction would write (estimated from a
    # sample of sessions): the free space it needs. (The binary snapshot
    # written beside it needs some more, but a compaction does without.)
    compaction_needs_bytes: int = 0
    # Shared mode (``--backend``): the engine and namespace, whether the
    # engine answers (and what it said if not), and whether this daemon
    # holds the namespace's expiry lease. ``None`` in local mode.
    backend: str | None = None
    backend_ok: bool | None = None
    backend_error: str | None = None
    expiry_lease: bool | None = None


class StatsReply(Response, tag="stats"):
    stats: StatsInfo


class CleanupResult(msgspec.Struct, kw_only=True):
    dry_run: bool
    removed_count: int
    remaining_count: int
    removed_ids: list[str]
    # Version 3: what is wrong with each session it passed over (shared
    # mode: held damaged by the engine, so whether it was due is unknown).
    damaged: list[str] = []


class CleanupReply(Response, tag="cleanup"):
    result: CleanupResult


class ConfigReply(Response, tag="config", omit_defaults=True):
    config: dict[str, Any]
    # Of each key in ``config``: default, file, env or flag (empty from an
    # older daemon).
    sources: dict[str, str] = {}
    # The listing of every setting (no key asked) also names the config
    # file, and says why what the file now holds is not what is in force
    # (``None``: it is), as systemctl warns of a unit file changed on disk.
    # ``None`` both from an older daemon; left out of the frame when
    # ``None`` (``omit_defaults``), so that any other answer is the bytes it
    # always was, and a client that does not know them reads it as before.
    file: str | None = None
    file_note: str | None = None


class ImportResult(msgspec.Struct, kw_only=True):
    imported: int = 0
    updated: int = 0
    skipped: int = 0
    reasons: list[str] = []
    # Of those imported or updated, how many came in expired (or past their
    # deadline): kept for expired_retention from the import.
    already_expired: int = 0


class ImportReply(Response, tag="import"):
    result: ImportResult


class CompactResult(msgspec.Struct, kw_only=True):
    bytes_before: int
    bytes_after: int
    sessions: int
    seconds: float
    # Said instead of the sizes where there is nothing to compact (shared mode).
    note: str | None = None


class CompactReply(Response, tag="compact"):
    result: CompactResult


class Event(msgspec.Struct, kw_only=True):
    """Something that happened to a session, as ``watch`` reports it.

    ``kind`` is created, updated, expired, deleted, purged, or lagged (then
    ``dropped`` says how many events this watcher missed)."""

    kind: str
    sid: str | None
    at: int
    session: Session | None = None
    dropped: int = 0
    # Where a watch resumes after this event (shared mode; ``Watch.after``).
    cursor: str | None = None


class EventReply(Response, tag="event"):
    event: Event


class Stopping(Response, tag="stopping"):
    """The answer to ``Shutdown``: the daemon (``pid``) stops once it has
    answered the requests in flight and synced its journal."""

    pid: int


class Reloaded(Response, tag="reloaded"):
    """The answer to ``Reload``: the file read, the settings that changed
    (key -> [before, after]) and the keys a layer above the file still
    sets (key -> ``flag``, ``env`` or ``namespace``)."""

    file: str
    changed: dict[str, list[Any]]
    above: dict[str, str]


class ErrorReply(Response, tag="error"):
    code: str
    message: str


# The tagged unions the decoders read, one member per message type.
# (Built from the lists: ``X | Y`` needs the members written out.)
AnyRequest: Any = typing.Union[tuple(REQUESTS)]  # noqa: UP007
AnyResponse: Any = typing.Union[tuple(RESPONSES)]  # noqa: UP007
WRITES: Final = frozenset(kind for kind in REQUESTS if kind.writes)
# Requests on one session: those that name it (``sid``).
ON_SESSION: Final = frozenset(kind for kind in REQUESTS if "sid" in kind.__struct_fields__)

# -- frames ------------------------------------------------------------------

encoder: Final = msgspec.msgpack.Encoder()
NO_LENGTH: Final = bytes(HEADER)

if typing.TYPE_CHECKING:
    import struct

    # The header as a struct, for the daemon's loops over many frames.
    LENGTH: struct.Struct


def __getattr__(name: str) -> object:
    # LENGTH is made on first use: importing struct would cost every
    # sessionctl run (which imports this module) for a struct it never
    # uses; the client writes its headers with int.to_bytes.
    if name == "LENGTH":
        import struct

        length = struct.Struct(">I")
        assert length.size == HEADER
        globals()["LENGTH"] = length
        return length
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def append_frame(out: bytearray, msg: Request | Response) -> None:
    """Encode ``msg`` as a frame at the end of ``out``, with no bytes object
    in between."""
    start = len(out)
    out += NO_LENGTH
    encoder.encode_into(msg, out, -1)
    out[start : start + HEADER] = (len(out) - start - HEADER).to_bytes(HEADER, "big")


def frame(msg: Request | Response) -> bytes:
    """``msg`` as one frame."""
    body = encoder.encode(msg)
    return len(body).to_bytes(HEADER, "big") + body


def error_frame(req_id: int, exc: SessionError) -> bytes:
    """The frame that answers request ``req_id`` with ``exc``."""
    return frame(ErrorReply(id=req_id, code=exc.code, message=str(exc)))


# msgspec reports a string that is not UTF-8 with the codec's own error.
DECODE_ERRORS: Final = (
    msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError
)
OPERATIONS: Final = tuple(str(t.__struct_config__.tag) for t in REQUESTS)
request_decoder: Final[msgspec.msgpack.Decoder[Request]] = msgspec.msgpack.Decoder(AnyRequest)


# What the fields bound by the session rules take, in those rules' words
# (a refusal by the decoder then reads as one by the rules would).
FIELD_RULES: Final = {
    "sid": f"a session id ({ID_RULE})",
    "ttl": f"a whole number of seconds from 1 to {MAX_TTL}",
    "user": f"a name of 1 to {USER_MAX} characters",
    "key": f"a meta key of 1 to {KEY_MAX} characters",
    "limit": f"a whole number from 1 to {PAGE_MAX}",
    "status": "'active' or 'expired'",
    "returning": "'session' or 'ack'",
}
# Every request that may say ``returning``.
SHAPED: Final = frozenset(kind for kind in REQUESTS if "returning" in kind.__struct_fields__)


def request_error(exc: Exception) -> SessionError:
    """What a request body that failed to decode (one of ``DECODE_ERRORS``)
    is answered with, naming the offending field (msgspec's notation put
    in words by ``sessiond.wording``)."""
    if isinstance(exc, UnicodeDecodeError):
        return InvalidRequest(f"malformed request: a string is not valid UTF-8 ({exc})")
    text = "value nested too deeply" if isinstance(exc, RecursionError) else str(exc)
    if text.startswith("Invalid value") and text.endswith("`$.op`"):
        op = text[len("Invalid value ") : -len(" - at `$.op`")]
        return Unsupported(f"unknown operation {op} (known: {', '.join(OPERATIONS)})")
    if isinstance(exc, msgspec.ValidationError):
        from sessiond.wording import plain

        return InvalidRequest(f"invalid request: {plain(text, 'the request', FIELD_RULES)}")
    return InvalidRequest(f"malformed request: {text or type(exc).__name__}")


def decode_request(body: bytes | memoryview) -> Request:
    """A request body as the daemon reads it; the refusal it would answer
    with is raised (``InvalidRequest`` or ``Unsupported``)."""
    try:
        return request_decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise request_error(exc) from exc
