"""The wire protocol: frames, the tagged unions, errors, the hello.

The first half needs no daemon: encoding round trips, the golden bytes that
pin the format, and the refusals of ``decode_request`` (the daemon's own
decoding, so they are the refusals it answers with).
The second half puts hand-made bytes on a real daemon's socket and checks
what comes back, and that the daemon goes on serving.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sessionctl import Client
from sessiond.errors import InvalidRequest, TooLarge, Unsupported
from sessiond.model import Session
from sessiond.protocol import (
    DEFAULT_MAX_FRAME,
    HEADER,
    LENGTH,
    PROTOCOL_VERSION,
    Ack,
    AckReply,
    AnyRequest,
    AnyResponse,
    Cleanup,
    CleanupReply,
    CleanupResult,
    Compact,
    CompactReply,
    CompactResult,
    ConfigGet,
    ConfigReply,
    ConfigSet,
    Create,
    Delete,
    Deleted,
    ErrorReply,
    Event,
    EventReply,
    Expire,
    Get,
    Hello,
    HelloReply,
    Import,
    ImportReply,
    ImportResult,
    List,
    Page,
    Ping,
    Pong,
    Refresh,
    Reload,
    Reloaded,
    SessionReply,
    Set,
    Shutdown,
    Stats,
    StatsInfo,
    StatsReply,
    Stopping,
    Unset,
    Watch,
    decode_request,
    frame,
)
from tests.conftest import Daemon, Engine, running
from tests.rawwire import Raw, request
from tests.rawwire import frame as raw_frame

GOLDEN = Path(__file__).parent / "golden" / "protocol.txt"
# What the daemon answers a body it cannot decode with.
_REFUSED = (InvalidRequest, Unsupported)
UPDATE_ENV = "SESSIOND_UPDATE_GOLDEN"

T0 = 1795511622067680  # 2026-11-24T09:13:42.067680Z

SESSION = Session(
    id="1f0f618148e2",
    user="alice",
    status="active",
    ttl=3600,
    meta={"theme": "dark", "n": 1},
    created_at=T0,
    last_access=T0,
    expires_at=T0 + 3600 * 1_000_000,
)
EXPIRED_SESSION = Session(
    id="s2",
    user="bob",
    status="expired",
    ttl=60,
    meta={},
    created_at=T0,
    last_access=T0,
    expires_at=T0 + 60_000_000,
    expired_at=T0 + 60_000_001,
    version=3,
)

# Each message and the name its frame has in the golden file. Changing how
# any of these encode is a protocol change: bump PROTOCOL_VERSION.
SAMPLES: dict[str, Any] = {
    "request.hello": Hello(id=1, version=2, client="sessionctl"),
    # What a client of version 1 says, and a new one says again to a daemon
    # of version 1 that refused its hello.
    "request.hello.v1": Hello(id=1, version=1, client="sessionctl"),
    "request.ping": Ping(id=2),
    "request.create.defaults": Create(id=3),
    "request.create": Create(id=4, user="alice", ttl=3600, meta={"theme": "dark"}, sid="s1"),
    "request.get": Get(id=5, sid="s1"),
    "request.set.cas": Set(id=6, sid="s1", key="lang", value="en", expect_version=2),
    "request.unset": Unset(id=7, sid="s1", key="lang"),
    "request.unset.cas": Unset(id=7, sid="s1", key="lang", expect_version=3),
    "request.delete": Delete(id=8, sid="s1"),
    "request.list": List(id=9, status="active", user="alice", limit=2, cursor="0:2:s1"),
    "request.expire": Expire(id=10, sid="s1"),
    "request.refresh.revive": Refresh(id=11, sid="s1", ttl=60, revive=True),
    "request.stats": Stats(id=12),
    "request.cleanup": Cleanup(id=13, before=T0, dry_run=True),
    "request.config_get": ConfigGet(id=14, key="default_ttl"),
    "request.config_set": ConfigSet(id=15, key="default_ttl", value=7200),
    "request.import": Import(id=16, sessions=[SESSION, EXPIRED_SESSION]),
    "request.compact": Compact(id=17),
    "request.watch": Watch(id=18, user="alice"),
    "request.watch.everyone": Watch(id=19),
    "request.shutdown": Shutdown(id=20),
    # Version 2: an operation on one session asks for an ack.
    "request.set.ack": Set(id=21, sid="s1", key="theme", value="light", returning="ack"),
    "request.create.ack": Create(id=22, user="alice", ttl=3600, returning="ack"),
    "request.get.touch.ack": Get(id=23, sid="s1", touch=True, returning="ack"),
    "response.hello": HelloReply(id=1, version=2, server="0.1.0", pid=4242),
    "response.hello.v1": HelloReply(id=1, version=1, server="0.1.0", pid=4242),
    "response.pong": Pong(id=2, pid=4242, version="0.1.0", uptime=1.5),
    "response.session": SessionReply(id=4, session=SESSION),
    "response.page": Page(id=9, sessions=[SESSION, EXPIRED_SESSION], cursor="0:2:s2"),
    "response.page.last": Page(id=9, sessions=[]),
    # Version 3: a page that passed over a session the shared engine holds damaged.
    "response.page.damaged": Page(id=9, sessions=[SESSION], cursor="4", damaged=[
        "session s2 in the engine lacks the field(s) e every session has: its hash was "
        "changed outside sessiond"]),
    "response.deleted": Deleted(id=8, sid="s1"),
    "response.stats": StatsReply(id=12, stats=StatsInfo(
        total_sessions=2, active=1, expired=1, unique_users=2, average_ttl_seconds=1830.0,
        due_next_minute=0, expiries_done=1, purges_done=0, expiry_lag_max_ms=1.5,
        expiry_lag_p99_ms=0.5, pid=4242, version="0.1.0", uptime_seconds=60.25,
        event_loop="uvloop", connections=1, watchers=0, journal_path="/data/data.jsonl",
        journal_bytes=2048, fsync="batch", compacted_bytes=1024, last_compaction_at=T0,
        last_compaction_seconds=0.125, compactions=1, write_errors=0, read_only=None,
        config_sources={"fsync": "file"},
    )),
    "response.cleanup": CleanupReply(
        id=13,
        result=CleanupResult(dry_run=True, removed_count=1, remaining_count=2,
                             removed_ids=["s2"]),
    ),
    "response.cleanup.damaged": CleanupReply(
        id=13,
        result=CleanupResult(dry_run=False, removed_count=0, remaining_count=1,
                             removed_ids=[], damaged=["session s2 in the engine is not a hash"]),
    ),
    "response.config": ConfigReply(id=15, config={"default_ttl": 7200},
                                   sources={"default_ttl": "file"}),
    "response.config.listing": ConfigReply(
        id=24, config={"default_ttl": 7200}, sources={"default_ttl": "file"},
        file="/home/u/.config/sessiond/config.json",
        file_note="config /home/u/.config/sessiond/config.json has changed since the daemon "
                  "read it; reload it (kill -HUP 4242) to put the file in force"),
    "request.reload": Reload(id=25),
    "response.reloaded": Reloaded(id=25, file="/home/u/.config/sessiond/config.json",
                                  changed={"default_ttl": [3600, 7200]},
                                  above={"fsync": "env"}),
    "response.import": ImportReply(id=16, result=ImportResult(
        imported=1, updated=1, skipped=1, reasons=["s3: already there at version 4"],
        already_expired=1,
    )),
    "response.compact": CompactReply(id=17, result=CompactResult(
        bytes_before=4096, bytes_after=1024, sessions=2, seconds=0.25,
    )),
    "response.event.watching": EventReply(id=18, event=Event(kind="watching", sid=None, at=T0)),
    "response.event": EventReply(id=0, event=Event(kind="created", sid="1f0f618148e2", at=T0,
                                                   session=SESSION)),
    "response.event.lagged": EventReply(id=0, event=Event(kind="lagged", sid=None, at=T0,
                                                          dropped=7)),
    "response.stopping": Stopping(id=20, pid=4242),
    "response.ack": AckReply(id=21, ack=Ack("1f0f618148e2", 2, T0 + 3600 * 1_000_000, None)),
    "response.ack.expired": AckReply(id=23, ack=Ack("s2", 3, T0 + 60_000_000,
                                                    T0 + 60_000_001)),
    "response.error.not_found": ErrorReply(id=5, code="not_found",
                                           message="session s1 not found"),
    "response.error.connection": ErrorReply(
        id=0, code="too_large", message="frame of 5000000 bytes exceeds max_frame_bytes"
    ),
}


def read_golden() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in GOLDEN.read_text().splitlines():
        if line and not line.startswith("#"):
            name, hexed = line.split()
            pinned[name] = hexed
    return pinned


def write_golden() -> None:
    lines = [
        "# The wire format, pinned: NAME then the whole frame in hex",
        "# (4-byte big-endian length, then the msgpack body).",
        "# Regenerate only for a deliberate protocol change (and bump",
        f"# PROTOCOL_VERSION): {UPDATE_ENV}=1 python -m pytest tests/test_protocol.py",
    ]
    lines += [f"{name} {frame(msg).hex()}" for name, msg in SAMPLES.items()]
    GOLDEN.write_text("\n".join(lines) + "\n")


if os.environ.get(UPDATE_ENV) == "1":
    write_golden()


# -- frames and encoding (no daemon) ----------------------------------------


@pytest.mark.parametrize("name", list(SAMPLES))
def test_frames_match_the_golden_bytes(name: str) -> None:
    pinned = read_golden()
    assert name in pinned, f"{name} missing from {GOLDEN.name}"
    assert frame(SAMPLES[name]).hex() == pinned[name]


def test_golden_file_has_no_stale_entries() -> None:
    assert set(read_golden()) == set(SAMPLES)


@pytest.mark.parametrize(("kind", "union"), [("request", AnyRequest), ("response", AnyResponse)])
def test_every_message_type_has_a_golden_frame(kind: str, union: Any) -> None:
    # A type added to the union without a golden frame fails here: its
    # encoding would be unpinned, free to change without a version bump.
    decoder = msgspec.msgpack.Decoder(union)
    pinned: set[str] = set()
    for name, hexed in read_golden().items():
        if name.startswith(f"{kind}."):
            tag = decoder.decode(bytes.fromhex(hexed)[HEADER:]).__struct_config__.tag
            assert name.split(".")[1] == tag, f"{name} holds a {tag!r} {kind}"
            pinned.add(tag)
    tags = {t.__struct_config__.tag for t in typing.get_args(union)}
    assert tags - pinned == set(), f"no golden {kind} frame for {sorted(tags - pinned)}"


@pytest.mark.parametrize("name", list(SAMPLES))
def test_golden_frames_decode_back_to_the_same_message(name: str) -> None:
    raw = bytes.fromhex(read_golden()[name])
    (n,) = LENGTH.unpack_from(raw)  # the header as the daemon reads it
    assert n == len(raw) - HEADER
    union = AnyRequest if name.startswith("request.") else AnyResponse
    assert msgspec.msgpack.Decoder(union).decode(raw[HEADER:]) == SAMPLES[name]


def test_frame_is_a_big_endian_length_then_the_msgpack_body() -> None:
    msg = Get(id=7, sid="abc")
    data = frame(msg)
    body = msgspec.msgpack.encode(msg)
    assert data == len(body).to_bytes(4, "big") + body
    assert msgspec.msgpack.decode(body) == {"op": "get", "id": 7, "sid": "abc"}


def test_requests_carry_their_tag_in_op_and_responses_in_r() -> None:
    assert msgspec.msgpack.decode(frame(Ping(id=1))[HEADER:])["op"] == "ping"
    assert msgspec.msgpack.decode(frame(Deleted(id=1, sid="x"))[HEADER:])["r"] == "deleted"


def test_requests_omit_defaults_so_old_daemons_read_new_clients() -> None:
    assert msgspec.msgpack.decode(frame(Create(id=3))[HEADER:]) == {"op": "create", "id": 3}


def test_replies_from_an_older_daemon_decode_with_the_fields_added_since() -> None:
    # An older daemon's replies lack sources, config_sources, already_expired.
    decode = msgspec.msgpack.Decoder(AnyResponse).decode
    old_config = {"r": "config", "id": 1, "config": {"fsync": "no"}}
    assert decode(msgspec.msgpack.encode(old_config)) == ConfigReply(
        id=1, config={"fsync": "no"}
    )
    reply = decode(msgspec.msgpack.encode(
        {"r": "import", "id": 2, "result": {"imported": 3, "reasons": []}}
    ))
    assert isinstance(reply, ImportReply) and reply.result.already_expired == 0
    stats = msgspec.to_builtins(StatsReply(id=3, stats=StatsInfo(
        total_sessions=0, active=0, expired=0, unique_users=0, average_ttl_seconds=0.0,
        due_next_minute=0, expiries_done=0, purges_done=0, expiry_lag_max_ms=0.0,
        expiry_lag_p99_ms=0.0, pid=1, version="0.1.0", uptime_seconds=0.0, event_loop="x",
        connections=0, watchers=0, journal_path="j", journal_bytes=0, fsync="no",
        compacted_bytes=0, last_compaction_at=None, last_compaction_seconds=None,
        compactions=0, write_errors=0, read_only=None,
    )))
    del stats["stats"]["config_sources"]
    got = decode(msgspec.msgpack.encode(stats))
    assert isinstance(got, StatsReply) and got.stats.config_sources == {}


def test_too_large_is_an_invalid_request_with_its_own_wire_code() -> None:

    assert issubclass(TooLarge, InvalidRequest) and TooLarge.code == "too_large"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"op": "create", "id": 1, "ttl": 0},
         "ttl must be a whole number of seconds from 1 to 3153600000"),
        ({"op": "create", "id": 1, "ttl": "60"},
         "ttl must be a whole number of seconds from 1 to 3153600000, not a string"),
        ({"op": "get", "id": 1, "sid": "x" * 129},
         "sid must be a session id (use 1-128 of A-Z a-z 0-9 . _ -)"),
        ({"op": "set", "id": 1, "sid": "x", "key": "k", "value": 1, "returning": "all"},
         "returning must be 'session' or 'ack'"),
        ({"op": "get", "id": -1, "sid": "x"}, "id must be a whole number of at least 0"),
        ({"op": "list", "id": 1, "status": "zombie"}, "status must be 'active' or 'expired'"),
        ({"op": "list", "id": 1, "limit": 100_000}, "limit must be a whole number from 1 to 1000"),
        ({"op": "nope", "id": 1}, "unknown operation 'nope' (known: hello, ping"),
        ({"op": "get", "id": 1}, "the request lacks the field 'sid'"),
        ({"op": "get", "id": 1, "sid": "x", "bogus": 1}, "does not take: 'bogus'"),
        ({"op": "create", "id": 1, "meta": {"": 1}},
         "a key of meta must be a string of at least 1 character"),
        ({"op": "import", "id": 1, "sessions": [{"id": 5}]},
         "sessions[0].id must be a string, not a whole number"),
    ],
)
def test_decode_errors_name_the_field_in_words(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(_REFUSED) as caught:
        decode_request(msgspec.msgpack.encode(fields))
    assert named in str(caught.value)
    assert "`" not in str(caught.value)  # msgspec's notation, put in words


def test_decode_refuses_bytes_that_are_not_msgpack() -> None:
    with pytest.raises(_REFUSED, match="malformed"):
        decode_request(b"\xc1")


def test_decode_refuses_a_truncated_body() -> None:
    body = msgspec.msgpack.encode(Create(id=1, user="alice"))
    with pytest.raises(_REFUSED, match="truncated"):
        decode_request(body[:-2])


def test_decode_refuses_a_body_that_is_not_a_request_object() -> None:
    with pytest.raises(_REFUSED, match="the request must be an object, not an array"):
        decode_request(msgspec.msgpack.encode([1, 2, 3]))


def test_decode_refuses_deep_nesting_without_crashing() -> None:
    deep = b"\x91" * 100_000 + b"\x00"
    body = msgspec.msgpack.encode({"op": "set", "id": 1, "sid": "x", "key": "k"})
    # Splice the nested value in as "value" (fixmap count goes from 4 to 5).
    nested = b"\x85" + body[1:] + b"\xa5value" + deep
    with pytest.raises(_REFUSED):
        decode_request(nested)


# -- on the wire, against a real daemon ---------------------------------------


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("protocol"), engine) as d:
        yield d


def still_serves(d: Daemon) -> bool:
    with Client(d.socket, timeout=10) as c:
        return c.ping().pid > 0


def test_hello_answers_with_the_protocol_version_and_echoes_the_id(wire: Daemon) -> None:
    with Raw(wire.socket) as raw:
        reply = raw.call(op="hello", id=41, version=PROTOCOL_VERSION, client="test")
    assert reply["r"] == "hello" and reply["id"] == 41
    assert reply["version"] == PROTOCOL_VERSION and isinstance(reply["pid"], int)


def test_hello_with_a_version_too_old_is_an_unsupported_error_naming_both(wire: Daemon) -> None:
    # A newer one is answered with the daemon's own (test_protocol_versions).
    with Raw(wire.socket) as raw:
        reply = raw.call(op="hello", id=5, version=0)
    assert reply["r"] == "error" and reply["id"] == 5 and reply["code"] == "unsupported"
    assert "protocol version 0 is not" in reply["message"]
    assert str(PROTOCOL_VERSION) in reply["message"]


@pytest.mark.parametrize("op", [
    {"op": "get"}, {"op": "delete"}, {"op": "expire"}, {"op": "refresh"},
    {"op": "set", "key": "k", "value": 1}, {"op": "unset", "key": "k"}, {"op": "create"},
])
def test_a_bad_id_is_refused_by_the_daemon_in_the_words_of_the_decoder(
    wire: Daemon, op: dict[str, Any]
) -> None:
    # The decoder checks an id's length only; its characters are the
    # rules', which refuse it before any change, in the same words.
    with Raw(wire.socket) as raw:
        reply = raw.call(id=31, sid="bad id!", **op)
    assert reply == {"r": "error", "id": 31, "code": "invalid", "message":
                     "invalid request: sid must be a session id (use 1-128 of A-Z a-z 0-9 . _ -)"}
    with Client(wire.socket) as c:
        assert not [s for s in c.list() if s.id == "bad id!"]


def test_pipelined_requests_are_answered_in_order_each_echoing_its_id(wire: Daemon) -> None:
    ids = [901, 17, 2**40, 3]
    with Raw(wire.socket) as raw:
        raw.send(b"".join(request(op="ping", id=i) for i in ids))
        replies = [raw.read_frame() for _ in ids]
    assert [r["id"] for r in replies if r is not None] == ids
    assert all(r is not None and r["r"] == "pong" for r in replies)


def test_a_failed_request_gets_a_structured_error_with_its_id(wire: Daemon) -> None:
    with Raw(wire.socket) as raw:
        reply = raw.call(op="get", id=77, sid="no-such-session")
    assert reply == {"r": "error", "id": 77, "code": "not_found",
                     "message": "session no-such-session not found"}


def test_an_invalid_field_is_an_invalid_error_naming_it_with_the_id(wire: Daemon) -> None:
    with Raw(wire.socket) as raw:
        reply = raw.call(op="create", id=12, ttl=-5)
        assert reply["r"] == "error" and reply["id"] == 12 and reply["code"] == "invalid"
        assert "ttl must be a whole number of seconds from 1 to" in reply["message"]
        # The connection is still good for the next request.
        assert raw.call(op="ping", id=13)["r"] == "pong"


def test_an_unknown_op_is_unsupported(wire: Daemon) -> None:
    with Raw(wire.socket) as raw:
        reply = raw.call(op="teleport", id=3)
    assert reply["r"] == "error" and reply["id"] == 3 and reply["code"] == "unsupported"


def test_garbage_bytes_get_an_error_frame_and_the_connection_goes_on(wire: Daemon) -> None:
    with Raw(wire.socket) as raw:
        reply = raw.error(raw_frame(b"\xc1\xc1\xc1"))
        assert reply["code"] == "invalid" and reply["id"] == 0
        assert "malformed" in reply["message"]
        assert raw.call(op="ping", id=2)["r"] == "pong"


def test_a_header_over_the_limit_is_refused_unread_and_the_connection_closed(
    wire: Daemon,
) -> None:
    with Raw(wire.socket) as raw:
        # Only the header is sent: the refusal must not wait for a body.
        reply = raw.error((DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"))
        assert reply["code"] == "too_large" and reply["id"] == 0
        assert str(DEFAULT_MAX_FRAME + 1) in reply["message"]
        assert raw.at_eof()
    assert still_serves(wire)


def test_the_client_maps_the_wire_error_code_back_to_the_exception(wire: Daemon) -> None:
    from sessionctl import InvalidRequest, SessionNotFound

    with Client(wire.socket) as c:
        with pytest.raises(SessionNotFound):
            c.get("no-such-session")
        # A cursor only the daemon can judge: the refusal crosses the wire.
        with pytest.raises(InvalidRequest, match="invalid list cursor 'garbage'"):
            c.list_page(cursor="garbage")


def test_requests_on_one_session_are_those_that_name_it() -> None:
    # Both engines run these on the session they name (the shared one on a
    # view of its records); a new request with a sid joins them by itself.
    from sessiond.protocol import ON_SESSION

    assert {kind.__name__ for kind in ON_SESSION} == {
        "Create", "Get", "Set", "Unset", "Delete", "Expire", "Refresh"}
