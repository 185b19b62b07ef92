"""``sessionctl export``: page through the daemon and stream the sessions out,
so a million sessions never become one frame or one string in memory.
``--output`` writes a temp file beside the target and renames it into place."""

from __future__ import annotations

import csv
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import IO

from sessionctl import render
from sessionctl.client import Client
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


class Output:
    """A temp file beside ``path``, renamed over it by ``commit``: readers of
    ``path`` see the old file or the whole new one, never a part."""

    def __init__(self, path: Path, tmp: Path, file: IO[bytes]) -> None:
        self.path = path
        self.tmp = tmp
        self.file = file
        self._done = False

    @classmethod
    def open(cls, path: Path) -> Output:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
        # mkstemp makes the file 0600: an export holds what the daemon keeps
        # private, so it stays private until its owner says otherwise.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        return cls(path, Path(tmp), os.fdopen(fd, "wb"))

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        self._done = True
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def discard(self) -> None:
        """Remove the temp file unless it was committed."""
        if not self._done:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
            self._done = True
