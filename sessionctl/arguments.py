"""The client's refusals of its arguments, in Python's words.

Where the daemon's decoder would answer in msgpack's (``Expected `int |
null`, got `str` - at `$.ttl```), each refusal names the argument and what
it takes (``ttl must be a whole number of seconds from 1 to 3153600000,
not '60'``). The session rules (ids, names, ttls) are ``sessiond.limits``',
which the daemon applies too: the same message either side.

Imported when a check is more than a type test: by an operation whose
argument is not a plain ``str`` or ``int`` (the hot operations test that
themselves, see ``sessionctl.operations``), by the rarer operations, and
on the error paths. ``sessionctl get`` never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sessiond.errors import InvalidRequest
from sessiond.limits import (
    MAX_TIMEOUT,
    MAX_VERSION,
    META_MAX_DEPTH,
    check_id,
    check_key,
    check_ttl,
    check_user,
)
from sessiond.model import STATUSES
from sessiond.protocol import PAGE_MAX, Request, encoder

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What an encode of a request can fail with (a value that is not JSON, an
# integer past 64 bits, nesting past the recursion limit).
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)
_SESSIONS = "Session structs (as Client.list or sessiond.legacy.read_sessions give them)"

sid = check_id
ttl = check_ttl


def flag(name: str, value: object) -> bool:
    if value is True or value is False:
        return value
    raise InvalidRequest(f"{name} must be True or False, not {value!r}")


def text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise InvalidRequest(f"{name} must be a str, not {type(value).__name__} ({value!r})")


def user(value: object, new: bool = True) -> str | None:
    if value is None:
        return None
    name = text("user", value)
    check_user(name, new)
    return name


def key(value: object) -> str:
    name = text("key", value)
    check_key(name)
    return name


def version(value: object) -> int | None:
    if value is None or (type(value) is int and 1 <= value <= MAX_VERSION):
        return value
    raise InvalidRequest(
        f"expect_version must be a session's version (a whole number from 1 to "
        f"{MAX_VERSION}) or None, not {value!r}"
    )


def meta(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"meta must be a dict of str keys to JSON values, not {type(value).__name__}"
        )
    for name, item in value.items():
        text("a meta key", name)
        json_value("meta", item)
    return value


# What JSON holds, as Python's json module writes it (a tuple as an array;
# a subclass as its base: an IntEnum is a number, a StrEnum a string), a
# float too if it is finite.
_SCALARS = (str, int, type(None))


def json_value(name: str, value: object, depth: int = 1) -> None:
    """Refused unless ``value`` is JSON. msgspec would send a set, a
    date, a UUID, a Decimal, an Enum or a dataclass as some other JSON
    value (an array, a string, an object), and the caller would read back
    something else than what it wrote; Python's json module refuses them
    too. Nested past the daemon's depth, it is refused in the daemon's
    words (and a value that holds itself is, rather than recursed into)."""
    if depth > META_MAX_DEPTH:
        raise InvalidRequest(f"meta value nested deeper than {META_MAX_DEPTH} levels")
    if isinstance(value, float):
        if value - value != 0.0:  # inf or nan: no JSON number
            raise InvalidRequest("meta values must be finite numbers")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            json_value(name, item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest(
                    f"{name} cannot be sent: an object key of type {type(key).__name__} is "
                    f"not JSON; object keys are str"
                )
            json_value(name, item, depth + 1)
        return
    raise InvalidRequest(
        f"{name} cannot be sent: a value of type {type(value).__name__} is not JSON; "
        f"use str, int, float, bool, None, list and dict"
    )


def returning(value: object) -> str:
    if isinstance(value, str) and value in ("session", "ack"):
        return value
    raise InvalidRequest(f"returning must be 'session', 'ack' or None, not {value!r}")


def status(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value in STATUSES:
        return value
    raise InvalidRequest(f"status must be 'active', 'expired' or None, not {value!r}")


def limit(name: str, value: object) -> int:
    if type(value) is int and 1 <= value <= PAGE_MAX:
        return value
    raise InvalidRequest(f"{name} must be a whole number from 1 to {PAGE_MAX}, not {value!r}")


def page_size(value: object) -> int:
    """The page size that serves ``list(limit=...)``."""
    if value is None:
        return PAGE_MAX
    if type(value) is not int or value < 1:
        raise InvalidRequest(f"limit must be a whole number from 1 on, or None, not {value!r}")
    return min(value, PAGE_MAX)


def moment(name: str, when: object) -> int:
    """An aware ``datetime`` as microseconds since the epoch. Refused for
    anything else, a naive datetime included: it could mean local time (as
    ``datetime.timestamp`` and so redis-py take it) or UTC (as sessiond's
    own text input does), and guessing wrong moves a cleanup by hours."""
    if not isinstance(when, datetime):
        raise InvalidRequest(
            f"{name} must be a datetime, not {type(when).__name__} ({when!r}); e.g. "
            f"datetime.now(timezone.utc) - timedelta(days=7)"
        )
    if when.utcoffset() is None:
        raise InvalidRequest(
            f"{name} must be a timezone-aware datetime, not the naive {when.isoformat()!r}: "
            f"say which zone it is in, e.g. datetime(2026, 12, 1, tzinfo=timezone.utc) or "
            f"a naive one's .astimezone() for local time"
        )
    delta = when - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def session(value: object, kinds: tuple[type, ...]) -> None:
    """Refused unless ``value`` is one of the session structs ``kinds``."""
    if not isinstance(value, kinds):
        raise InvalidRequest(f"sessions must be {_SESSIONS}, not {type(value).__name__}")


def page(value: object, kinds: tuple[type, ...]) -> list[Any]:
    """One page of sessions to import, as a list."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise InvalidRequest(f"sessions must be a list of sessions, not {type(value).__name__}")
    if len(value) > PAGE_MAX:
        raise InvalidRequest(
            f"a page holds at most {PAGE_MAX} sessions, not {len(value)}; "
            f"import_sessions pages any number"
        )
    for item in value:
        session(item, kinds)
    return list(value)


def sessions(value: object, kinds: tuple[type, ...]) -> None:
    """What an import can check before it asks the daemon anything: that
    ``value`` can be iterated, and every item of a list is a session (an
    iterator's items are checked as they come)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidRequest(f"sessions must be a list of sessions, not {type(value).__name__}")
    if isinstance(value, Sequence):
        for item in value:
            session(item, kinds)


def timeout(value: object) -> None:
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value <= MAX_TIMEOUT):
        raise InvalidRequest(
            f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, "
            f"or None to wait for ever, not {value!r}"
        )


def socket(value: object) -> str:
    """A client's socket path: a str, or what ``os.fsdecode`` takes
    (a ``Path``, bytes)."""
    try:
        return os.fsdecode(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidRequest(
            f"socket must be a path (a str or a pathlib.Path), or None for the usual "
            f"one, not {type(value).__name__} ({value!r})"
        ) from None


def autostart(value: object) -> None:
    if value is not None and value is not True and value is not False:
        raise InvalidRequest(f"autostart must be True, False or None, not {value!r}")


# A request's field as the Python call names it.
_ARGUMENT = {"sid": "the session id", "value": "value", "meta": "meta"}


def unsendable(req: Request, exc: Exception) -> InvalidRequest:
    """Why ``req`` could not be encoded (``exc``, one of ``ENCODE_ERRORS``),
    in words that name its field: a value that is not JSON (an object, a
    Path), an integer past 64 bits, nesting past the recursion limit."""
    for field in req.__struct_fields__:
        try:
            encoder.encode(getattr(req, field))
        except ENCODE_ERRORS as why:
            return InvalidRequest(
                f"{_ARGUMENT.get(field, field)} cannot be sent: {why_unsendable(why)}; "
                f"use str, int, float, bool, None, list and dict"
            )
    return InvalidRequest(f"the request cannot be sent: {why_unsendable(exc)}")


def why_unsendable(exc: BaseException) -> str:
    """msgspec's refusal to encode a value, in Python's words."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, OverflowError):
        return "an integer is outside -2**63 to 2**64 - 1"
    said = str(exc)
    head, tail = "Encoding objects of type ", " is unsupported"
    if said.startswith(head) and said.endswith(tail):
        return f"a value of type {said[len(head) : -len(tail)]} is not JSON"
    return said
