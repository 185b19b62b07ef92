"""Reading sessions from files: the legacy ``data.jsonl``, JSON exports
(an array of records) and JSONL exports or journals (detected).

Used by ``sessionctl import`` and by the daemon's one-time migration. An
unreadable line is reported with its number, never dropped in silence. A
record that reads but that no request could carry (an integer beyond
msgpack's, such as a version of 2**64) is refused here, by id and with its
reason; whether the others are acceptable is for the daemon's rules to say.

A file is read a chunk at a time (``sessiond.streams``), never whole: what
its reading holds is the sessions read so far, all of them until the end
(the last record of an id is taken in the place of its first, which only
the end of the file tells), and a record longer than ``RECORD_TEXT_MAX`` is
read past, never held, and reported as unreadable with its line or index.
Its format is told by its first ``streams.HEAD`` bytes.
"""

from __future__ import annotations

import errno
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec

from sessiond import streams
from sessiond.config import read_json_object
from sessiond.errors import ConfigError
from sessiond.limits import MAX_VERSION, RECORD_TEXT_MAX
from sessiond.model import Session
from sessiond.records import LineError, decode_line

LEGACY_DIR = ".session"
CSV_HEADER = b"id,user,status,ttl,"


@dataclass
class Loaded:
    sessions: list[Session] = field(default_factory=list)
    # Lines that could not be read at all.
    problems: list[str] = field(default_factory=list)
    # Records read but refused before they reach the daemon, as "id: why":
    # skipped, as the daemon skips those its rules refuse.
    refused: list[str] = field(default_factory=list)
    format: str = "jsonl"
    # Records whose id an earlier one (not deleted since) already had: each
    # took the place of that one (see ``_apply``).
    repeated: int = 0
    # Sessions kept with no user (empty or missing), which the rules give
    # the legacy tool's default user: counted here once for every reader
    # (the migration's log, ``sessionctl import``).
    without_user: int = 0

    def keep(self, found: dict[str, Session]) -> None:
        """The last record of each id, unless no request can carry it."""
        for session in found.values():
            why = _unsendable(session)
            if why is None:
                self.sessions.append(session)
                self.without_user += not session.user
            else:
                self.refused.append(f"{session.id}: {why}")


# msgpack's integers, which carry a request's.
_WIRE_MIN, _WIRE_MAX = -(2**63), 2**64 - 1
_wire = msgspec.msgpack.Encoder()


def _unsendable(session: Session) -> str | None:
    """Why ``session`` cannot be sent to the daemon, or ``None``."""
    for name in ("version", "ttl"):
        value = getattr(session, name)
        if not _WIRE_MIN <= value <= _WIRE_MAX:
            return f"{name} {value} is out of range" + (
                f" (1 to {MAX_VERSION})" if name == "version" else ""
            )
    if not session.meta:
        return None
    try:
        _wire.encode(session.meta)
    except OverflowError:
        return f"its meta holds an integer outside {_WIRE_MIN} to {_WIRE_MAX}"
    except (RecursionError, msgspec.EncodeError) as exc:
        return f"its meta cannot be sent: {exc or type(exc).__name__}"
    return None


def legacy_dir() -> Path:
    return Path.home() / LEGACY_DIR


def read_sessions(path: Path) -> Loaded:
    """Every session in ``path`` (last record for an id wins, in the place
    of its first; delete lines remove), and a description of each line that
    could not be read. The file is read a chunk at a time and never held
    whole: what stays is its sessions, and a record longer than
    ``RECORD_TEXT_MAX`` bytes is read past and reported, never held.
    Raises ``OSError`` (see ``_open``)."""
    with _open(path) as f:
        try:
            return _read(path, f)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc


def _read(path: Path, f: BinaryIO) -> Loaded:
    head, ended = streams.fill(f, b"", streams.HEAD)
    # Editors on some systems save UTF-8 with a byte-order mark.
    head = head.removeprefix(b"\xef\xbb\xbf")
    start = streams.first_byte(head)
    lead = head[start:start + 1]
    if lead == b"[":
        return _read_array(path, f, head, start)
    loaded = Loaded(format="jsonl")
    if lead == b"{":
        shape, head = _lone_object(f, head, start, ended)
        if shape is not None:
            loaded.format = "json"
            loaded.problems.append(f"{path}: {shape}")
            return loaded
    if head.startswith(CSV_HEADER):
        loaded.format = "csv"
        loaded.problems.append(
            f"{path}: a CSV export cannot be imported (it has no meta and no "
            f"expired_at); export as json or jsonl instead"
        )
        return loaded
    found: dict[str, Session] = {}
    for first, batch in streams.lines(f, head):
        for lineno, raw in enumerate(batch, first):
            if raw is None:
                loaded.problems.append(f"{path}: line {lineno}: {_TOO_LONG}")
                continue
            if not raw.strip():
                continue
            try:
                loaded.repeated += _apply(found, decode_line(raw))
            except LineError as exc:
                loaded.problems.append(f"{path}: line {lineno}: {exc}")
    loaded.keep(found)
    return loaded


_TOO_LONG = (f"longer than {RECORD_TEXT_MAX} bytes, more than any session the daemon "
             f"accepts: skipped unread")


@contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading: a regular file, or a pipe (``/dev/stdin``,
    ``<(...)``), which is read until its writer closes it. Raises
    ``OSError`` for what cannot be read, a device among them: ``/dev/zero``
    or ``/dev/urandom`` would be read for ever, a terminal until Ctrl-D."""
    try:
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory, not a file")
            kind = ("a character device" if stat.S_ISCHR(mode) else
                    "a block device" if stat.S_ISBLK(mode) else
                    "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise OSError(errno.EINVAL, f"is {kind}, not a file")
        f = path.open("rb")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
    with f:
        yield f


# A second line with something on it.
_LINE_AFTER = re.compile(rb"\n[ \t\r\n]*[^ \t\r\n]")


def _lone_object(f: BinaryIO, head: bytes, start: int, ended: bool) -> tuple[str | None, bytes]:
    """What is wrong with a file that is one JSON object and no record a
    line (``{"sessions": [...]}``, or a record spread over lines): said
    once, where reading it as JSONL would call each of its lines
    unreadable for reasons that mislead. ``None`` for anything else, and
    an object longer than ``RECORD_TEXT_MAX`` (its lines say what is
    wrong). Returns ``head`` with what was read to tell, for the lines."""
    while True:
        whole = streams.one_value(head, start)
        if whole is False:
            return None, head  # not one JSON document: JSONL, or damage its lines show
        # Whole so far, or cut short: more of the file tells.
        if ended or len(head) - start > RECORD_TEXT_MAX:
            if not whole:
                return None, head
            break
        head, ended = streams.fill(f, head, len(head) + streams.CHUNK)
    value = msgspec.json.decode(head[start:])
    if not isinstance(value, dict):
        return None, head
    if "type" in value and _LINE_AFTER.search(head) is None:
        return None, head  # JSONL of one record
    keys = ", ".join(repr(k) for k in list(value)[:5]) or "no keys"
    return (f"holds one JSON object ({keys}), not an export: a JSON export is an array "
            f"of records, a JSONL export or data.jsonl one record a line"), head


def _read_array(path: Path, f: BinaryIO, head: bytes, start: int) -> Loaded:
    """A JSON export, an element at a time. A document that is not JSON is
    one unreadable record and nothing is imported, as when it was read
    whole; an element past ``RECORD_TEXT_MAX`` is skipped, as a line is."""
    loaded = Loaded(format="json")
    found: dict[str, Session] = {}
    problems: list[str] = []
    try:
        for index, raw in enumerate(streams.ArrayReader(f, head, start).elements()):
            if raw is None:
                problems.append(f"{path}: record {index}: {_TOO_LONG}")
                continue
            item = msgspec.json.decode(raw)
            if isinstance(item, dict):
                item.setdefault("type", "session")
            try:
                loaded.repeated += _apply(found, decode_line(msgspec.json.encode(item)))
            except LineError as exc:
                problems.append(f"{path}: record {index}: {exc}")
    except (streams.Malformed, msgspec.DecodeError) as exc:
        loaded.problems.append(f"{path}: not a valid JSON export: {exc}")
        loaded.repeated = 0
        return loaded
    except RecursionError:
        loaded.problems.append(f"{path}: not a valid JSON export: nested too deeply")
        loaded.repeated = 0
        return loaded
    loaded.problems = problems
    loaded.keep(found)
    return loaded


def _apply(found: dict[str, Session], item: Session | str) -> bool:
    """Apply one record (or delete, an id) of a file, as the daemon replays
    its journal: a record whose id is there already replaces it in its
    place, a delete removes it, a record after its delete comes last.

    So a legacy file with an id on two lines (a hand edit, files joined)
    gives the last line's record in the first line's place, as reading its
    lines into a mapping by id does (a Python dict, or jq's object); the
    first line's place is the session's creation, which the later line
    rewrote. Returns whether ``item`` replaced a record."""
    if isinstance(item, str):
        found.pop(item, None)
        return False
    repeated = item.id in found
    found[item.id] = item
    return repeated


def legacy_default_ttl(directory: Path) -> int | None:
    """``default_ttl`` from the legacy ``config.json``; ``None`` when there is
    no such file or it sets none. Raises ``ValueError`` saying why a file
    that is there cannot be used."""
    path = directory / "config.json"
    try:
        data = read_json_object(path)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    if data is None:
        return None
    ttl = data.get("default_ttl")
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise ValueError(f"{path}: default_ttl must be a positive whole number, not {ttl!r}")
    return ttl
