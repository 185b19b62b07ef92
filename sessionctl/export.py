"""``sessionctl export`` and the shim's legacy ``export``: page through the
daemon and stream the sessions out, so a million sessions never become one
frame or one string in memory. ``--output`` writes the file atomically,
through ``sessiond.diskio``."""

from __future__ import annotations

import csv
import errno
import io
from pathlib import Path
from typing import IO, TextIO

from sessionctl import render
from sessionctl.client import Client
from sessionctl.results import Session
from sessiond import model
from sessiond.diskio import AtomicFile
from sessiond.records import plain_line

_FLUSH_ROWS = 1000


def write_sessions(c: Client, fmt: str, f: IO[bytes]) -> int:
    """Every session, a page at a time, as ``json``, ``jsonl`` or ``csv``;
    returns how many were written."""
    count = 0
    if fmt == "csv":
        text = io.StringIO()
        rows = csv.writer(text, lineterminator="\n")
        rows.writerow(render.CSV_FIELDS)
        for s in c.iter_sessions():
            rows.writerow(render.csv_row(s))
            count += 1
            if count % _FLUSH_ROWS == 0:
                f.write(text.getvalue().encode())
                text.seek(0)
                text.truncate()
        f.write(text.getvalue().encode())
    elif fmt == "jsonl":
        for s in c.iter_sessions():
            f.write(plain_line(_as_held(s)))
            count += 1
    else:
        f.write(b"[")
        for s in c.iter_sessions():
            f.write((b",\n  " if count else b"\n  ") + plain_line(_as_held(s)).rstrip(b"\n"))
            count += 1
        f.write(b"\n]\n" if count else b"]\n")
    f.flush()
    return count


def _as_held(s: Session) -> model.Session:
    """A session as the client reads it (its stamps datetimes) in the form
    the journal's record writer takes (microseconds)."""
    return model.Session(
        id=s.id, user=s.user, status=s.status, ttl=s.ttl, meta=s.meta,
        created_at=s.created_at_us, last_access=s.last_access_us,
        expires_at=s.expires_at_us, expired_at=s.expired_at_us, version=s.version,
    )


def write_legacy(c: Client, fmt: str, out: TextIO) -> int:
    """Every session, a page at a time, as the legacy tool exported them
    (``json`` or ``csv``): text identical to ``json.dumps(records,
    indent=2)`` (or its CSV), built record by record; returns how many."""
    import json

    count = 0
    if fmt == "csv":
        rows = csv.writer(out, lineterminator="\n")
        rows.writerow(render.CSV_FIELDS)
        for s in c.iter_sessions():
            rows.writerow(render.csv_row(s))
            count += 1
        return count
    for s in c.iter_sessions():
        # Nested one level inside the array: every line of the record moves
        # right by two (JSON strings hold no raw newline to disturb).
        text = json.dumps(render.legacy_record(s), indent=2).replace("\n", "\n  ")
        out.write(("[\n  " if count == 0 else ",\n  ") + text)
        count += 1
    out.write("\n]\n" if count else "[]\n")
    return count


def open_output(path: Path) -> AtomicFile:
    """The temp file that ``commit`` renames over ``path`` (see
    ``sessiond.diskio``): readers of ``path`` see the old file or the whole
    new one, never a part, and the export is 0600, as private as the daemon
    keeps what it holds, until its owner says otherwise. Raises ``OSError``."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    return AtomicFile(path)
