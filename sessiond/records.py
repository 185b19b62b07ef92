"""The JSON line format shared by the journal, exports and legacy files.

A put line is the whole session in the legacy record shape; a delete line is
``{"type":"delete","id":…}``. Lines the daemon writes end with a CRC-32 of
the line without that field, ``,"crc":"8 hex digits"}``, so a damaged line
can be told from a torn one; lines without it (legacy files, exports) are
accepted. Nothing here does I/O or imports anyio: the CLI uses it to import.

Two readers share the format. ``decode_line`` (here) reads any line, one at
a time, leniently (legacy files may lack fields or carry others) and gives a
``Session`` for the store to check by its rules. ``sessiond.blocks`` reads
many lines at once, but only in the form the daemon writes.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import attrgetter, countOf, itemgetter
from typing import Any, cast

import msgspec
from msgspec.structs import asdict

from sessiond.model import (
    ACTIVE,
    EXPIRED,
    US,
    Change,
    ImportedSession,
    Record,
    Session,
    iso,
)

_UTC = UTC
EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
ONE_US = timedelta(microseconds=1)
CRC_TAIL = len(b',"crc":"00000000"}')
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
    # A record without a user is read as one with an empty user: both enter
    # as DEFAULT_USER (``rules``), and an import or migration counts them.
    user: str = ""
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


_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_decoder = msgspec.json.Decoder(_ReadPut | _ReadDelete)
# Of records.
_ID_OF = attrgetter("id")
_USER_OF = attrgetter("user")
_TTL_OF = attrgetter("ttl")
_VERSION_OF = attrgetter("version")
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


_SEAL = b'%s,"crc":"%08x"}\n'.__mod__


def _seal(body: bytes) -> bytes:
    return _SEAL((body[:-1], zlib.crc32(body)))


def _sealed(bodies: Iterable[bytes]) -> bytes:
    """``_seal`` of each body, joined: the lines of a batch or a chunk."""
    seal, crc32 = _SEAL, zlib.crc32
    return b"".join([seal((body[:-1], crc32(body))) for body in bodies])


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


def _bodies(records: Sequence[Record], expired: bool) -> Iterator[bytes]:
    """Encoded put lines (unsealed) of records all active or all expired;
    each distinct timestamp is formatted once."""
    columns = [
        list(map(_CREATED, records)), list(map(_LAST, records)), list(map(_EXPIRES, records))
    ]
    if expired:
        columns.append(cast("list[int]", list(map(_EXPIRED, records))))
    distinct = set(columns[0]).union(*columns[1:])
    text = dict(zip(distinct, map(_format, distinct), strict=True)).__getitem__
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


def put_lines(records: Sequence[Record]) -> bytes:
    """Checksummed journal lines for many records (what compaction writes):
    the bytes of ``put_line`` for each, made without a loop in Python, each
    distinct stamp formatted once (and not cached: a compaction's many
    distinct stamps would only churn the cache)."""
    imported = list(map(_IMPORTED, records))
    if countOf(imported, None) != len(imported):
        return _with_imported(records, imported)
    flags = list(map(_EXPIRED, records))
    expired = len(flags) - countOf(flags, None)
    if not expired:
        bodies: Iterable[bytes] = _bodies(records, False)
    elif expired == len(records):
        bodies = _bodies(records, True)
    else:
        active = _bodies([r for r in records if r.expired_at is None], False)
        done = _bodies([r for r in records if r.expired_at is not None], True)
        bodies = [next(active) if flag is None else next(done) for flag in flags]
    return _sealed(bodies)


_AFTER = attrgetter("after")


def journal_lines(changes: list[Change]) -> bytes:
    """The journal lines of ``changes``, in order: one a change (its record,
    or the removal of its id)."""
    if len(changes) == 1:
        c = changes[0]
        return put_line(c.after) if c.after is not None else delete_line(c.sid)
    afters = list(map(_AFTER, changes))
    if None not in afters:
        # A pipelined batch of writes.
        return change_lines(cast("list[Record]", afters))
    return b"".join([
        put_line(c.after) if c.after is not None else delete_line(c.sid) for c in changes
    ])


def change_lines(records: Sequence[Record]) -> bytes:
    """Checksummed journal lines for records just written by requests: the
    bytes of ``put_line`` for each, as the commit path writes them.

    Record by record: their stamps are few and mostly cached (created_at and
    expires_at written before, last_access this batch's), so the columns
    ``put_lines`` builds to format each distinct stamp once cost more than
    they save here."""
    raw, stamp = msgspec.Raw, _iso
    bodies = [
        _encode(_ActiveLine(
            r.id, r.user, ACTIVE, r.ttl, raw(r.meta_json), created := stamp(r.created_at),
            created if r.last_access == r.created_at else _format(r.last_access),
            stamp(r.expires_at), r.version,
        ))
        if r.expired_at is None and r.imported_at is None
        else _encode(to_line(r))
        for r in records
    ]
    return _sealed(bodies)


def _with_imported(
    records: Sequence[Record], imported: list[int | None]
) -> bytes:
    """``put_lines`` where some records carry ``imported_at`` (rare: after an
    import of expired sessions): theirs one at a time, the rest in bulk."""
    rest = put_lines([r for r, at in zip(records, imported, strict=True) if at is None])
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
    delta = dt - EPOCH
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
        body = line[:-CRC_TAIL] + b"}"
        if len(line) <= CRC_TAIL or f"{zlib.crc32(body):08x}" != rec.crc:
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


def line_id(raw: bytes) -> str | None:
    """Best effort: the id a damaged line was about, for repair reports."""
    m = _ID_IN_LINE.search(raw)
    return m.group(1).decode() if m else None
