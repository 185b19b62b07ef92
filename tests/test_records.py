"""The journal line format, pinned byte for byte by the files in tests/golden/.

A put line is the whole session in the legacy record shape with a CRC-32 as
its last field; a delete line names the id; legacy lines (no checksum) load.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessiond.blocks import read_block, read_line
from sessiond.errors import InvalidRequest
from sessiond.limits import MAX_VERSION, TIME_MAX
from sessiond.model import ImportedSession, Record, Session, iso
from sessiond.records import (
    LineError,
    change_lines,
    decode_line,
    delete_line,
    line_id,
    plain_line,
    put_line,
    put_lines,
)
from sessiond.store import Store
from sessiond.timeparse import parse_iso as parse_time

GOLDEN = Path(__file__).parent / "golden"

ALICE = Session(
    id="1f0f618148e2",
    user="alice",
    status="active",
    ttl=3600,
    meta={"a": "1", "theme": "dark", "note": "café ☕", "n": 3, "nested": {"k": [1, True, None]}},
    created_at=parse_time("2026-11-24T09:13:42.067680Z"),
    last_access=parse_time("2026-11-24T09:20:00.000001Z"),
    expires_at=parse_time("2026-11-24T10:20:00.000001Z"),
    version=3,
)
CAROL_EXPIRED = Session(
    id="carol-1",
    user="carol",
    status="expired",
    ttl=120,
    meta={},
    created_at=parse_time("2026-11-24T09:00:00Z"),
    last_access=parse_time("2026-11-24T09:00:00Z"),
    expires_at=parse_time("2026-11-24T09:02:00Z"),
    expired_at=parse_time("2026-11-24T09:02:00.5Z"),
    version=2,
)


# Imported (by a legacy migration or sessionctl import) a month after it
# expired: its retention counts from the import.
DAVE_IMPORTED = ImportedSession(
    id="dave-1",
    user="dave",
    status="expired",
    ttl=60,
    meta={"from": "legacy"},
    created_at=parse_time("2026-10-24T09:00:00Z"),
    last_access=parse_time("2026-10-24T09:00:00Z"),
    expires_at=parse_time("2026-10-24T09:01:00Z"),
    expired_at=parse_time("2026-10-24T09:01:00Z"),
    imported_at=parse_time("2026-11-24T09:13:42.067680Z"),
    version=1,
)


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


@settings(max_examples=2000)
@given(us=st.integers(min_value=0, max_value=TIME_MAX))
def test_the_written_timestamp_is_iso_of_the_moment(us: int) -> None:
    # The writers' caches (a day's date, a whole stamp) must never change it.
    record = Record(us, "id", "u", 1, b"{}", us, us, us, 1)
    assert read_line(put_line(record)) == record
    assert put_lines([record, record]) == put_line(record) * 2
    assert change_lines([record, record]) == put_line(record) * 2
    assert f'"created_at":"{iso(us)}"'.encode() in put_line(record)


@settings(max_examples=1000)
@given(
    created=st.integers(min_value=0, max_value=TIME_MAX),
    last=st.integers(min_value=0, max_value=TIME_MAX),
    expires=st.integers(min_value=0, max_value=TIME_MAX),
)
def test_every_stamp_of_a_line_is_iso_of_its_moment(created: int, last: int, expires: int) -> None:
    # Each stamp takes its own path: created_at and expires_at through the
    # stamp cache, last_access formatted afresh (or shared with created_at).
    record = Record(expires, "id", "u", 1, b"{}", created, last, None, 1)
    line = put_line(record)
    for field, us in (("created_at", created), ("last_access", last), ("expires_at", expires)):
        assert f'"{field}":"{iso(us)}"'.encode() in line
    assert change_lines([record]) == line == put_lines([record])


def test_put_line_matches_the_golden_bytes() -> None:
    assert put_line(ALICE) == golden("journal_put.jsonl")


def test_put_line_of_an_expired_session_carries_expired_at() -> None:
    assert put_line(CAROL_EXPIRED) == golden("journal_put_expired.jsonl")


def test_put_line_of_a_session_imported_expired_carries_imported_at() -> None:
    assert put_line(DAVE_IMPORTED) == golden("journal_put_imported.jsonl")
    # The field is written only when set: every other line is as it was.
    assert b"imported_at" not in put_line(ALICE) + put_line(CAROL_EXPIRED)


def test_a_line_with_imported_at_is_read_in_bulk_with_it() -> None:
    line = golden("journal_put_imported.jsonl")
    expected = as_the_store_takes_it(DAVE_IMPORTED)
    assert expected.imported_at == DAVE_IMPORTED.imported_at
    assert read_block(line) == [expected]
    assert read_block(put_line(ALICE) + line + delete_line("x")) == [
        as_the_store_takes_it(ALICE), expected, "x"
    ]
    assert put_lines([as_the_store_takes_it(ALICE), expected]) == put_line(ALICE) + line
    assert change_lines([as_the_store_takes_it(ALICE), expected]) == put_line(ALICE) + line


@pytest.mark.parametrize("version", [MAX_VERSION + 1, 2**64 - 1, 2**64])
def test_a_version_out_of_range_is_left_to_the_line_reader(version: int) -> None:
    # The store then refuses it by name, as it refuses any other line.
    line = put_line(msgspec.structs.replace(ALICE, version=version))
    assert read_block(line) is None
    got = read_line(line)
    assert isinstance(got, Session) and got.version == version
    with pytest.raises(InvalidRequest, match="version .* is out of range"):
        Store().replay([got])
    assert read_block(put_line(msgspec.structs.replace(ALICE, version=MAX_VERSION))) == [
        as_the_store_takes_it(msgspec.structs.replace(ALICE, version=MAX_VERSION))
    ]


def test_delete_line_matches_the_golden_bytes() -> None:
    assert delete_line("1f0f618148e2") == golden("journal_delete.jsonl")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("journal_put.jsonl", ALICE),
        ("journal_put_expired.jsonl", CAROL_EXPIRED),
        ("journal_put_imported.jsonl", DAVE_IMPORTED),
        ("journal_delete.jsonl", "1f0f618148e2"),
    ],
)
def test_golden_lines_decode_to_what_they_were_made_from(name: str, expected: object) -> None:
    assert decode_line(golden(name)) == expected


@pytest.mark.parametrize(
    "name",
    ["journal_put.jsonl", "journal_put_expired.jsonl", "journal_put_imported.jsonl",
     "journal_delete.jsonl"],
)
def test_checksum_is_crc32_of_the_line_without_its_crc_field(name: str) -> None:
    line = golden(name)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    body, sep, tail = line.rstrip(b"\n").rpartition(b',"crc":"')
    assert sep, "the checksum must be the last field"
    assert tail.endswith(b'"}') and len(tail) == len(b'00000000"}')
    assert tail[:8] == b"%08x" % zlib.crc32(body + b"}")


def test_legacy_lines_without_a_checksum_are_accepted() -> None:
    active, expired = golden("legacy_sessions.jsonl").splitlines()
    assert decode_line(active) == Session(
        id="1f0f618148e2",
        user="alice",
        status="active",
        ttl=3600,
        meta={"a": "1"},
        created_at=parse_time("2026-11-24T09:13:42.067680Z"),
        last_access=parse_time("2026-11-24T09:13:42.067680Z"),
        expires_at=parse_time("2026-11-24T10:13:42.067680Z"),
        version=1,
    )
    old = decode_line(expired)
    assert isinstance(old, Session)
    assert (old.status, old.expired_at) == ("expired", parse_time("2026-11-24T09:05:00Z"))


def test_a_changed_byte_in_a_checksummed_line_is_a_checksum_mismatch() -> None:
    damaged = golden("journal_put.jsonl").replace(b'"alice"', b'"alicf"')
    with pytest.raises(LineError, match="checksum mismatch") as info:
        decode_line(damaged)
    assert info.value.complete, "a line that parses was written whole: it is damage, not a tear"


def test_a_changed_checksum_is_a_checksum_mismatch() -> None:
    line = golden("journal_delete.jsonl")
    with pytest.raises(LineError, match="checksum mismatch"):
        decode_line(line.replace(b"e7369660", b"e7369661"))


@pytest.mark.parametrize("name", ["journal_put.jsonl", "journal_delete.jsonl"])
def test_every_proper_prefix_of_a_line_is_an_incomplete_line(name: str) -> None:
    line = golden(name).rstrip(b"\n")
    for cut in range(1, len(line)):
        with pytest.raises(LineError) as info:
            decode_line(line[:cut])
        assert not info.value.complete, f"prefix of {cut} bytes taken for a complete line"


@pytest.mark.parametrize(
    "raw",
    [b'{"type":"other","id":"x"}\n', b"42\n", b'{"type":"session"}\n', b'{"type":"delete"}\n'],
)
def test_json_of_the_wrong_shape_is_a_complete_but_unreadable_line(raw: bytes) -> None:
    with pytest.raises(LineError) as info:
        decode_line(raw)
    assert info.value.complete


def test_a_crlf_line_ending_is_accepted() -> None:
    assert decode_line(golden("journal_put.jsonl").replace(b"\n", b"\r\n")) == ALICE


def test_export_lines_carry_no_checksum_and_load_back() -> None:
    line = plain_line(ALICE)
    assert b'"crc"' not in line
    assert decode_line(line) == ALICE


def test_line_id_names_the_session_a_damaged_line_was_about() -> None:
    assert line_id(b'{"type":"session","id":"ab-1.x_Y","user":\x00\xff garbage') == "ab-1.x_Y"
    assert line_id(b"\x00\x00 nothing here") is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_times = st.integers(0, 4_000_000_000 * 1_000_000)


@st.composite
def sessions(draw: Any) -> Session:
    expired = draw(st.booleans())
    return Session(
        id=draw(st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True)),
        user=draw(st.text(min_size=1, max_size=30)),
        status="expired" if expired else "active",
        ttl=draw(st.integers(1, 100 * 365 * 86400)),
        meta=draw(st.dictionaries(st.text(min_size=1, max_size=16), _json, max_size=5)),
        created_at=draw(_times),
        last_access=draw(_times),
        expires_at=draw(_times),
        expired_at=draw(_times) if expired else None,
        version=draw(st.integers(1, 2**62)),
    )


@settings(max_examples=60, deadline=None)
@given(sessions())
def test_any_session_survives_a_put_line_round_trip(session: Session) -> None:
    line = put_line(session)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line) == session


# -- many lines at once: the daemon's own form -----------------------------------


def as_the_store_takes_it(session: Session) -> Record:
    """What replay of the line by the rules makes of a session (unadopted)."""
    store = Store()
    store.replay([session])
    record = store.peek(session.id)
    assert record is not None
    return msgspec.structs.replace(record, seq=-1)


@settings(max_examples=60, deadline=None)
@given(st.lists(sessions() | st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), min_size=1))
def test_lines_the_daemon_writes_are_read_in_bulk_as_the_rules_take_them(
    items: list[Session | str],
) -> None:
    lines = [delete_line(x) if isinstance(x, str) else put_line(x) for x in items]
    expected = [x if isinstance(x, str) else as_the_store_takes_it(x) for x in items]
    assert read_block(b"".join(lines)) == expected
    assert [read_line(line) for line in lines] == expected


@pytest.mark.parametrize(
    "change",
    [
        lambda line: line.replace(b'"alice"', b'"alicf"'),  # damaged
        lambda line: line[:-10] + line[-10:].upper(),  # checksum in capitals
        lambda line: line + b"\r",  # CRLF
        lambda line: line.replace(b"10:20:00.000001Z", b"10:20:00.000001+00:00"),
        lambda line: line.replace(b',"version":3', b""),  # a field missing
        lambda line: line.rpartition(b',"crc"')[0] + b"}",  # no checksum (legacy)
        lambda line: line.replace(b'"status":"active"', b'"status":"paused"'),
    ],
    ids=["damaged", "capitals", "crlf", "offset", "missing", "legacy", "status"],
)
def test_a_batch_with_a_line_in_any_other_form_is_left_to_the_line_reader(
    change: Any,
) -> None:
    good = put_line(CAROL_EXPIRED)
    other = change(golden("journal_put.jsonl").rstrip(b"\n"))
    assert read_block(good + other + b"\n") is None
    assert read_block(other + b"\n" + good) is None
    assert read_block(good) == [as_the_store_takes_it(CAROL_EXPIRED)]
    try:
        expected: object = decode_line(other)
    except LineError as exc:
        with pytest.raises(LineError, match=str(exc)):
            read_line(other)
    else:
        assert read_line(other) == expected


def test_a_meta_that_is_not_an_object_is_left_to_the_line_reader() -> None:
    body = golden("journal_put_expired.jsonl").rstrip(b"\n").replace(b'"meta":{}', b'"meta":5')
    body = body.rpartition(b',"crc"')[0] + b"}"
    line = b'%s,"crc":"%08x"}' % (body[:-1], zlib.crc32(body))
    assert read_block(line + b"\n") is None
    with pytest.raises(LineError, match="meta"):
        read_line(line)


@settings(max_examples=40, deadline=None)
@given(st.lists(sessions(), max_size=30))
def test_put_lines_writes_what_put_line_writes_for_each_record(given: list[Session]) -> None:
    # The bulk writer (compaction) and the commit path's (change_lines)
    # both write, byte for byte, what put_line writes one record at a time.
    records = [as_the_store_takes_it(s) for s in given]
    expected = b"".join(put_line(r) for r in records)
    assert put_lines(records) == expected
    assert change_lines(records) == expected
