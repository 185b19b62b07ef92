"""Times and durations typed by people, to microseconds and seconds: the
one reader of time input, for ``sessionctl`` and the shim.

Moments (``cleanup --before``) accepted: ISO 8601 calendar dates and
date-times, extended (``2026-12-01T09:30:00.5+01:00``) or basic
(``20261201T093000Z``), with ``Z`` or an offset, no zone meaning UTC, a date
alone meaning its midnight; ``@SECONDS`` for Unix time; ``now``; and a
duration before or after now (``-7d``, ``+1h``). Nothing else: a reader
that guesses turns ``20261201`` into a moment in 1970, so every other text
is refused with the list of the forms above.

Durations (``--ttl``, the settings counted in seconds): whole seconds
(``90``) or numbers with units, largest first (``90m``, ``1h30m``, ``7d``),
as systemd and Go write them; ``parse_duration`` is their one reader.

Written out rather than left to ``datetime.fromisoformat``, which reads
basic forms only from Python 3.11 on, and week dates there too: the same
text must mean the same moment on every Python the project supports.
Imported only by the commands that read a time or a duration with a unit.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sessiond.limits import TIME_MAX
from sessiond.model import US

UNITS: tuple[tuple[str, int], ...] = (
    ("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1),
)
DURATION_FORMS = (
    "whole seconds (90) or numbers with units, largest first (45s, 90m, 1h30m, 2h, 7d; "
    "units: w d h m s)"
)
FORMS = (
    "ISO 8601 (2026-12-01, 2026-12-01T09:30:00Z, 20261201T093000+0100; "
    "no zone means UTC), @SECONDS for Unix time (@1764547200), now, or a "
    "duration before or after now (-7d: seven days ago; -1h30m, +2h)"
)
LEGACY_FORMS = (
    "ISO 8601 (2026-12-01, 2026-12-01T09:30:00Z, 20261201; no zone means UTC), "
    "Unix seconds (1764547200 or @1764547200), or now"
)

_DATE = r"(?P<y>\d{4})(?:-(?P<m>\d\d)-(?P<d>\d\d)|(?P<bm>\d\d)(?P<bd>\d\d))"
_TIME = (
    r"(?P<h>\d\d)(?:(?::(?P<mi>\d\d)(?::(?P<s>\d\d))?)|(?:(?P<bmi>\d\d)(?P<bs>\d\d)?))?"
    r"(?:[.,](?P<f>\d{1,9}))?"
)
_ZONE = r"(?P<z>[Zz]|(?P<sign>[+-])(?P<zh>\d\d)(?::?(?P<zm>\d\d))?)"
# re.ASCII: \d must not match the digits of other scripts.
_ISO = re.compile(rf"{_DATE}(?:[Tt ]{_TIME}{_ZONE}?)?", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


# More digits than any duration needs: int() of thousands of digits is slow,
# and past 4300 it fails with a message of its own.
_MAX_DIGITS = 18


def parse_duration(text: str) -> int:
    """``text`` in seconds: whole seconds (``90``) or numbers with units,
    largest first, each unit at most once (``90m``, ``1h30m``, ``7d``).
    Raises ``ValueError`` listing the forms. The caller checks the range."""
    total = 0
    i = 0
    units = UNITS
    while True:
        start = i
        while i < len(text) and "0" <= text[i] <= "9":
            i += 1
        if start == i or i - start > _MAX_DIGITS:
            break
        number = int(text[start:i])
        if i == len(text):
            if start == 0:
                return number  # plain seconds
            break  # a number without a unit after one with a unit
        for k, (unit, size) in enumerate(units):
            if text[i] == unit:
                total += number * size
                units = units[k + 1 :]
                i += 1
                break
        else:
            break
        if i == len(text):
            return total
    raise ValueError(f"invalid duration {text!r}: use {DURATION_FORMS}")


def parse_iso(text: str) -> int:
    """An ISO 8601 date or date-time (see the module), in microseconds since
    the epoch. Raises ``ValueError`` saying what is wrong, for people."""
    m = _ISO.fullmatch(text)
    if m is None:
        raise ValueError(f"unparsable timestamp {text!r}; use {FORMS}")
    g = m.groupdict()
    if g["f"] is not None and g["s"] is None and g["bs"] is None:
        # "09:30.5" would be half a minute: too rare to be anything but a slip.
        raise ValueError(f"unparsable timestamp {text!r}: a fraction needs seconds; use {FORMS}")
    try:
        moment = datetime(
            int(g["y"]), int(g["m"] or g["bm"]), int(g["d"] or g["bd"]),
            int(g["h"] or 0), int(g["mi"] or g["bmi"] or 0), int(g["s"] or g["bs"] or 0),
            int((g["f"] or "0")[:6].ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError as exc:  # month 13, February 30, hour 24 ...
        raise ValueError(f"unparsable timestamp {text!r} ({exc}); use {FORMS}") from None
    delta = moment - _EPOCH
    us = (delta.days * 86400 + delta.seconds) * US + delta.microseconds
    if g["sign"] is not None:
        hours, minutes = int(g["zh"]), int(g["zm"] or 0)
        if hours > 23 or minutes > 59:
            raise ValueError(f"unparsable timestamp {text!r}: no such offset; use {FORMS}")
        # In microseconds, not datetimes: 9999-12-31T23:00-01:00 is past
        # what a datetime holds, and is refused as out of range below.
        offset = (hours * 3600 + minutes * 60) * US
        us -= offset if g["sign"] == "+" else -offset
    if not 0 <= us <= TIME_MAX:
        raise ValueError(f"timestamp {text!r} is out of range: before 1970 or after 9999")
    return us


def _unix_seconds(text: str, shown: str) -> int:
    seconds = int(text)
    if seconds > TIME_MAX // US:
        raise ValueError(
            f"timestamp {shown!r} is out of range: Unix seconds go up to {TIME_MAX // US} "
            f"(the end of 9999)"
        )
    return seconds * US


def parse_before(text: str, now: int) -> int:
    """``sessionctl cleanup --before``: ISO 8601, ``@SECONDS`` (ASCII digits),
    ``now`` (which is ``now``, in microseconds), or a duration before or
    after it (``-7d``, ``+1h``). Raises ``ValueError`` listing the accepted
    forms."""
    if text[:1] in ("-", "+") and len(text) > 1:
        try:
            seconds = parse_duration(text[1:])
        except ValueError:
            raise ValueError(
                f"unparsable timestamp {text!r}: after {text[0]} comes a duration, "
                f"{DURATION_FORMS}; use {FORMS}"
            ) from None
        us = now + (seconds if text[0] == "+" else -seconds) * US
        if not 0 <= us <= TIME_MAX:
            raise ValueError(f"timestamp {text!r} is out of range: before 1970 or after 9999")
        return us
    return _absolute(text, now)


def _absolute(text: str, now: int) -> int:
    """What ``parse_before`` reads but durations: the forms the legacy tool
    shares."""
    if text == "now":
        return now
    if text.startswith("@"):
        if not _digits(text[1:]):
            raise ValueError(
                f"unparsable timestamp {text!r}: @ takes whole Unix seconds, in the digits "
                f"0-9; use {FORMS}"
            )
        return _unix_seconds(text[1:], text)
    return parse_iso(text)


def parse_legacy_before(text: str, now: int) -> int:
    """``script.sh cleanup --before``, read as the legacy tool read it (see
    docs/legacy.md): what ``parse_before`` reads (``20261201`` is a date,
    as it was there), and bare ASCII digits that are not eight of them (a
    basic date) as Unix seconds, as earlier releases of the shim took them.
    Raises ``ValueError`` listing the accepted forms."""
    if _digits(text) and len(text) != 8:
        return _unix_seconds(text, text)
    try:
        return _absolute(text, now)
    except ValueError as exc:
        raise ValueError(str(exc).replace(FORMS, LEGACY_FORMS)) from None
