"""Every limit a session is held to, and the checks that hold it there.

One place for them, read by the store's rules, the wire protocol (whose
decoder bounds what it accepts with the same numbers), the journal's
readers and the command line (which refuses a bad value before it reaches
the daemon). Nothing here keeps state or does I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import msgspec

from sessiond.errors import InvalidRequest, TooLarge
from sessiond.model import US

ID_MAX: Final = 128
ID_PATTERN: Final = r"^[A-Za-z0-9._-]+$"
ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
ID_RULE: Final = "use 1-128 of A-Z a-z 0-9 . _ -"
KEY_MAX: Final = 256
USER_MAX: Final = 256
META_MAX_BYTES: Final = 64 * 1024
META_MAX_DEPTH: Final = 32
MAX_TTL: Final = 100 * 365 * 86400  # a century: beyond that it is a typo
# The longest record a file to import may hold on one line (or as one
# element of a JSON export), in bytes: a longer one is skipped as an
# unreadable record without ever being held whole. The largest record the
# rules accept is its meta (META_MAX_BYTES as compact JSON) and a few
# kilobytes of fields (a user of 256 characters escaped as surrogate
# pairs is 3 KiB). Spelled by another JSON writer it grows at most
# threefold: json.dumps's ASCII escapes triple a character's bytes at
# worst, its ", " and ": " add half of a one-byte element at worst, never
# both to the same byte. 4 MiB (the default max_frame_bytes) leaves
# twenty times that for spaces put between the tokens by hand or by a
# tool, and is a bounded buffer all the same.
RECORD_TEXT_MAX: Final = 64 * META_MAX_BYTES
# Versions are counted in a signed 64-bit integer, as every client and the
# wire (msgpack) can hold it: a record that enters with a version outside
# 1..MAX_VERSION is refused, and one that reaches it is changed no more by
# clients (its expiry keeps the version: see ``sessiond.rules``).
MAX_VERSION: Final = 2**63 - 1
# Years 1 to 9999, in microseconds: as far as an ISO 8601 stamp can go, so
# a time outside them cannot be written to the journal in a form that reads
# back (accepting one would brick replay).
TIME_MIN: Final = -62135596800 * US  # 0001-01-01T00:00:00Z
TIME_MAX: Final = 253402300800 * US - 1  # 9999-12-31T23:59:59.999999Z
# The longest wait a client's ``timeout`` may ask for (a day; ``None`` waits
# for ever). Past some bound every clock the clients use refuses it (a poll
# takes at most 2**31-1 ms, a socket timeout at most ~292 years), each with
# its own OverflowError: one bound, the same for Client and AsyncClient.
MAX_TIMEOUT: Final = 86400.0
# msgpack carries integers from -2**63 to 2**64 - 1; a meta value outside
# that could be stored but never sent back to a client.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1
# C0 controls and DEL: in a name they break the lines and tables it is shown
# in, or drive the terminal that shows it. Other characters are names'.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_json = msgspec.json.encode


def valid_id(sid: object) -> bool:
    return isinstance(sid, str) and ID_RE.fullmatch(sid) is not None


def check_id(sid: object) -> str:
    if not valid_id(sid):
        raise InvalidRequest(f"invalid session id {sid!r}: {ID_RULE}")
    return sid  # type: ignore[return-value]


# How the daemon refuses a request's session id that breaks the rule: in
# the words its decoder used when it checked every id itself (see
# ``sessiond.protocol.Sid``), which the rules now say where an id is missed
# or made.
ID_REFUSAL: Final = f"invalid request: sid must be a session id ({ID_RULE})"


def check_sid(sid: object) -> str:
    """``sid``, if it is a session id; ``InvalidRequest`` in a request's words."""
    if not valid_id(sid):
        raise InvalidRequest(ID_REFUSAL)
    return sid  # type: ignore[return-value]


def check_ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise InvalidRequest(
            f"ttl must be a whole number of seconds from 1 to {MAX_TTL}, not {ttl!r}"
        )
    return ttl


def check_user(user: object, new: bool = True) -> None:
    """``None`` means the default user; anything else must be a name (and a
    ``new`` one, that a client gives, without control characters: data
    that entered before that rule still loads)."""
    if user is not None and (not isinstance(user, str) or not 1 <= len(user) <= USER_MAX):
        raise InvalidRequest(f"user must be 1 to {USER_MAX} characters")
    if new and user is not None:
        _no_controls("user", user)


def check_key(key: object, new: bool = True) -> None:
    """A meta key (``new`` as for ``check_user``)."""
    if not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX:
        raise InvalidRequest(f"meta keys must be 1 to {KEY_MAX} characters")
    if new:
        _no_controls("meta key", key)


def _no_controls(what: str, name: str) -> None:
    # isprintable() is false for every control character, and fast: the
    # search runs only for the few names it does not clear.
    if not name.isprintable():
        found = _CONTROL.search(name)
        if found is not None:
            raise InvalidRequest(
                f"{what} {name!r} holds the control character U+{ord(found.group()):04X}; "
                f"names may not hold U+0000 to U+001F or U+007F"
            )


def check_meta_value(value: Any, depth: int = 0) -> None:
    """JSON values only (the journal is JSON), bounded in depth."""
    if depth > META_MAX_DEPTH:
        raise InvalidRequest(f"meta value nested deeper than {META_MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidRequest(f"meta integers must be from {INT_MIN} to {INT_MAX}")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest("meta values must be finite numbers")
        return
    if isinstance(value, list):
        for item in value:
            check_meta_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InvalidRequest("meta object keys must be strings")
            check_meta_value(item, depth + 1)
        return
    raise InvalidRequest(f"meta values must be JSON values, not {type(value).__name__}")


def check_meta(meta: dict[str, Any], new: bool = True) -> bytes:
    """The meta's JSON text, once it is found acceptable (``new`` as for
    ``check_user``)."""
    for key, value in meta.items():
        check_key(key, new)
        check_meta_value(value, 1)
    return sized_meta(meta)


def sized_meta(meta: dict[str, Any]) -> bytes:
    """The JSON text of a meta whose entries are acceptable, if not too big."""
    text = _json(meta)
    if len(text) > META_MAX_BYTES:
        raise TooLarge(f"meta of {len(text)} bytes exceeds the limit of {META_MAX_BYTES} bytes")
    return text


def check_version(version: int) -> int:
    if not 1 <= version <= MAX_VERSION:
        raise InvalidRequest(f"version {version} is out of range (1 to {MAX_VERSION})")
    return version


def check_time(name: str, value: int | None) -> None:
    if value is not None and not TIME_MIN <= value <= TIME_MAX:
        raise InvalidRequest(f"{name} {value} is outside the years 1 to 9999")
