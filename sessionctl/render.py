"""Output: aligned fields and tables for people, JSON and CSV for programs."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from typing import Any, TextIO

import msgspec

from sessionctl.results import Session
from sessiond.model import EXPIRED, US, format_duration, iso
from sessiond.protocol import StatsInfo

CSV_FIELDS = ("id", "user", "status", "ttl", "created_at", "last_access", "expires_at")

_json = msgspec.json.Encoder()

# What must not reach a terminal raw: C0 controls and DEL (a newline breaks
# a table row, ESC starts a sequence that can clear or recolour the screen),
# C1 controls (U+0080-U+009F; CSI and OSC among them) and the bidi and
# format marks that reorder what follows them (U+202E shows "txt.exe" as
# "exe.txt"). And backslash, written as two: then every backslash in the
# output starts an escape, and no value can pass for an escaped one.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v",
          "\f": "\\f", "\r": "\\r", "\\": "\\\\"}


def _escaped(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` safe to print to a terminal, C-style as systemctl and ls do
    (``\\n``, ``\\t``, ``\\x1b``, ``\\u202e``, ``\\\\``): for every human
    field that shows what a session holds. ``--json`` needs none of it."""
    # Nearly every string is printable: one pass in C decides.
    if text.isprintable():
        return text if "\\" not in text else text.replace("\\", "\\\\")
    return _UNSAFE.sub(_escaped, text)


def escape_message(text: str) -> str:
    """A message for people that may quote a value: its controls escaped as
    ``escape`` does, so that it stays one line and cannot drive the
    terminal, but its backslashes kept (a message quotes values with repr,
    whose escapes are meant to be read as such)."""
    if text.isprintable():
        return text
    return _UNSAFE.sub(lambda m: m.group() if m.group() == "\\" else _escaped(m), text)


def session_dict(s: Session) -> dict[str, Any]:
    """The ``--json`` shape of a session."""
    return {
        "id": s.id,
        "user": s.user,
        "status": s.status,
        "ttl": s.ttl,
        "meta": s.meta,
        "created_at": iso(s.created_at_us),
        "last_access": iso(s.last_access_us),
        "expires_at": iso(s.expires_at_us),
        "expired_at": None if s.expired_at_us is None else iso(s.expired_at_us),
        "version": s.version,
    }


def legacy_record(s: Session) -> dict[str, Any]:
    """The legacy tool's record, as the shim prints it: ``--json``'s shape
    with ``type`` first, no ``version``, and ``expired_at`` only once expired."""
    rec = {"type": "session", **session_dict(s)}
    del rec["version"]
    if rec["expired_at"] is None:
        del rec["expired_at"]
    return rec


def csv_row(s: Session) -> tuple[str, str, str, int, str, str, str]:
    """A session as a CSV row under ``CSV_FIELDS``."""
    return (s.id, s.user, s.status, s.ttl, iso(s.created_at_us), iso(s.last_access_us),
            iso(s.expires_at_us))


def to_json(value: Any, indent: int = 2) -> str:
    return msgspec.json.format(_json.encode(value), indent=indent).decode()


def write_json_array(out: TextIO, items: Iterable[Any]) -> None:
    """The same text as ``to_json(list(items))``, written an item at a time."""
    first = True
    out.write("[")
    for item in items:
        # Newlines inside JSON strings are escaped, so every "\n" here is
        # layout and can take the array's extra indent.
        out.write(("\n  " if first else ",\n  ") + to_json(item).replace("\n", "\n  "))
        first = False
    out.write("]\n" if first else "\n]\n")


def relative(us: int, now: int) -> str:
    delta = (us - now) / US
    return f"in {format_duration(delta)}" if delta >= 0 else f"{format_duration(delta)} ago"


def time_left(s: Session, now: int) -> str:
    if s.status == EXPIRED:
        when = s.expired_at_us if s.expired_at_us is not None else s.expires_at_us
        return f"expired {relative(when, now)}"
    if s.expires_at_us <= now:
        return f"expired {relative(s.expires_at_us, now)}"
    return f"expires {relative(s.expires_at_us, now)}"


def width(text: str) -> int:
    """The columns ``text`` takes on a terminal: two for a wide character
    (CJK, most emoji), none for a combining mark or a zero-width one, one
    for the rest; as wcwidth(3) counts, near enough to align tables."""
    if text.isascii():
        return len(text)
    import unicodedata

    columns = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Me", "Mn", "Cf"):
            continue
        columns += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return columns


def _pad(text: str, columns: int) -> str:
    return text + " " * (columns - width(text))


# -- fitting a terminal --------------------------------------------------------
#
# As systemctl and loginctl do: on a terminal, output for people is fitted to
# its width by cutting the widest free-text column short with an ellipsis,
# so that a long value does not wrap every row; ``-l``/``--full`` shows
# everything, and so does any output that is not a terminal (a pipe, a file,
# ``--json``), where a cut value would be lost to whoever reads it.

# A free-text column is never cut narrower than this, nor than its header.
MIN_FITTED = 8


def screen_columns(full: bool) -> int | None:
    """The width to fit output for people to: ``$COLUMNS`` or the
    terminal's, when stdout is a terminal and ``full`` (``-l``/``--full``)
    is not asked; ``None`` (show everything) otherwise."""
    if full:
        return None
    try:
        fd = sys.stdout.fileno()
        if not os.isatty(fd):
            return None
        # systemd's rule: $COLUMNS, when it is a number, wins.
        wanted = os.environ.get("COLUMNS", "")
        if wanted.isascii() and wanted.isdigit() and int(wanted) > 0:
            return int(wanted)
        # A terminal that does not know its size says 0: nothing to fit to.
        return os.get_terminal_size(fd).columns or None
    except (OSError, ValueError):  # no stdout file, or no size to be had
        return None


def ellipsis() -> str:
    """An ellipsis, or three dots where stdout cannot encode one (an ASCII
    locale)."""
    try:
        "\u2026".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "..."
    return "\u2026"


def clip(text: str, columns: int) -> str:
    """``text`` cut to ``columns`` terminal columns, ending in an ellipsis
    where it was cut (wide characters counted as ``width`` counts them)."""
    if width(text) <= columns:
        return text
    mark = ellipsis()
    room = max(columns - len(mark), 0)
    if text.isascii():
        return text[:room] + mark
    used = 0
    kept: list[str] = []
    for ch in text:
        used += width(ch)
        if used > room:
            break
        kept.append(ch)
    return "".join(kept) + mark


def _fitted(widths: list[int], floors: list[int], free: Sequence[int], excess: int) -> list[int]:
    """``widths`` with the ``free`` columns narrowed by ``excess`` columns in
    all, the widest first (ties shared), none below its floor: as much of
    the excess as they can give."""
    widths = list(widths)
    while excess > 0:
        open_ = [i for i in free if widths[i] > floors[i]]
        if not open_:
            break
        top = max(widths[i] for i in open_)
        tied = [i for i in open_ if widths[i] == top]
        # The tied columns go down together to the next widest or their floor.
        below = max([widths[i] for i in open_ if widths[i] < top]
                    + [max(floors[i] for i in tied)])
        cut = min(excess, (top - below) * len(tied))
        each, extra = divmod(cut, len(tied))
        for n, i in enumerate(tied):
            widths[i] -= each + (1 if n < extra else 0)
        excess -= cut
    return widths


def fields(rows: Iterable[tuple[str, Any]], columns: int | None = None,
           whole: Collection[str] = ()) -> str:
    """``key   value`` lines with the values aligned, both escaped (so a
    caller passes them raw, and escaping happens once); with ``columns``
    (``screen_columns``), lines wider than that are fitted to it: each
    value cut to fit, but those of the keys in ``whole`` (an id), and the
    keys (a meta key may be 256 characters) to a third of it at most."""
    raw = [(str(k), escape(str(k)), escape(str(v))) for k, v in rows]
    keys = max((width(k) for _, k, _ in raw), default=0)
    values = max((width(v) for name, _, v in raw if name not in whole), default=0)
    if columns is not None and keys + 2 + values > columns:
        keys = min(keys, max(columns // 3, MIN_FITTED))
        room = max(columns - keys - 2, MIN_FITTED)
        raw = [(name, clip(k, keys), v if name in whole else clip(v, room))
               for name, k, v in raw]
    return "\n".join(f"{_pad(k, keys)}  {v}" for _, k, v in raw)


def meta_text(value: Any) -> str:
    return value if isinstance(value, str) else _json.encode(value).decode()


def ttl_text(ttl: int) -> str:
    """``3600s (1h)``; ``5s`` alone, where the words would say it again."""
    words = format_duration(ttl)
    return f"{ttl}s" if words == f"{ttl}s" else f"{ttl}s ({words})"


def session_fields(s: Session, now: int, columns: int | None = None) -> str:
    rows: list[tuple[str, Any]] = [
        ("id", s.id),
        ("user", s.user),
        ("status", f"{s.status} ({time_left(s, now)})"),
        ("ttl", ttl_text(s.ttl)),
        ("created", f"{iso(s.created_at_us)} ({relative(s.created_at_us, now)})"),
        ("last access", f"{iso(s.last_access_us)} ({relative(s.last_access_us, now)})"),
        ("expires", iso(s.expires_at_us)),
    ]
    if s.expired_at_us is not None:
        rows.append(("expired", iso(s.expired_at_us)))
    rows.append(("version", s.version))
    rows.extend((f"meta.{k}", meta_text(v)) for k, v in s.meta.items())
    return fields(rows, columns, whole=("id",))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], columns: int | None = None,
          free: Sequence[int] = ()) -> str:
    """Aligned columns, every cell escaped (a newline in a value must not
    start a row of its own). With ``columns`` (``screen_columns``), rows
    wider than that are fitted to it by cutting the ``free`` columns (by
    index: free text, never an id) short, the widest first."""
    lines = [[escape(cell) for cell in line] for line in (header, *rows)]
    widths = [max(width(line[i]) for line in lines) for i in range(len(header))]
    if columns is not None and free:
        excess = sum(widths) + 2 * (len(widths) - 1) - columns
        if excess > 0:
            floors = [max(width(cell), MIN_FITTED) for cell in lines[0]]
            widths = _fitted(widths, floors, free, excess)
            lines = [[clip(cell, widths[i]) if i in free else cell
                      for i, cell in enumerate(line)] for line in lines]
    return "\n".join(
        "  ".join(_pad(cell, widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    )


def session_table(sessions: list[Session], now: int, *, more: bool = False,
                  columns: int | None = None) -> str:
    """The table and its count line, which says when ``--limit`` left out
    sessions that match."""
    rows = [
        (
            s.id,
            s.user,
            s.status,
            f"{s.ttl}s",
            time_left(s, now),
            ", ".join(f"{k}={meta_text(v)}" for k, v in s.meta.items()),
        )
        for s in sessions
    ]
    count = f"{len(sessions)} session{'s' if len(sessions) != 1 else ''}"
    if more:
        count += " shown; more match (raise --limit to see them)"
    if not rows:
        return count
    # USER and META are free text (a user may be 256 characters, meta 64 KiB).
    shown = table(("ID", "USER", "STATUS", "TTL", "DEADLINE", "META"), rows, columns, (1, 5))
    return f"{shown}\n\n{count}"


def config_table(data: dict[str, Any], sources: dict[str, str],
                 columns: int | None = None) -> str:
    """Settings with where each came from (default, file, env, flag)."""
    if not sources:  # a daemon too old to say
        return fields(((k, meta_text(v)) for k, v in data.items()), columns)
    rows = [(k, meta_text(v), sources.get(k, "?")) for k, v in data.items()]
    return table(("KEY", "VALUE", "SOURCE"), rows, columns, (1,))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def stats_fields(st: StatsInfo, now: int, columns: int | None = None) -> str:
    """``stats`` for people: durations, sizes and times in words, "never"
    or "no" where the daemon says null."""
    lag = f"max {st.expiry_lag_max_ms:g} ms, p99 {st.expiry_lag_p99_ms:g} ms"
    if st.last_compaction_at is None:
        compacted = "never"
    else:
        took = st.last_compaction_seconds
        compacted = f"{iso(st.last_compaction_at)} ({relative(st.last_compaction_at, now)}" + (
            f", took {took:.3f}s)" if took is not None else ")"
        )
    rows: list[tuple[str, Any]] = [
        ("total sessions", st.total_sessions),
        ("active", st.active),
        ("expired", st.expired),
        ("unique users", st.unique_users),
        ("average ttl", f"{st.average_ttl_seconds:g}s"),
        ("due next minute", st.due_next_minute),
        ("expiries done", st.expiries_done),
        ("purges done", st.purges_done),
        ("expiry lag", lag),
        ("pid", st.pid),
        ("version", st.version),
        ("uptime", format_duration(st.uptime_seconds)),
        ("event loop", st.event_loop),
        ("connections", st.connections),
        ("watchers", st.watchers),
        ("journal", st.journal_path),
        ("journal size", human_bytes(st.journal_bytes)),
        ("fsync", f"{st.fsync} ({st.config_sources['fsync']})"
         if "fsync" in st.config_sources else st.fsync),
        ("compacted size", human_bytes(st.compacted_bytes)),
        ("last compaction", compacted),
        ("compactions", st.compactions),
        ("write errors", st.write_errors),
        ("read only", "no" if st.read_only is None else f"yes: {st.read_only}"),
    ]
    if st.read_only is not None:
        rows.append(("compaction needs", f"{human_bytes(st.compaction_needs_bytes)} free"))
    if st.backend is not None:
        # Shared mode: the engine's health (the counts above are zeros
        # while it is away) and whether this daemon runs the expiries.
        rows.append(("backend", st.backend))
        rows.append(("backend health", "ok" if st.backend_ok else
                     f"unreachable: {st.backend_error or 'no reason given'}"))
        rows.append(("expiry lease", "held here" if st.expiry_lease else
                     "held by another daemon" if st.backend_ok else "not held here"))
    return fields(rows, columns)
