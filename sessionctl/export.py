"""``sessionctl export``: page through the daemon and stream the sessions out,
so a million sessions never become one frame or one string in memory.
``--output`` writes a temp file beside the target and renames it into place."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from sessiond.records import plain_line
from sessionctl import render
from sessionctl.client import Client


def _write(c: Client, fmt: str, f: IO[bytes]) -> int:
    count = 0
    if fmt == "csv":
        f.write((",".join(render.CSV_FIELDS) + "\n").encode())
    elif fmt == "json":
        f.write(b"[")
    for s in c.iter_sessions():
        line = plain_line(s)
        if fmt == "jsonl":
            f.write(line)
        elif fmt == "json":
            f.write((b",\n  " if count else b"\n  ") + line.rstrip(b"\n"))
        else:
            f.write(render.csv_row(s).encode())
        count += 1
    if fmt == "json":
        f.write(b"\n]\n" if count else b"]\n")
    return count


def export(c: Client, fmt: str, output: str | None) -> tuple[int, str]:
    """Write every session; returns the count and where it went."""
    if output is None:
        count = _write(c, fmt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return count, "-"
    target = Path(output)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            count = _write(c, fmt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count, str(target)
