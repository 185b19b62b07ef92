"""The JSON line format shared by the journal, exports and legacy files.

A put line is the whole session in the legacy record shape; a delete line is
``{"type":"delete","id":…}``. Lines the daemon writes end with a CRC-32 of
the line without that field, ``,"crc":"8 hex digits"}``, so a damaged line
can be told from a torn one; lines without it (legacy files, exports) are
accepted. Nothing here does I/O or imports anyio: the CLI uses it to import.
"""

from __future__ import annotations

import re
import zlib
from datetime import datetime, timezone
from typing import Any

import msgspec

from sessiond.model import DEFAULT_USER, Session, iso

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_CRC_TAIL = len(b',"crc":"00000000"}')
_ID_IN_LINE = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9._-]{1,128})"')


class LineError(ValueError):
    """A line that cannot be read: bad JSON, wrong shape or wrong checksum.

    ``complete`` is false only when the bytes are not even JSON: that is what
    a write cut short by a crash leaves, so only such a line may be taken for
    a torn tail. A line that parses but is wrong was written whole and then
    damaged."""

    def __init__(self, message: str, *, complete: bool = True) -> None:
        super().__init__(message)
        self.complete = complete


class PutLine(msgspec.Struct, tag_field="type", tag="session", kw_only=True, omit_defaults=True):
    id: str
    user: str
    status: str
    ttl: int
    meta: dict[str, Any]
    created_at: str
    last_access: str
    expires_at: str
    expired_at: str | None = None
    version: int


class DeleteLine(msgspec.Struct, tag_field="type", tag="delete"):
    id: str


class _ReadPut(msgspec.Struct, tag_field="type", tag="session", kw_only=True):
    # Lenient: legacy files may lack fields we add, and carry ones we don't.
    id: str
    user: str = DEFAULT_USER
    status: str = "active"
    ttl: int = 3600
    meta: dict[str, Any] = {}
    created_at: datetime
    last_access: datetime | None = None
    expires_at: datetime | None = None
    expired_at: datetime | None = None
    version: int = 1
    crc: str | None = None


class _ReadDelete(msgspec.Struct, tag_field="type", tag="delete", kw_only=True):
    id: str
    crc: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_ReadPut | _ReadDelete)


def to_line(session: Session) -> PutLine:
    """The legacy record shape of a session (for exports and the journal)."""
    return PutLine(
        id=session.id,
        user=session.user,
        status=session.status,
        ttl=session.ttl,
        meta=session.meta,
        created_at=iso(session.created_at),
        last_access=iso(session.last_access),
        expires_at=iso(session.expires_at),
        expired_at=None if session.expired_at is None else iso(session.expired_at),
        version=session.version,
    )


def _seal(body: bytes) -> bytes:
    return b'%s,"crc":"%08x"}\n' % (body[:-1], zlib.crc32(body))


def put_line(session: Session) -> bytes:
    """A checksummed journal line for a session, newline included."""
    return _seal(_encoder.encode(to_line(session)))


def delete_line(sid: str) -> bytes:
    """A checksummed journal line that removes a session."""
    return _seal(_encoder.encode(DeleteLine(sid)))


def plain_line(session: Session) -> bytes:
    """An export line: the legacy record shape, no checksum."""
    return _encoder.encode(to_line(session)) + b"\n"


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
        raise LineError(f"not a valid record: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise LineError(f"not valid JSON: {exc}", complete=False) from exc
    if rec.crc is not None:
        body = line[:-_CRC_TAIL] + b"}"
        if len(line) <= _CRC_TAIL or f"{zlib.crc32(body):08x}" != rec.crc:
            raise LineError("checksum mismatch")
    if isinstance(rec, _ReadDelete):
        return rec.id
    created = _us(rec.created_at)
    last = created if rec.last_access is None else _us(rec.last_access)
    expires = last + rec.ttl * 1_000_000 if rec.expires_at is None else _us(rec.expires_at)
    return Session(
        id=rec.id,
        user=rec.user,
        status=rec.status,
        ttl=rec.ttl,
        meta=rec.meta,
        created_at=created,
        last_access=last,
        expires_at=expires,
        expired_at=None if rec.expired_at is None else _us(rec.expired_at),
        version=rec.version,
    )


def line_id(raw: bytes) -> str | None:
    """Best effort: the id a damaged line was about, for repair reports."""
    m = _ID_IN_LINE.search(raw)
    return m.group(1).decode() if m else None
