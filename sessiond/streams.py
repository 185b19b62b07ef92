"""A file of records read a bounded piece at a time: its lines, or the
elements of the JSON array it is, each at most ``RECORD_TEXT_MAX`` bytes.

``sessiond.legacy`` reads imports, exports and the legacy ``data.jsonl``
with these. A longer line or element is read past to its end, a chunk at a
time, and never held: a file of a gigabyte on one line costs a chunk of
memory, not a gigabyte, and is reported as one record too long to read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

import msgspec

from sessiond.limits import RECORD_TEXT_MAX

# What is read at a time: far below the cap, far above a record.
CHUNK = 1 << 20
# The first read, which tells a file's format by its first bytes.
HEAD = 64 * 1024

_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
# Outside a string, what moves a value's depth or ends it.
_TOKENS = re.compile(rb'["\[\]{},]')
# msgspec's word for a value followed by more than whitespace, and where
# (one past the first byte that follows the value).
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
_TRUNCATED = "Input data was truncated"


class Malformed(Exception):
    """The document is not valid JSON: msgspec's words, its byte offsets
    counted from the document's start as a decoder of the whole would."""


def fill(f: BinaryIO, data: bytes, size: int) -> tuple[bytes, bool]:
    """``data`` and what follows it in ``f``, up to ``size`` bytes (a pipe
    may give less a read), and whether ``f`` has ended."""
    while len(data) < size:
        more = f.read(size - len(data))
        if not more:
            return data, True
        data += more
    return data, False


def first_byte(data: bytes) -> int:
    """Where the first byte of ``data`` that is not whitespace is (its
    length when there is none)."""
    found = _NOT_SPACE.search(data)
    return len(data) if found is None else found.start()


def one_value(data: bytes, start: int) -> bool | None:
    """Whether ``data`` from ``start`` is one JSON value and whitespace:
    ``None`` when it may be, cut short (more of the file tells)."""
    try:
        msgspec.json.decode(memoryview(data)[start:], type=msgspec.Raw)
    except msgspec.DecodeError as exc:
        return None if str(exc) == _TRUNCATED else False
    except RecursionError:
        return False
    return True


def lines(f: BinaryIO, first: bytes, cap: int = RECORD_TEXT_MAX
          ) -> Iterator[tuple[int, list[bytes | None]]]:
    """The lines of ``first`` and then of the rest of ``f``, a chunk's worth
    at a time: the number of the first (from 1, as ``bytes.splitlines``
    numbers them: a ``\r`` alone ends a line too) and the lines, without
    their ``\n`` (a ``\r`` before it may stay). ``None`` stands for a
    line longer than ``cap``, whose bytes are read and dropped up to its
    ``\n``, never held together. In lists, not one by one: a file of
    millions of lines costs no Python step a line here."""
    lineno = 1
    tail = b""  # the start of a line whose end is not read yet
    skipping = False  # within a line past the cap
    data = first or f.read(CHUNK)
    while data:
        split = data.split(b"\n")
        rest = split.pop()
        parts: list[bytes | None] = list(split)
        if parts:
            has_cr = b"\r" in data or b"\r" in tail
            if skipping:  # its end, at last
                parts[0] = None
                skipping = False
            else:
                head = tail + (parts[0] or b"")
                parts[0] = None if len(head) > cap else head
            tail = b""
            if cap < len(data):  # a line within the chunk may be past the cap
                parts = [None if p is not None and len(p) > cap else p for p in parts]
            if has_cr:
                parts = _cut_at_cr(parts)
            yield lineno, parts
            lineno += len(parts)
        if not skipping:
            tail += rest
            if len(tail) > cap:
                tail, skipping = b"", True
        data = f.read(CHUNK)
    if skipping:
        yield lineno, [None]
    elif tail:
        yield lineno, _cut_at_cr([tail])


def _cut_at_cr(lines: list[bytes | None]) -> list[bytes | None]:
    """``lines`` cut again where a ``\r`` alone ends one (not one before
    its ``\n``)."""
    cut: list[bytes | None] = []
    for line in lines:
        if line is None or not 0 <= line.find(b"\r") < len(line) - 1:
            cut.append(line)
        else:
            cut.extend(line.removesuffix(b"\r").split(b"\r"))
    return cut


class ArrayReader:
    """The elements of the JSON array that ``f`` holds, ``first`` (its
    first bytes, ``[`` at ``start``) read already.

    Each element's extent is found by msgspec (a value followed by more is
    refused with where the rest begins), within a buffer of at most a chunk
    past the cap; an element past the cap is read over, a chunk at a time,
    by its brackets and strings alone."""

    def __init__(self, f: BinaryIO, first: bytes, start: int) -> None:
        self._f = f
        self._buf = first
        self._pos = start + 1  # past the "["
        self._base = 0  # where _buf begins in the document
        self._eof = False

    def elements(self, cap: int = RECORD_TEXT_MAX) -> Iterator[bytes | None]:
        """Each element's bytes, or ``None`` for one longer than ``cap``,
        read past. Raises ``Malformed`` where the document is not JSON,
        ``RecursionError`` for one nested past msgspec's depth."""
        if not self._skip_space():
            raise Malformed(_TRUNCATED)
        if self._buf[self._pos:self._pos + 1] == b"]":
            self._pos += 1
        else:
            while True:
                end = self._value_end(cap)
                if end is None:
                    self._skip_value()
                    yield None
                else:
                    yield self._buf[self._pos:end]
                    self._pos = end
                if not self._skip_space():
                    raise Malformed(_TRUNCATED)
                sep = self._buf[self._pos:self._pos + 1]
                self._pos += 1
                if sep == b"]":
                    break
                if sep != b",":
                    raise self._refusal(b"[0", self._pos - 1)
                if not self._skip_space():
                    raise Malformed(_TRUNCATED)
                if self._buf[self._pos:self._pos + 1] == b"]":
                    raise self._refusal(b"[0,", self._pos)
        if self._skip_space():
            raise Malformed(f"JSON is malformed: trailing characters "
                            f"(byte {self._base + self._pos + 1})")

    def _more(self) -> bool:
        """Read another chunk, dropping what is read past."""
        if self._eof:
            return False
        chunk = self._f.read(CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._base += self._pos
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0
        return True

    def _skip_space(self) -> bool:
        """Move to the next byte that is not whitespace; ``False`` at the end."""
        while True:
            found = _NOT_SPACE.search(self._buf, self._pos)
            if found is not None:
                self._pos = found.start()
                return True
            self._pos = len(self._buf)
            if not self._more():
                return False

    def _value_end(self, cap: int) -> int | None:
        """Where the value at ``_pos`` ends, reading more as it needs;
        ``None`` when it runs past ``cap``."""
        while True:
            view = memoryview(self._buf)[self._pos:]
            try:
                msgspec.json.decode(view, type=msgspec.Raw)
            except msgspec.DecodeError as exc:
                said = str(exc)
                after = _TRAILING.search(said)
                if after is not None:
                    # Whole in what is read, but past the cap all the same:
                    # read past, as one that runs past the buffer is.
                    length = int(after.group(1)) - 1
                    return self._pos + length if length <= cap else None
                at = _AT_BYTE.search(said)
                # A number cut by the chunk's end reads as malformed there.
                if said != _TRUNCATED and (self._eof or at is None
                                           or int(at.group(1)) < len(view) - 1):
                    raise self._refusal(b"", self._pos) from None
            # Truncated, or whole with nothing after it yet: a number may
            # go on in the next chunk, and a "," or "]" must follow.
            if len(self._buf) - self._pos > cap:
                return None
            if not self._more():
                raise Malformed(_TRUNCATED)

    def _skip_value(self) -> None:
        """Read past the value at ``_pos`` by its brackets and strings (a
        string is looked through with ``find``, at memory's speed: a value
        of a gigabyte is mostly one)."""
        depth = 0
        in_string = False
        i = self._pos
        while True:
            buf = self._buf
            if in_string:
                quote = buf.find(b'"', i)
                backslash = buf.find(b"\\", i, len(buf) if quote < 0 else quote)
                if backslash >= 0:
                    i = backslash + 2  # the escaped byte may be the next chunk's
                elif quote >= 0:
                    i = quote + 1
                    in_string = False
                    if depth == 0:
                        break
                else:
                    i = len(buf)
                if i < len(buf):
                    continue
            else:
                found = _TOKENS.search(buf, i)
                if found is not None:
                    byte = found.group()
                    i = found.end()
                    if byte == b'"':
                        in_string = True
                    elif byte in b"[{":
                        depth += 1
                    elif byte in b"]}" and depth > 0:
                        depth -= 1
                        if depth == 0:
                            break
                    elif depth == 0:  # the "," or "]" after a bare number or word
                        i = found.start()
                        break
                    continue
                i = len(buf)
            # Past the end of what is read: drop it, read on.
            over = i - len(buf)
            self._pos = len(buf)
            if not self._more():
                raise Malformed(_TRUNCATED)
            i = over
        self._pos = i

    def _refusal(self, before: bytes, pos: int) -> Malformed:
        """``Malformed`` in the words a decoder of the whole document uses
        for what is at ``pos``, ``before`` standing for what precedes it
        (msgspec's words for a piece differ when it only skips it)."""
        probe = before + self._buf[pos:]
        try:
            msgspec.json.decode(probe)
        except msgspec.DecodeError as exc:
            at = self._base + pos - len(before)
            said = _AT_BYTE.sub(lambda m: f"(byte {int(m.group(1)) + at})", str(exc))
            return Malformed(said)
        except RecursionError:
            raise
        return Malformed(f"JSON is malformed (byte {self._base + pos})")
