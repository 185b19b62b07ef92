"""The JSON line format shared by the journal, exports and legacy files.

A put line is the whole session in the legacy record shape; a delete line is
``{"type":"delete","id":…}``. Lines the daemon writes end with a CRC-32 of
the line without that field, ``,"crc":"8 hex digits"}``, so a damaged line
can be told from a torn one; lines without it (legacy files, exports) are
accepted. Nothing here does I/O or imports anyio: the CLI uses it to import.

Two readers share the format. ``decode_line`` reads any line, one at a time,
leniently (legacy files may lack fields or carry others) and gives a
``Session`` for the store to check by its rules. ``read_block`` reads many
lines at once, but only lines in the form the daemon writes (every field,
timestamps as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, a good checksum); it gives
``Record``s ready to adopt, or ``None`` when any line needs the lenient
reader. A line in that form passed the store's rules when it was written
(its checksum says it is as written), so it is not checked again in full:
its status, ttl, version and the lengths of its id and user are held to the
rules' bounds while msgspec parses (which costs nothing), its meta must be
an object within the size limit, and that is all (the characters of the id
and what is inside the meta are not looked at again). A line outside those
bounds goes to the lenient reader and gets the store's verdict.
"""

from __future__ import annotations

import math
import re
import sys
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, countOf, eq, floordiv, is_, itemgetter, sub
from typing import Annotated, Any, Literal, cast

import msgspec
from msgspec.structs import asdict, astuple

from sessiond.limits import ID_MAX, MAX_TTL, MAX_VERSION, META_MAX_BYTES, USER_MAX
from sessiond.model import (
    ACTIVE,
    DEFAULT_USER,
    EMPTY_META,
    EXPIRED,
    US,
    ImportedSession,
    Record,
    Session,
    iso,
)

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_US = timedelta(microseconds=1)
_CRC_TAIL = len(b',"crc":"00000000"}')
_ID_IN_LINE = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9._-]{1,128})"')


class LineError(ValueError):
    """A line that cannot be read: bad JSON, wrong shape or wrong checksum.

    ``complete`` is false only when the bytes are not even JSON: that is what
    a write cut short by a crash leaves, so only such a line may be taken for
    a torn tail. A line that parses but is wrong was written whole and then
    damaged. ``index`` says which item of a batch a loader refused."""

    def __init__(self, message: str, *, complete: bool = True, index: int = 0) -> None:
        super().__init__(message)
        self.complete = complete
        self.index = index


class PutLine(msgspec.Struct, tag_field="type", tag="session", kw_only=True, omit_defaults=True,
              gc=False):
    id: str
    user: str
    status: str
    ttl: int
    # Already JSON: a record's meta is kept as its JSON text.
    meta: msgspec.Raw
    created_at: str
    last_access: str
    expires_at: str
    expired_at: str | None = None
    # Only on a record imported expired (see Record.imported_at): other
    # lines, and every line written before it existed, are without it.
    imported_at: str | None = None
    version: int


class DeleteLine(msgspec.Struct, tag_field="type", tag="delete"):
    id: str


class _ReadPut(msgspec.Struct, tag_field="type", tag="session", kw_only=True):
    # Lenient: legacy files may lack fields we add, and carry ones we don't,
    # and the legacy tool wrote some ttls as floats or numeric strings.
    id: str
    user: str = DEFAULT_USER
    status: str = "active"
    ttl: int | float | str = 3600
    meta: dict[str, Any] = {}
    created_at: datetime
    last_access: datetime | None = None
    expires_at: datetime | None = None
    expired_at: datetime | None = None
    imported_at: datetime | None = None
    version: int = 1
    crc: str | None = None


class _ReadDelete(msgspec.Struct, tag_field="type", tag="delete", kw_only=True):
    id: str
    crc: str | None = None


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


_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_decoder = msgspec.json.Decoder(_ReadPut | _ReadDelete)
_own_decoder = msgspec.json.Decoder(list[_OwnPut | _OwnDelete])
# Where two lines in the written form meet, and how to join them again.
_OPEN = b'{"'
_MEET = b'"}\n' + _OPEN
_JOIN = b'"},' + _OPEN
# Of a line split out of a block, the part its checksum covers (less "}").
_HEAD_OF_PIECE: Callable[[bytes], bytes] = itemgetter(slice(None, 2 - _CRC_TAIL))
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
# Of records.
_CREATED = attrgetter("created_at")
_LAST = attrgetter("last_access")
_EXPIRES = attrgetter("expires_at")
_EXPIRED = attrgetter("expired_at")
_IMPORTED = attrgetter("imported_at")
_META_JSON = attrgetter("meta_json")
_FIRST = itemgetter(0)

# ISO text, for writing. Of whole seconds: records written together share
# theirs. Of whole days: the time of day is arithmetic, the date is not,
# and a journal's stamps span few days. And of whole stamps: an update
# writes its record's created_at and expires_at again, unchanged. Bounded,
# and safe to share between threads (a lost entry is only computed again).
_SECONDS_CACHE = 4096
_seconds: dict[int, str] = {}
_DAYS_CACHE = 4096
_days: dict[int, str] = {}
_STAMPS_CACHE = 1 << 14
_stamp_texts: dict[int, str] = {}
# The microseconds as two 3-digit halves from a table: half the time of
# formatting them with "06d", which was the dearest part of a stamp.
_DIGITS3 = [f"{i:03d}" for i in range(1000)]


def _format(us: int) -> str:
    """``iso(us)``, with the second (or at least the date) from a cache."""
    secs, frac = divmod(us, US)
    head = _seconds.get(secs)
    if head is None:
        day, rest = divmod(secs, 86400)
        date = _days.get(day)
        if date is None:
            if len(_days) >= _DAYS_CACHE:
                _days.clear()
            date = _days[day] = iso(day * 86400 * US)[:11]  # "2026-11-24T"
        hours, rest = divmod(rest, 3600)
        minutes, rest = divmod(rest, 60)
        if len(_seconds) >= _SECONDS_CACHE:
            _seconds.clear()
        head = _seconds[secs] = f"{date}{hours:02d}:{minutes:02d}:{rest:02d}"
    return f"{head}.{_DIGITS3[frac // 1000]}{_DIGITS3[frac % 1000]}Z"


def _iso(us: int) -> str:
    """``iso(us)``, faster when the moment was written recently (one record
    at a time; compaction's many distinct moments use ``_format``)."""
    text = _stamp_texts.get(us)
    if text is None:
        if len(_stamp_texts) >= _STAMPS_CACHE:
            _stamp_texts.clear()
        text = _stamp_texts[us] = _format(us)
    return text


def to_line(session: Session | Record) -> PutLine:
    """The legacy record shape of a session (for exports and the journal)."""
    if isinstance(session, Record):
        meta = msgspec.Raw(session.meta_json)
    else:
        meta = msgspec.Raw(_encode(session.meta))
    expired_at = session.expired_at
    imported_at = session.imported_at if isinstance(session, (Record, ImportedSession)) else None
    created, last = session.created_at, session.last_access
    created_text = _iso(created)
    return PutLine(
        id=session.id,
        user=session.user,
        status=session.status,
        ttl=session.ttl,
        meta=meta,
        created_at=created_text,
        # Mostly the moment of this very write: seen once, so not cached,
        # where it would push out the stamps that are written again.
        last_access=created_text if last == created else _format(last),
        expires_at=_iso(session.expires_at),
        expired_at=None if expired_at is None else _iso(expired_at),
        imported_at=None if imported_at is None else _iso(imported_at),
        version=session.version,
    )


def _seal(body: bytes) -> bytes:
    return b'%s,"crc":"%08x"}\n' % (body[:-1], zlib.crc32(body))


def put_line(session: Session | Record) -> bytes:
    """A checksummed journal line for a session, newline included."""
    return _seal(_encode(to_line(session)))


class _ActiveLine(msgspec.Struct, tag_field="type", tag="session", gc=False):
    """``PutLine`` of an active session, made positionally (by ``map``)."""

    id: str
    user: str
    status: str
    ttl: int
    meta: msgspec.Raw
    created_at: str
    last_access: str
    expires_at: str
    version: int


class _ExpiredLine(msgspec.Struct, tag_field="type", tag="session", gc=False):
    """``PutLine`` of an expired session, made positionally (by ``map``)."""

    id: str
    user: str
    status: str
    ttl: int
    meta: msgspec.Raw
    created_at: str
    last_access: str
    expires_at: str
    expired_at: str
    version: int


_DROP_LAST: Callable[[bytes], bytes] = itemgetter(slice(None, -1))
_CRC_FIELD = b',"crc":"%08x"}\n'.__mod__


def _bodies(
    records: Sequence[Record], expired: bool, stamp: Callable[[int], str]
) -> Iterator[bytes]:
    """Encoded put lines (unsealed) of records all active or all expired;
    each distinct timestamp is formatted once, by ``stamp`` (last accesses,
    mostly written once, by ``_format``: see ``to_line``)."""
    columns = [
        list(map(_CREATED, records)), list(map(_LAST, records)), list(map(_EXPIRES, records))
    ]
    if expired:
        columns.append(cast("list[int]", list(map(_EXPIRED, records))))
    lasts = set(columns[1])
    others = set(columns[0]).union(*columns[2:]) - lasts
    formatted = dict(zip(others, map(stamp, others), strict=True))
    formatted.update(zip(lasts, map(_format, lasts), strict=True))
    text = formatted.__getitem__
    stamps = [map(text, column) for column in columns]
    lines = map(
        _ExpiredLine if expired else _ActiveLine,
        map(_ID_OF, records),
        map(_USER_OF, records),
        repeat(EXPIRED if expired else ACTIVE),
        map(_TTL_OF, records),
        map(msgspec.Raw, map(_META_JSON, records)),
        *stamps,
        map(_VERSION_OF, records),
    )
    return map(_encode, lines)


def put_lines(records: Sequence[Record], recent: bool = False) -> bytes:
    """Checksummed journal lines for many records (what compaction writes):
    the bytes of ``put_line`` for each, made without a loop in Python.

    ``recent``: records just changed by requests, whose unchanged stamps
    were written lately (the per-stamp cache then pays; for compaction's
    many distinct stamps it only churns)."""
    imported = list(map(_IMPORTED, records))
    if countOf(imported, None) != len(imported):
        return _with_imported(records, imported, recent)
    stamp = _iso if recent else _format
    flags = list(map(_EXPIRED, records))
    expired = len(flags) - countOf(flags, None)
    if not expired:
        bodies: Iterable[bytes] = _bodies(records, False, stamp)
    elif expired == len(records):
        bodies = _bodies(records, True, stamp)
    else:
        active = _bodies([r for r in records if r.expired_at is None], False, stamp)
        done = _bodies([r for r in records if r.expired_at is not None], True, stamp)
        bodies = [next(active) if flag is None else next(done) for flag in flags]
    bodies = list(bodies)
    tails = map(_CRC_FIELD, map(zlib.crc32, bodies))
    return b"".join(chain.from_iterable(zip(map(_DROP_LAST, bodies), tails, strict=True)))


def _with_imported(
    records: Sequence[Record], imported: list[int | None], recent: bool
) -> bytes:
    """``put_lines`` where some records carry ``imported_at`` (rare: after an
    import of expired sessions): theirs one at a time, the rest in bulk."""
    rest = put_lines([r for r, at in zip(records, imported, strict=True) if at is None], recent)
    others = iter(rest.splitlines(keepends=True))  # JSON text holds no raw newline
    return b"".join([
        next(others) if at is None else put_line(r)
        for r, at in zip(records, imported, strict=True)
    ])


def delete_line(sid: str) -> bytes:
    """A checksummed journal line that removes a session."""
    return _seal(_encode(DeleteLine(sid)))


def plain_line(session: Session | Record) -> bytes:
    """An export line: the legacy record shape, no checksum."""
    return _encode(to_line(session)) + b"\n"


def _us(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def decode_line(raw: bytes) -> Session | str:
    """A put line as a ``Session``, a delete line as the id it removes.

    Raises ``LineError`` saying what is wrong with the line."""
    line = raw.rstrip(b"\r\n")
    try:
        rec = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        from sessiond.wording import plain

        raise LineError(f"not a valid record: {plain(str(exc), 'the record')}") from exc
    except msgspec.DecodeError as exc:
        raise LineError(f"not valid JSON: {exc}", complete=False) from exc
    except RecursionError as exc:
        raise LineError("not a valid record: nested too deeply") from exc
    if rec.crc is not None:
        body = line[:-_CRC_TAIL] + b"}"
        if len(line) <= _CRC_TAIL or f"{zlib.crc32(body):08x}" != rec.crc:
            raise LineError("checksum mismatch")
    if isinstance(rec, _ReadDelete):
        return rec.id
    ttl = _whole_seconds(rec.ttl)
    created = _us(rec.created_at)
    last = created if rec.last_access is None else _us(rec.last_access)
    expires = last + ttl * 1_000_000 if rec.expires_at is None else _us(rec.expires_at)
    session = Session(
        id=rec.id,
        user=rec.user,
        status=rec.status,
        ttl=ttl,
        meta=rec.meta,
        created_at=created,
        last_access=last,
        expires_at=expires,
        expired_at=None if rec.expired_at is None else _us(rec.expired_at),
        version=rec.version,
    )
    if rec.imported_at is not None:
        return ImportedSession(**asdict(session), imported_at=_us(rec.imported_at))
    return session


def _whole_seconds(ttl: int | float | str) -> int:
    """A ttl as the legacy tool may have written it (a float, a numeric
    string) in whole seconds: a fraction counts as a whole second more, so
    that a positive ttl never becomes 0. Whether the value is acceptable
    (0 or less: expired) is for the store to say. Raises ``LineError``."""
    if isinstance(ttl, int):
        return ttl
    if isinstance(ttl, str):
        # Plain decimal digits only: float() would also take "nan", "1_0"
        # and digits of other scripts.
        text = ttl.strip()
        if _NUMBER.fullmatch(text) is None:
            raise LineError(f"ttl {ttl!r} is not a number of seconds")
        try:
            if _INTEGER.fullmatch(text) is not None:
                return int(text)
        except ValueError:  # more digits than int() takes from text
            raise LineError(f"ttl {ttl!r} is out of range") from None
        ttl = float(text)
    if not math.isfinite(ttl):
        raise LineError(f"ttl {ttl!r} is not a number of seconds")
    return math.ceil(ttl)


_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


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
    return dict(zip(texts, map(floordiv, map(sub, moments, repeat(_EPOCH)), repeat(_ONE_US)),
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
    heads[-1] = pieces[-1][:-_CRC_TAIL]
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


def line_id(raw: bytes) -> str | None:
    """Best effort: the id a damaged line was about, for repair reports."""
    m = _ID_IN_LINE.search(raw)
    return m.group(1).decode() if m else None
