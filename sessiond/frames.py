"""Reply frames: a response encoded as msgpack behind its big-endian length.

Shared by the dispatcher (which writes replies), the connections (which
read frame headers and send their parting errors) and the server (watch
events, refusals).
"""

from __future__ import annotations

import struct

import msgspec

from sessiond.errors import SessionError
from sessiond.protocol import HEADER, ErrorReply, Response

LENGTH = struct.Struct(">I")
assert LENGTH.size == HEADER
NO_LENGTH = bytes(HEADER)

encoder = msgspec.msgpack.Encoder()


def frame(msg: Response) -> bytes:
    """``msg`` as one frame."""
    body = encoder.encode(msg)
    return len(body).to_bytes(HEADER, "big") + body


def append_frame(out: bytearray, msg: Response) -> None:
    """Encode ``msg`` as a frame at the end of ``out``, with no bytes object
    in between."""
    start = len(out)
    out += NO_LENGTH
    encoder.encode_into(msg, out, -1)
    LENGTH.pack_into(out, start, len(out) - start - HEADER)


def error_frame(req_id: int, exc: SessionError) -> bytes:
    """The frame that answers request ``req_id`` with ``exc``."""
    return frame(ErrorReply(id=req_id, code=exc.code, message=str(exc)))
