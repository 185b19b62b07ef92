"""Bad requests get a structured error that names what was wrong, change
nothing, and leave the connection usable; generated frames never kill the
daemon, never earn an internal error, and never change state when refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessiond.limits import MAX_TTL, TIME_MAX, TIME_MIN
from sessiond.model import US, Session
from tests.conftest import Daemon, Engine
from tests.rawwire import Raw, frame, request, seed, snapshot, write_config

encode = msgspec.msgpack.encode
DEEP = 200_000


def create_with_raw_meta(meta_value: bytes) -> bytes:
    """A create whose meta holds ``{"k": <meta_value>}``, built by hand
    because msgspec refuses to encode what we want to send."""
    return frame(b"\x83\xa2op\xa6create\xa2id\x07\xa4meta\x81\xa1k" + meta_value)


# (frame, expected code, fragment of the message)
BAD: dict[str, tuple[bytes, str, str]] = {
    "garbage bytes": (frame(b"\xc1\xc1 not msgpack at all"), "invalid", "malformed"),
    "every byte value": (frame(bytes(range(256))), "invalid", "request"),
    "empty body": (frame(b""), "invalid", "truncated"),
    "trailing bytes after a valid request": (
        frame(encode({"op": "create", "id": 7, "sid": "trail"}) + b"\x00"),
        "invalid", "trailing",
    ),
    "op not UTF-8": (frame(b"\x82\xa2op\xa3\xff\xfe\xfd\xa2id\x07"), "invalid", "UTF-8"),
    "field name not UTF-8": (frame(b"\x83\xa2op\xa4ping\xa2id\x07\xa2\xc3\x28\x01"),
                             "invalid", "UTF-8"),
    "meta value not UTF-8": (create_with_raw_meta(b"\xa2\xed\xa0"), "invalid", "UTF-8"),
    "body is an array": (frame(encode([1, 2, 3])), "invalid", "must be an object, not an array"),
    "body is a string": (frame(encode("create")), "invalid", "must be an object, not a string"),
    "no op": (request(id=7, sid="x"), "invalid", "lacks the field 'op'"),
    "unknown op": (request(op="frobnicate", id=7), "unsupported", "frobnicate"),
    "op of wrong type": (request(op=5, id=7), "invalid", "op must be a string"),
    "id of wrong type": (request(op="ping", id="seven"), "invalid", "id must be a whole number"),
    "negative id": (request(op="ping", id=-1), "invalid", "id must be a whole number of at least"),
    "missing field": (request(op="get", id=7), "invalid", "lacks the field 'sid'"),
    "unknown field": (request(op="create", id=7, colour="red"), "invalid", "'colour'"),
    "ttl of wrong type": (request(op="create", id=7, ttl="1h"), "invalid", "ttl must be"),
    "negative ttl": (request(op="create", id=7, ttl=-5), "invalid", "ttl must be"),
    "zero ttl": (request(op="refresh", id=7, sid="x", ttl=0), "invalid", "ttl must be"),
    "enormous ttl": (request(op="create", id=7, ttl=MAX_TTL + 1), "invalid", "ttl must be"),
    "ttl past int64": (request(op="create", id=7, ttl=2**64 - 1), "invalid", "ttl must be"),
    "float ttl": (request(op="create", id=7, ttl=60.5), "invalid", "ttl must be"),
    "bool touch of wrong type": (request(op="get", id=7, sid="x", touch="yes"), "invalid",
                                 "touch must be true or false"),
    "sid with a slash": (request(op="get", id=7, sid="../etc"), "invalid", "sid must be"),
    "sid too long": (request(op="create", id=7, sid="a" * 129), "invalid", "sid must be"),
    "empty user": (request(op="create", id=7, user=""), "invalid", "user must be"),
    "key too long": (request(op="set", id=7, sid="x", key="k" * 257, value=1), "invalid",
                     "key must be a meta key of 1 to 256 characters"),
    "list limit zero": (request(op="list", id=7, limit=0), "invalid", "limit must be"),
    "list limit huge": (request(op="list", id=7, limit=10**9), "invalid", "limit must be"),
    "negative list cursor": (request(op="list", id=7, cursor="0:-1000000000:"), "invalid",
                             "cursor"),
    "cleanup before of wrong type": (request(op="cleanup", id=7, before="yesterday"),
                                     "invalid", "before must be a whole number or null"),
    "huge meta": (request(op="create", id=7, meta={"k": "x" * 200_000}), "too_large", "meta"),
    "meta nested 40 deep": (create_with_raw_meta(b"\x91" * 40 + b"\x01"), "invalid", "nested"),
    "meta nested 200,000 deep (arrays)": (create_with_raw_meta(b"\x91" * DEEP + b"\x01"),
                                          "invalid", "nested too deeply"),
    "meta nested 200,000 deep (maps)": (create_with_raw_meta(b"\x81\xa1k" * DEEP + b"\x01"),
                                        "invalid", "nested too deeply"),
    "body nested 200,000 deep": (frame(b"\x91" * DEEP + b"\xc0"), "invalid", "request"),
    "meta value NaN": (request(op="create", id=7, meta={"k": float("nan")}), "invalid",
                       "finite"),
    "meta value bytes": (request(op="create", id=7, meta={"k": b"\x00"}), "invalid",
                         "JSON values"),
    "meta value ext type": (create_with_raw_meta(b"\xd4\x05\x01"), "invalid", "JSON values"),
    "meta with a non-string key": (create_with_raw_meta(b"\x81\x01\x02"), "invalid",
                                   "keys must be strings"),
    "import of too many sessions": (request(op="import", id=7, sessions=[{}] * 1001),
                                    "invalid", "sessions must be an array of at most 1000"),
    "import of a malformed session": (request(op="import", id=7, sessions=[{"id": 1}]),
                                      "invalid", "sessions[0].id must be a string"),
    "config key unknown": (request(op="config_set", id=7, key="colour", value=1), "invalid",
                           "colour"),
    "config value out of range": (request(op="config_set", id=7, key="max_frame_bytes",
                                          value=-1), "invalid", "max_frame_bytes"),
    "config value of wrong type": (request(op="config_set", id=7, key="fsync", value=3),
                                   "invalid", "fsync"),
    "protocol version too old": (request(op="hello", id=7, version=0), "unsupported",
                                 "version 0 is not supported"),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Daemon]:
    """One daemon for all the bad requests: each refused request must leave
    it exactly as it found it, which every case checks for itself."""
    root = tmp_path_factory.mktemp("bad")
    root.chmod(0o700)
    d = Daemon(root, engine=engine).start()
    try:
        seed(d.socket)
        yield d
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_named_error_and_changes_nothing(shared: Daemon, case: str) -> None:
    daemon = shared
    data, code, fragment = BAD[case]
    before = snapshot(daemon.socket)
    with Raw(daemon.socket) as raw:
        reply = raw.error(data)
        assert reply["code"] == code, reply
        assert fragment in reply["message"], reply
        # In words: msgspec's notation (`$.ttl`, `int | null`) never shows.
        assert "`" not in reply["message"], reply
        # The framing was intact, so the same connection keeps working.
        assert raw.call(op="ping", id=8)["r"] == "pong"
        assert raw.call(op="get", id=9, sid=before[0][0]["id"])["r"] == "session"
    assert snapshot(daemon.socket) == before
    assert "Traceback" not in daemon.log_text()


def test_error_echoes_the_request_id_when_it_can_be_read(shared: Daemon) -> None:
    before = snapshot(shared.socket)
    with Raw(shared.socket) as raw:
        assert raw.error(request(op="create", id=41, ttl=-1))["id"] == 41
        assert raw.error(request(op="frobnicate", id=42))["id"] == 42
        assert raw.error(frame(b"\xc1"))["id"] == 0
    assert snapshot(shared.socket) == before


def test_a_client_that_keeps_sending_bad_frames_is_disconnected(shared: Daemon) -> None:
    daemon = shared
    seed(daemon.socket)
    before = snapshot(daemon.socket)
    with Raw(daemon.socket) as raw:
        raw.send(frame(b"\xc1") * 500)
        replies = []
        while (reply := raw.read_frame()) is not None:
            replies.append(reply)
    assert 100 < len(replies) < 500
    assert replies[-1]["code"] == "protocol" and "too many bad frames" in replies[-1]["message"]
    assert snapshot(daemon.socket) == before


def test_import_with_times_outside_years_1_to_9999_is_skipped_and_replay_still_works(
    daemon: Daemon,
) -> None:
    """Such a time would be written to the journal in a form that does not
    read back, and the daemon would refuse to start."""
    seed(daemon.socket)
    before = snapshot(daemon.socket)
    now = int(time.time() * US)
    absurd = [2**62, -(2**62), TIME_MAX + 1]
    sane = {"created_at": now, "last_access": now, "expires_at": now + 60 * US}
    sessions = [
        Session(id=f"absurd{i}", user="u", status="expired", ttl=60, meta={},
                **{**sane, field: value})
        for i, (field, value) in enumerate(
            (f, v) for f in ("created_at", "expires_at", "expired_at") for v in absurd)
    ]
    with daemon.client() as c:
        result = c.import_sessions(sessions)
    assert result.imported == 0 and result.skipped == len(sessions), result
    assert all("outside the years 1 to 9999" in reason for reason in result.reasons), result
    assert snapshot(daemon.socket) == before
    daemon.restart()
    assert snapshot(daemon.socket)[0] == before[0]


# -- generated frames ---------------------------------------------------------

# Each operation's fields: required, then optional. Most generated requests
# name a real operation with its own fields, so that they get past the shape
# check often enough to exercise the rules behind it.
FIELDS: dict[str, tuple[list[str], list[str]]] = {
    "hello": (["version"], ["client"]),
    "ping": ([], []),
    "create": ([], ["user", "ttl", "meta", "sid"]),
    "get": (["sid"], ["touch"]),
    "set": (["sid", "key", "value"], ["expect_version"]),
    "unset": (["sid", "key"], []),
    "delete": (["sid"], []),
    "list": ([], ["status", "user", "limit", "cursor"]),
    "expire": (["sid"], []),
    "refresh": (["sid"], ["ttl", "revive"]),
    "stats": ([], []),
    "cleanup": ([], ["before", "dry_run"]),
    "config_get": ([], ["key"]),
    "config_set": (["key", "value"], []),
    "import": (["sessions"], []),
    "compact": ([], []),
}
CONFIG_KEYS = ["default_ttl", "max_lifetime", "expired_retention", "fsync", "max_frame_bytes",
               "frame_timeout", "send_timeout", "idle_timeout", "max_connections",
               "max_reply_queue_bytes"]
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)



def _same(x: Any) -> Any:
    return x


def opaque(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The same values as one branch: ``one_of`` flattens nested ``one_of``s
    into their branches (so ``one_of(a, one_of(b, c))`` picks ``a`` a third
    of the time) and drops repeated branches; a map stops both."""
    return strategy.map(_same)


leaves = opaque(st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(), st.text(max_size=12), st.binary(max_size=12),
))
# Where an in-range integer would schedule an expiry or a purge mid-run.
non_ints = opaque(st.one_of(
    st.none(), st.booleans(), st.floats(), st.text(max_size=12), st.binary(max_size=12),
))
anything = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), INT64), inner, max_size=4),
    ),
    max_leaves=6,
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), INT64, st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=6,
)
values = st.one_of(json_values, anything)
# Accepted requests may change state, but nothing may change behind the
# test's back between two snapshots: valid ttls and timestamps are drawn far
# enough out that nothing expires or is purged while the test runs.
FAR = int(time.time() * US) + 30 * 86400 * US
ttls = st.one_of(
    st.integers(min_value=10**6, max_value=MAX_TTL),
    st.integers(min_value=-(2**63), max_value=0),
    st.integers(min_value=MAX_TTL + 1, max_value=2**64 - 1),
    non_ints,
)
stamps = st.one_of(
    st.integers(min_value=FAR, max_value=TIME_MAX),
    st.integers(min_value=-(2**63), max_value=TIME_MIN - 1),
    st.integers(min_value=TIME_MAX + 1, max_value=2**63 - 1),
    non_ints,
)
fresh_sids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=8).map(lambda s: "fz" + s)


def field_strategies(sids: list[str]) -> dict[str, st.SearchStrategy[Any]]:
    sid = st.one_of(st.sampled_from(sids), fresh_sids, st.text(max_size=10), leaves)
    session = st.fixed_dictionaries(
        {"id": st.one_of(fresh_sids, st.sampled_from(sids), leaves),
         "created_at": stamps},
        optional={
            "user": st.one_of(st.text(min_size=1, max_size=8), leaves),
            "status": st.one_of(st.sampled_from(["active", "expired"]), leaves),
            "ttl": ttls, "meta": st.dictionaries(st.text(max_size=6), values, max_size=3),
            "last_access": stamps, "expires_at": stamps,
            "expired_at": st.one_of(st.none(), stamps),
            "version": st.one_of(st.integers(min_value=-5, max_value=10**6), leaves),
        },
    )
    return {
        "version": st.one_of(st.just(1), leaves), "client": values, "sid": sid,
        "user": st.one_of(st.text(min_size=1, max_size=10), leaves), "ttl": ttls,
        "meta": st.one_of(st.dictionaries(st.text(max_size=6), values, max_size=4), anything),
        "touch": st.one_of(st.booleans(), leaves),
        "key": st.one_of(st.text(min_size=1, max_size=8), leaves),
        "value": values,
        "expect_version": st.one_of(st.integers(min_value=-1, max_value=3), leaves),
        "status": st.one_of(st.sampled_from(["active", "expired"]), leaves),
        "limit": st.one_of(st.integers(min_value=-2, max_value=1002), leaves),
        "cursor": st.one_of(st.integers(min_value=-5, max_value=10**20).map(str),
                            st.text(max_size=12), leaves),
        "revive": st.one_of(st.booleans(), leaves),
        "before": st.one_of(INT64, leaves),
        "dry_run": st.one_of(st.booleans(), leaves),
        "sessions": st.one_of(st.lists(session, max_size=3), anything),
    }


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` about three times in four: requests must often get past the
    shape check to exercise the rules behind it."""
    return st.one_of(*(opaque(valid) for _ in range(3)), opaque(invalid))


def requests_like(sids: list[str]) -> st.SearchStrategy[dict[Any, Any]]:
    fields = field_strategies(sids)
    ids = mostly(st.integers(min_value=0, max_value=2**63 - 1), leaves)
    # Now and then a field the operation does not have.
    extras = st.one_of(st.just({}), st.just({}), st.just({}), st.just({}),
                       st.dictionaries(st.sampled_from(sorted(fields)), values, max_size=2),
                       st.dictionaries(st.text(max_size=6), values, max_size=1))

    def build(op: str | None) -> st.SearchStrategy[dict[Any, Any]]:
        """Requests of operation ``op``, or of a made-up one (``None``)."""
        required, optional = FIELDS[op] if op else ([], sorted(fields))
        own = {name: fields[name] for name in required + optional}
        if op == "config_set":
            # A valid value would retune the daemon mid-run (say to a 1 KiB
            # frame limit): send only values that no key accepts.
            own["key"] = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=8))
            own["value"] = st.one_of(
                st.none(), st.integers(min_value=-(2**63), max_value=-1),
                st.lists(leaves, max_size=2))
        ops = st.just(op) if op else st.one_of(
            st.text(max_size=10).filter(lambda s: s != "watch"), leaves)
        base = st.fixed_dictionaries(
            {"op": ops, "id": ids, **{name: own[name] for name in required}},
            optional={name: own[name] for name in optional},
        )
        return st.tuples(base, extras).map(lambda t: {**t[1], **t[0]})

    return st.one_of(*[build(op) for op in sorted(FIELDS)], build(None))


def bodies(sids: list[str]) -> st.SearchStrategy[bytes]:
    encoded = requests_like(sids).map(encode)
    return st.one_of(
        encoded,
        encoded,
        encoded,
        st.binary(max_size=300),
        st.tuples(encoded, st.binary(min_size=1, max_size=8)).map(lambda t: t[0] + t[1]),
        st.tuples(encoded, st.integers(min_value=0), st.integers(min_value=0, max_value=255)).map(
            lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :]
        ),
        st.tuples(encoded, st.integers(min_value=0)).map(lambda t: t[0][: t[1] % len(t[0])]),
    )


def test_generated_frames_never_kill_never_fail_internally_never_change_state_when_refused(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    # Nothing expired may be purged behind the test's back.
    write_config(d.config, expired_retention=MAX_TTL)
    d.start()
    sids = seed(d.socket)
    counts = {"accepted": 0, "refused": 0}
    with d.client() as watcher, Raw(d.socket) as raw:
        # The state before each example: refused ones leave it as it was.
        last = [snapshot(watcher)]

        @settings(max_examples=2000, deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=bodies(sids))
        def one(body: bytes) -> None:
            before = last[0]
            # A ping right behind it: the framing is intact, so the same
            # connection must answer that too.
            raw.send(frame(body) + request(op="ping", id=2**62))
            reply = raw.read_frame()
            assert reply is not None, f"daemon closed the connection after {body!r}"
            assert d.proc is not None and d.proc.poll() is None, "the daemon died"
            if reply["r"] == "error":
                counts["refused"] += 1
                assert reply["code"] != "internal", reply
                assert reply["message"], reply
                assert snapshot(watcher) == before, f"refused {body!r} yet changed state"
            else:
                counts["accepted"] += 1
                last[0] = snapshot(watcher)
            pong = raw.read_frame()
            assert pong is not None and pong["r"] == "pong" and pong["id"] == 2**62, pong

        one()
        final = snapshot(watcher)[0]
    assert counts["accepted"] > 20 and counts["refused"] > 500, counts
    assert "Traceback" not in d.log_text()
    # Whatever was accepted was journalled in a form that replays.
    d.restart()
    assert snapshot(d.socket)[0] == final
