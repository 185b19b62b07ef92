"""``sessiond.streams.ArrayReader``: a JSON array's elements, a chunk at a
time. It finds where each element ends from msgspec's own refusal of a
value followed by more ("trailing characters (byte N)"); these pin that
wording, so that a msgspec that words it otherwise fails here, by name,
rather than every import of a JSON export being refused as malformed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from sessiond import streams
from sessiond.streams import ArrayReader, Malformed


def test_msgspec_says_where_a_value_followed_by_more_ends() -> None:
    with pytest.raises(msgspec.DecodeError) as caught:
        msgspec.json.decode(b'{"a": 1} , 2', type=msgspec.Raw)
    found = streams._TRAILING.search(str(caught.value))
    assert found is not None, f"msgspec's words changed: {caught.value}"
    assert int(found.group(1)) == len(b'{"a": 1} ') + 1
    with pytest.raises(msgspec.DecodeError) as cut:
        msgspec.json.decode(b'{"a": [1, 2', type=msgspec.Raw)
    assert str(cut.value) == streams._TRUNCATED


def elements(tmp_path: Path, text: bytes, chunk: int) -> list[bytes | None]:
    path = tmp_path / "export.json"
    path.write_bytes(text)
    old = streams.CHUNK
    streams.CHUNK = chunk
    try:
        with path.open("rb") as f:
            first = f.read(1)
            return list(ArrayReader(f, first, 0).elements(cap=64))
    finally:
        streams.CHUNK = old


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_elements_come_whole_across_chunks_and_one_past_the_cap_is_skipped(
    tmp_path: Path, chunk: int
) -> None:
    big = {"id": "big", "pad": "x" * 200}
    items = [{"id": "a", "n": 12345}, 67890, "s,]{", big, [1, [2, {"z": "]"}]], True]
    text = json.dumps(items, indent=1).encode()
    got = elements(tmp_path, text, chunk)
    assert [None if g is None else json.loads(g) for g in got] == [
        items[0], items[1], items[2], None, items[4], items[5]]


@pytest.mark.parametrize(("text", "words"), [
    (b'[{"id": "a"} {"id": "b"}]', "malformed"),
    (b'[1, 2', "truncated"),
    (b'[1, 2] 3', "trailing characters (byte 8)"),
    (b'[1,]', "malformed"),
])
def test_a_document_that_is_not_json_is_refused_with_msgspecs_words(
    tmp_path: Path, text: bytes, words: str
) -> None:
    with pytest.raises(Malformed, match=re.escape(words)):
        elements(tmp_path, text, 1 << 20)
