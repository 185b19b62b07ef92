"""``sessionctl export``: page through the daemon and stream the sessions out,
so a million sessions never become one frame or one string in memory.
``--output`` writes the file atomically, through ``sessiond.diskio``."""

from __future__ import annotations

import csv
import errno
import io
from pathlib import Path
from typing import IO

from sessionctl import render
from sessionctl.client import Client
from sessiond.diskio import AtomicFile
from sessiond.model import iso
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
            rows.writerow(
                (s.id, s.user, s.status, s.ttl, iso(s.created_at), iso(s.last_access),
                 iso(s.expires_at))
            )
            count += 1
            if count % _FLUSH_ROWS == 0:
                f.write(text.getvalue().encode())
                text.seek(0)
                text.truncate()
        f.write(text.getvalue().encode())
    elif fmt == "jsonl":
        for s in c.iter_sessions():
            f.write(plain_line(s))
            count += 1
    else:
        f.write(b"[")
        for s in c.iter_sessions():
            f.write((b",\n  " if count else b"\n  ") + plain_line(s).rstrip(b"\n"))
            count += 1
        f.write(b"\n]\n" if count else b"]\n")
    f.flush()
    return count


def open_output(path: Path) -> AtomicFile:
    """The temp file that ``commit`` renames over ``path`` (see
    ``sessiond.diskio``): readers of ``path`` see the old file or the whole
    new one, never a part, and the export is 0600, as private as the daemon
    keeps what it holds, until its owner says otherwise. Raises ``OSError``."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    return AtomicFile(path)
