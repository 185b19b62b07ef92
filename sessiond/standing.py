"""Replies that stand: a reply leaves only once what it shows is durable.

A batch's replies are computed as its requests run, before the journal has
settled what they read. Those of requests that changed nothing wait until
every batch accepted before them has settled (``hold``); when one of those
was refused (and reverted), they are computed again against the store as it
is now (``recompute``), as are the replies of a batch whose own commit was
refused, its writes answering the refusal. Functions of the ``Dispatcher``
whose replies they rewrite, kept apart from its hot loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sessiond.errors import InternalError, ReadOnly, SessionError
from sessiond.handlers import Handler, shape_refused
from sessiond.model import Change, now_us
from sessiond.protocol import (
    DECODE_ERRORS,
    HEADER,
    LENGTH,
    NO_LENGTH,
    WRITES,
    ErrorReply,
    Get,
    Peer,
    Request,
    append_frame,
    request_decoder,
)

if TYPE_CHECKING:
    from sessiond.dispatch import Dispatcher

# The server's logger: splitting the server into modules changes no record.
log = logging.getLogger("sessiond.server")


async def hold(
    d: Dispatcher,
    out: bytearray,
    bodies: list[memoryview],
    first: int,
    end: int,
    first_out: int,
    peer: Peer,
) -> None:
    """Hold the replies of ``bodies[first:end]`` (which changed nothing)
    until every batch accepted before they were computed has settled;
    if one of those was refused, compute them again (after its revert).

    As Redis holds every reply of a turn of its event loop until the
    AOF write (and fsync) that covers it: a reply must not show a
    change that its writer is then told was refused."""
    settlement = d.settlement
    failures = settlement.failures
    await settlement.wait(settlement.accepted)
    if settlement.failures != failures:
        await recompute(d, out, bodies, first, end, first_out, {}, peer)


async def recompute(
    d: Dispatcher,
    out: bytearray,
    bodies: list[memoryview],
    first: int,
    end: int,
    first_out: int,
    final: dict[int, SessionError],
    peer: Peer,
) -> None:
    """Compute the replies of ``bodies[first:end]`` again until they
    stand: those in ``final`` (writes whose changes were refused) answer
    their error, the others run again against the store as it is now.
    Their own changes (lazy expiries, a write that now succeeds) are
    committed, and they wait for what they read as ``hold`` does. Each
    round but the last follows a new refusal, and the journal is
    read-only after one, so this ends."""
    settlement = d.settlement
    while True:
        failures = settlement.failures
        changes, writes = rerun(d, out, bodies, first, end, first_out, final, peer)
        if changes:
            try:
                await d.commit(changes)
                return
            except (ReadOnly, InternalError) as exc:
                starts = {start for start, _, _ in writes}
                for index in frame_indices(out, first, first_out, starts):
                    final[index] = exc
                if not writes and settlement.failures == failures:
                    return
                continue
        await settlement.wait(settlement.accepted)
        if settlement.failures == failures:
            return


def rerun(
    d: Dispatcher,
    out: bytearray,
    bodies: list[memoryview],
    first: int,
    end: int,
    first_out: int,
    final: dict[int, SessionError],
    peer: Peer,
) -> tuple[list[Change], list[tuple[int, int, int]]]:
    """Replace the replies of ``bodies[first:end]`` (each has one frame
    in ``out``, from ``first_out`` to the end) with new ones; returns
    the changes made and the writes among them, as ``Dispatcher.batch`` keeps."""
    rebuilt = bytearray()
    changes: list[Change] = []
    writes: list[tuple[int, int, int]] = []
    pos = first_out
    for index in range(first, end):
        (n,) = LENGTH.unpack_from(out, pos)
        old = pos
        pos += HEADER + n
        try:
            req = request_decoder.decode(bodies[index])
        except DECODE_ERRORS:
            rebuilt += out[old:pos]  # no state in a decoding error
            continue
        error = final.get(index)
        if error is not None:
            append_frame(rebuilt, error_reply(req.id, error))
            continue
        handler = d.handlers.get(type(req))
        if handler is None or shape_refused(req, peer) is not None:
            rebuilt += out[old:pos]  # unsupported, or refused: no state either
            continue
        start = first_out + len(rebuilt)
        made = run_into(d, rebuilt, req, handler)
        if made:
            changes.extend(made)
            if type(req) in WRITES or (isinstance(req, Get) and req.touch):
                writes.append((start, first_out + len(rebuilt), req.id))
    assert pos == len(out), "one reply frame per request"
    out[first_out:] = rebuilt
    return changes, writes


def run_into(d: Dispatcher, out: bytearray, req: Request, handler: Handler) -> list[Change]:
    """Run one request and append its reply (or error) to ``out``; the
    changes it made, none if it failed. (``Dispatcher.batch`` does the same
    inline, for speed.)"""
    try:
        reply, made = handler(d, req, now_us())
    except SessionError as exc:
        append_frame(out, error_reply(req.id, exc))
        return []
    except Exception as exc:  # a bug: answer, log, keep serving
        log.exception("internal error handling %s", type(req).__name__)
        append_frame(out, error_reply(req.id, InternalError(f"internal error: {exc!r}")))
        return []
    start = len(out)
    out += NO_LENGTH
    try:
        d.encode_into(reply, out, -1)
    except Exception as exc:
        del out[start:]
        unencodable(d, out, req, made, exc)
        return []
    LENGTH.pack_into(out, start, len(out) - start - HEADER)
    return made


def unencodable(
    d: Dispatcher, out: bytearray, req: Request, made: list[Change], exc: Exception
) -> None:
    """The reply to ``req`` could not be encoded (a bug): what it
    changed, the latest changes to the store, is reverted, and it is
    answered with an internal error. Called while handling ``exc``."""
    if made:
        d.store.revert(made)
    log.exception("internal error encoding the reply to %s; its changes are reverted",
                  type(req).__name__)
    bug = InternalError(
        f"internal error: the reply could not be encoded ({exc!r}); nothing was changed"
    )
    append_frame(out, error_reply(req.id, bug))


def frame_indices(
    out: bytearray, first: int, first_out: int, starts: set[int]
) -> list[int]:
    """The requests (indices of bodies, counted from ``first``) whose
    reply frames begin at ``starts`` in ``out``."""
    found: list[int] = []
    pos, index = first_out, first
    while len(found) < len(starts) and pos < len(out):
        if pos in starts:
            found.append(index)
        (n,) = LENGTH.unpack_from(out, pos)
        pos += HEADER + n
        index += 1
    return found


def error_reply(req_id: int, exc: SessionError) -> ErrorReply:
    return ErrorReply(id=req_id, code=exc.code, message=str(exc))
