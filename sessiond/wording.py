"""msgspec's refusals of a value, said in words for people.

msgspec says what a decoder expected in its own notation: ``Expected `int |
null`, got `str` - at `$.ttl```. That reaches people where a record of a
file, or a request on the wire, fails to decode; ``plain`` says it as
``ttl must be a whole number or null, not a string``. The value's own terms
are JSON's and msgpack's, the terms of what was read. (Python callers never
get here: the client checks its arguments in Python's terms first.)

Imported where a refusal is being worded, never on a hot path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_KINDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "null": "null",
    "object": "an object",
    "array": "an array",
    "bytes": "binary data",
    "ext": "a msgpack extension (a timestamp, say)",
    "any": "a value",
}
_SIZES = {"str": "characters", "bytes": "bytes", "array": "items", "object": "entries"}
_BOUNDS = {">=": "of at least", "<=": "of at most", ">": "above", "<": "below"}
_AT = re.compile(r"(?P<body>.*) - at `(?P<path>[^`]*)`(?: in `(?P<outer>[^`]*)`)?", re.S)
_GOT = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`")
_BOUND = re.compile(r"Expected `(?P<want>[^`]+)` (?P<op>>=|<=|>|<) (?P<n>\S+)")
_LENGTH = re.compile(r"Expected `(?P<want>[^`]+)` of length (?P<op>>=|<=) (?P<n>\d+)")
_REGEX = re.compile(r"Expected `str` matching regex (?P<regex>.+)")
_ENUM = re.compile(r"Invalid enum value (?P<value>.+)")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")


def kind(notation: str) -> str:
    """``int | null`` as ``a whole number or null``."""
    return " or ".join(_KINDS.get(part.strip(), part.strip()) for part in notation.split("|"))


def _place(path: str, outer: str | None, whole: str) -> str:
    """``$.sessions[0].id`` as ``sessions[0].id``; ``$`` as ``whole``;
    ``key`` in ``$.meta`` as ``a key of meta``."""
    if outer is not None:
        return f"a {path} of {_place(outer, None, whole)}"
    if path == "$":
        return whole
    return path[2:] if path.startswith("$.") else path.removeprefix("$")


def plain(text: str, whole: str = "the value", rules: Mapping[str, str] | None = None) -> str:
    """A msgspec ``ValidationError``'s text in words; ``whole`` names the
    value at the top (``the request``, ``the record``), and ``rules`` says
    what some of its fields take, in the words of the rules that bound them
    (``ttl`` -> ``a whole number of seconds from 1 to ...``), which serve
    better than msgspec's bounds and patterns. A text of a shape not known
    here comes back with its notation's backticks dropped."""
    at = _AT.fullmatch(text)
    body = text if at is None else at["body"]
    where = whole if at is None else _place(at["path"], at["outer"], whole)
    rule = None
    if at is not None and at["outer"] is None and rules is not None:
        rule = rules.get(at["path"].removeprefix("$."))
    if rule is not None and (m := _GOT.fullmatch(body)):
        return f"{where} must be {rule}, not {kind(m['got'])}"
    if rule is not None and _MISSING.fullmatch(body) is None and _UNKNOWN.fullmatch(body) is None:
        return f"{where} must be {rule}"
    if m := _GOT.fullmatch(body):
        return f"{where} must be {kind(m['want'])}, not {kind(m['got'])}"
    if m := _LENGTH.fullmatch(body):
        size = _SIZES.get(m["want"], "items")
        if m["n"] == "1":
            size = size[:-1]  # characters, items, entries: each plural in "s"
        return f"{where} must be {kind(m['want'])} {_BOUNDS[m['op']]} {m['n']} {size}"
    if m := _BOUND.fullmatch(body):
        return f"{where} must be {kind(m['want'])} {_BOUNDS[m['op']]} {m['n']}"
    if m := _REGEX.fullmatch(body):
        return f"{where} must be a string matching {m['regex']}"
    if m := _ENUM.fullmatch(body):
        return f"{where} cannot be {m['value']}"
    if m := _MISSING.fullmatch(body):
        return f"{where} lacks the field {m['field']!r}"
    if m := _UNKNOWN.fullmatch(body):
        return f"{where} has a field it does not take: {m['field']!r}"
    return f"{where}: {body.replace('`', '')}"
