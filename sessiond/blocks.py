"""Reading many journal lines at once, in the form the daemon writes them.

``read_block`` reads a block of whole lines in one pass with no Python loop
over them (a million are read at a daemon's start), but only lines in the
form the daemon writes: every field, timestamps as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``, a good checksum. It gives ``Record``s
ready to adopt, or ``None`` when any line needs the lenient reader
(``records.decode_line``). A line in that form passed the store's rules when
it was written (its checksum says it is as written), so it is not checked
again in full: its status, ttl, version and the lengths of its id and user
are held to the rules' bounds while msgspec parses (which costs nothing),
its meta must be an object within the size limit, and that is all (the
characters of the id and what is inside the meta are not looked at again).
A line outside those bounds goes to the lenient reader and gets the store's
verdict. ``read_line`` reads one line either way.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, countOf, eq, floordiv, is_, itemgetter, sub
from typing import Annotated, Literal, cast

import msgspec
from msgspec.structs import astuple

from sessiond.limits import ID_MAX, MAX_TTL, MAX_VERSION, META_MAX_BYTES, USER_MAX
from sessiond.model import ACTIVE, EMPTY_META, Record, Session
from sessiond.records import CRC_TAIL, EPOCH, ONE_US, decode_line

# The form the daemon writes, and nothing else (see the module's docstring).
_Stamp = Annotated[str, msgspec.Meta(min_length=27, max_length=27)]
_Crc = Annotated[str, msgspec.Meta(min_length=8, max_length=8)]


class _OwnPut(msgspec.Struct, tag_field="type", tag="session", kw_only=True, gc=False):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX)]
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=USER_MAX)]
    status: Literal["active", "expired"]
    ttl: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL)]
    meta: msgspec.Raw
    created_at: _Stamp
    last_access: _Stamp
    expires_at: _Stamp
    expired_at: _Stamp | None = None
    imported_at: _Stamp | None = None
    # Bounded as the rules bound it: a line outside goes to the lenient
    # reader, and the store refuses it by name.
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]
    crc: _Crc


class _OwnDelete(msgspec.Struct, tag_field="type", tag="delete", kw_only=True, gc=False):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX)]
    crc: _Crc



_own_decoder = msgspec.json.Decoder(list[_OwnPut | _OwnDelete])
# Where two lines in the written form meet, and how to join them again.
_OPEN = b'{"'
_MEET = b'"}\n' + _OPEN
_JOIN = b'"},' + _OPEN
# Of a line split out of a block, the part its checksum covers (less "}").
_HEAD_OF_PIECE: Callable[[bytes], bytes] = itemgetter(slice(None, 2 - CRC_TAIL))
_OPEN_CRC = zlib.crc32(_OPEN)
_CLOSE_CRC = partial(zlib.crc32, b"}")  # (crc of a line's head) -> crc of head + "}"
_CRC_OF = attrgetter("crc")
_META_OF = attrgetter("meta")
_ID_OF = attrgetter("id")
_USER_OF = attrgetter("user")
_TTL_OF = attrgetter("ttl")
_STATUS_OF = attrgetter("status")
_VERSION_OF = attrgetter("version")
_EXPIRES_OF = attrgetter("expires_at")
_CREATED_OF = attrgetter("created_at")
_LAST_OF = attrgetter("last_access")
_FIRST = itemgetter(0)


# In a timestamp of the written form, the characters that are not digits.
_STAMP_MARKS = ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":"), (19, "."), (26, "Z"))
_STAMP_LEN = 27


def _stamps(texts: list[str]) -> dict[str, int]:
    """Microseconds of distinct timestamps, each exactly in the form the
    daemon writes (``_Stamp`` fixed their length); ``ValueError`` for any
    other. msgspec reads that form to the same value."""
    joined = "".join(texts)
    n = len(texts)
    for at, mark in _STAMP_MARKS:
        if joined[at::_STAMP_LEN] != mark * n:
            raise ValueError("a timestamp not of the written form")
    moments = map(datetime.fromisoformat, texts)  # checks the digits
    return dict(zip(texts, map(floordiv, map(sub, moments, repeat(EPOCH)), repeat(ONE_US)),
                    strict=True))


def _checksums_match(pieces: list[bytes], claimed: Sequence[str]) -> bool:
    """decode_line's test for each line, without a loop in Python: the
    checksum covers the line less its last field, which must be the
    checksum itself, written as 8 lowercase hex digits. ``pieces`` are the
    lines as ``read_block`` split them: all but the first lost their
    opening ``{"``, all but the last their closing ``"}``."""
    text = "".join(claimed)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return False
    if raw.hex() != text:  # fromhex also takes capitals and spaces
        return False
    heads = list(map(_HEAD_OF_PIECE, pieces))
    heads[-1] = pieces[-1][:-CRC_TAIL]
    starts = chain((0,), repeat(_OPEN_CRC, len(pieces) - 1))
    sums = array("I", map(_CLOSE_CRC, map(zlib.crc32, heads, starts)))
    if sys.byteorder == "little":
        sums.byteswap()
    return sums.tobytes() == raw


def read_block(block: bytes) -> list[Record | str] | None:
    """Whole lines (``block`` ends with a newline) in the form the daemon
    writes, as records (puts) and ids (deletes), in order; ``None`` when any
    of them is in another form or damaged: then ``read_line`` each, to learn
    which.

    Records come unadopted (``seq`` unset), with their users interned, equal
    values within the batch shared, and an expired record's ``expired_at``
    filled in as the store would. There is no loop in Python over the lines
    (the common case): a million of them are read at daemon start."""
    # Lines in the written form meet at _MEET: JSON text has no other raw
    # newline. Splitting there is a substring search (splitting at b"\n"
    # looks at every byte); any other newline stays inside a piece, and then
    # the pieces do not join into a JSON array.
    pieces = block.split(_MEET)
    pieces[-1] = pieces[-1][:-1]  # its newline
    ends = pieces[0], pieces[-1]
    pieces[0] = b"[" + pieces[0]
    pieces[-1] += b"]"
    text = _JOIN.join(pieces)
    pieces[0], pieces[-1] = ends
    try:
        items = _own_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(items) != len(pieces):
        return None
    if not all(map(isinstance, items, repeat(_OwnPut))):
        if not _checksums_match(pieces, list(map(_CRC_OF, items))):
            return None
        return _one_by_one(items)
    # The fields as columns, in _OwnPut's order.
    ids, users, statuses, ttls, raws, created, last, expires, expired, imported, versions, crcs = (
        zip(*map(astuple, items), strict=True)
    )
    if not _checksums_match(pieces, crcs):
        return None
    if countOf(imported, None) != len(imported):
        return _one_by_one(items)
    # Copies (a Raw pins the whole batch), one object for equal ones; each
    # must be an object, of the size the rules allow.
    if countOf(raws, raws[0]) == len(raws):
        only = bytes(raws[0])
        if only[:1] != b"{" or len(only) > META_MAX_BYTES:
            return None
        metas: Iterable[bytes] = repeat(EMPTY_META if only == EMPTY_META else only, len(raws))
    else:
        texts = list(map(bytes, raws))
        shared = {EMPTY_META: EMPTY_META}
        metas = list(map(shared.setdefault, texts, texts))
        if bytes(map(_FIRST, shared)).strip(b"{") or max(map(len, shared)) > META_MAX_BYTES:
            return None
    active = countOf(statuses, ACTIVE) == len(statuses)
    if not active and not all(map(eq, map(eq, statuses, repeat(ACTIVE)),
                                  map(is_, expired, repeat(None)))):
        # As the store would: expired means an expired_at, by default the
        # deadline. (Lines the daemon wrote have one exactly when expired.)
        expired = tuple(
            None if status == ACTIVE else when or deadline
            for status, when, deadline in zip(statuses, expired, expires, strict=True)
        )
    columns = (expires, created, last) if active else (expires, created, last, expired)
    try:
        stamps = _stamp_columns(columns)
    except ValueError:
        return None
    # Lines written together share users and ttls: one object each.
    shared_ttl: dict[int, int] = {}
    return list(map(
        Record,
        stamps[0],
        ids,
        map(sys.intern, users),
        map(shared_ttl.setdefault, ttls, ttls),
        metas,
        stamps[1],
        stamps[2],
        repeat(None) if active else stamps[3],
        versions,
    ))


def _stamp_columns(columns: Sequence[Sequence[str | None]]) -> list[Iterable[int | None]]:
    """Columns of timestamps as microseconds, each distinct text parsed once
    and each distinct value one object. A column of one value (records made
    together) costs a comparison per line, not a lookup."""
    uniform = [countOf(column, column[0]) == len(column) for column in columns]
    texts = {column[0] for column in columns}
    for column, same in zip(columns, uniform, strict=True):
        if not same:
            texts.update(column)
    texts.discard(None)
    at: dict[str | None, int | None] = {None: None}
    at.update(_stamps(cast("list[str]", list(texts))))
    return [
        repeat(at[column[0]], len(column)) if same else map(at.__getitem__, column)
        for column, same in zip(columns, uniform, strict=True)
    ]


def _one_by_one(items: list[_OwnPut | _OwnDelete]) -> list[Record | str] | None:
    """``read_block`` for a batch with deletes in it, or records imported
    expired (both rare once compacted)."""
    out: list[Record | str] = []
    for p in items:
        if isinstance(p, _OwnDelete):
            out.append(p.id)
            continue
        meta = bytes(p.meta)
        if meta[:1] != b"{" or len(meta) > META_MAX_BYTES:
            return None
        expired = None if p.status == ACTIVE else p.expired_at or p.expires_at
        texts = {p.expires_at, p.created_at, p.last_access, expired or p.expires_at,
                 p.imported_at or p.expires_at}
        try:
            at = _stamps(list(texts))
        except ValueError:
            return None
        out.append(Record(
            at[p.expires_at],
            p.id,
            sys.intern(p.user),
            p.ttl,
            EMPTY_META if meta == EMPTY_META else meta,
            at[p.created_at],
            at[p.last_access],
            None if expired is None else at[expired],
            p.version,
            None if p.imported_at is None else at[p.imported_at],
        ))
    return out


def read_line(raw: bytes) -> Record | Session | str:
    """One line (newline included or not): a ready ``Record`` when it is in
    the form the daemon writes, else what ``decode_line`` makes of it.

    Raises ``LineError`` saying what is wrong with the line."""
    own = read_block(raw if raw.endswith(b"\n") else raw + b"\n")
    return own[0] if own is not None else decode_line(raw)


