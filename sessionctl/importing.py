"""An import cut into pages: how many sessions, and how many bytes, one
request may carry. Both clients page an import so (``import_pages``); it
does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sessionctl.connection import ENCODE_ERRORS
from sessionctl.results import SESSION_KINDS, Session
from sessiond import model
from sessiond.errors import InvalidRequest
from sessiond.protocol import PAGE_MAX, Import, ImportResult, encoder

# Import pages are bounded by bytes as well as by count: 1,000 sessions of
# 8 KiB of meta make a request of 8 MB, past the daemon's max_frame_bytes
# (4 MiB by default), which it refuses whole. The daemon's limit is asked
# once an import; a page is kept to 1 MiB below it even so, because the
# daemon applies a page in one go while its other clients wait.
IMPORT_PAGE_BYTES = 1 << 20


def import_plan(
    sessions: Iterable[Session | model.Session], max_frame_bytes: int
) -> Iterator[list[Session | model.Session] | ImportResult]:
    """``sessions`` in pages to send, each of at most ``PAGE_MAX`` sessions
    and of at most ``IMPORT_PAGE_BYTES`` or the daemon's ``max_frame_bytes``
    encoded, the smaller (the request around them included); a session too
    big for any page comes as an ``ImportResult`` that skips it, with its
    reason, which names the bound that applied."""
    limit = min(IMPORT_PAGE_BYTES, max_frame_bytes)
    if limit == max_frame_bytes:
        bound = f"the daemon's max_frame_bytes is {max_frame_bytes}"
    else:
        bound = f"an import page carries at most {IMPORT_PAGE_BYTES} bytes"
    # The request around the sessions: its keys, the largest id, and the
    # largest array header (5 bytes where an empty array takes 1).
    budget = limit - len(encoder.encode(Import(id=2**63 - 1, sessions=[]))) - 4
    page: list[Session | model.Session] = []
    size = 0
    for session in sessions:
        if not isinstance(session, SESSION_KINDS):
            from sessionctl import arguments

            arguments.session(session, SESSION_KINDS)
        try:
            n = len(encoder.encode(session))
        except ENCODE_ERRORS as exc:
            from sessionctl.arguments import why_unsendable

            raise InvalidRequest(
                f"session {session.id!r} cannot be sent: {why_unsendable(exc)}; "
                f"meta values must be str, int, float, bool, None, list or dict"
            ) from exc
        if n > budget:
            yield ImportResult(skipped=1, reasons=[
                f"{session.id}: {n} bytes encoded, more than one request may carry ({bound})"
            ])
            continue
        if page and (len(page) == PAGE_MAX or size + n > budget):
            yield page
            page, size = [], 0
        page.append(session)
        size += n
    if page:
        yield page


def add_up(total: ImportResult, part: ImportResult) -> None:
    """Add one page's counts and reasons to ``total``."""
    total.imported += part.imported
    total.updated += part.updated
    total.skipped += part.skipped
    total.already_expired += part.already_expired
    total.reasons.extend(part.reasons)
