"""A cleanup of the local store, a slice at a time.

A cleanup may remove millions of sessions. Done at once, it held the event
loop for seconds: every other client waited, and so did systemd's watchdog
pings, which are sent from the loop (past ``WatchdogSec`` systemd would
kill the daemon in the middle of it). Here the store judges ``SLICE``
sessions at a time (``Store.cleanup``), each slice's removals are committed
(journaled under the fsync policy in force, ``sessiond.journal``) before the
next slice is looked at, and the loop turns between slices, so that other
requests are answered while a cleanup runs.

What a cleanup guarantees:

* Its reply lists every session it removed, and leaves only once every
  slice is committed. What the reply shows that it did not write itself
  (``remaining_count``; a dry run's list) waits until every batch accepted
  before has settled, and is computed again if one was refused, as
  ``standing.hold`` holds the reply of a read.
* Each session is judged once, when its slice comes, against the time the
  cleanup began and its ``before``; a session made after the cleanup began
  is left alone (the slices end at ``Store.last_seq()`` as it was then).
* It is a commit a slice, not one in all: a crash in the middle leaves the
  slices before it removed and the rest as they were, every session whole
  either way, and a cleanup run again removes the rest. So does a journal
  that refuses a slice's write: that slice is reverted, and the request
  fails saying how many sessions were removed before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.lowlevel

from sessiond.errors import InternalError, ReadOnly
from sessiond.model import now_us
from sessiond.protocol import CleanupResult

if TYPE_CHECKING:
    from sessiond.dispatch import Dispatcher

# Sessions judged (and at most removed) between two turns of the event loop:
# a slice costs milliseconds, journal lines included.
SLICE = 8192


async def cleanup(d: Dispatcher, before: int | None, dry_run: bool) -> CleanupResult:
    """``Store.cleanup`` of the whole store, a slice at a time (see the
    module). Raises ``InvalidRequest`` for a bad ``before``, ``ReadOnly``
    (or ``InternalError``) when the journal refuses a slice: those before
    it stay removed."""
    settlement = d.settlement
    while True:
        failures = settlement.failures
        removed, remaining = await _slices(d, now_us(), before, dry_run)
        await settlement.wait(settlement.accepted)
        if settlement.failures != failures and dry_run:
            # A batch it may have read was refused (and reverted): again,
            # as ``standing.recompute`` does. The journal is read-only after
            # a refusal, so this ends.
            continue
        if settlement.failures != failures:
            # Its own slices are committed (a refused batch before them
            # would have had them refused too): only the count is read again.
            remaining = len(d.store)
        return CleanupResult(
            dry_run=dry_run, removed_count=len(removed), remaining_count=remaining,
            removed_ids=removed,
        )


async def _slices(
    d: Dispatcher, now: int, before: int | None, dry_run: bool
) -> tuple[list[str], int]:
    """Every slice judged, and those of a cleanup that is not a dry run
    committed: the ids removed, and the sessions that remain."""
    store = d.store
    upto = store.last_seq()
    removed: list[str] = []
    after = -1
    while True:
        cleaned, changes = store.cleanup(
            now, before, dry_run, after=after, upto=upto, most=SLICE
        )
        # What remains once this slice's removals are made (a real run's
        # are; a dry run's would be), all slices so far included.
        remaining = len(store) - (len(removed) + len(cleaned.removed) if dry_run else 0)
        if changes:
            try:
                await d.commit(changes)
            except (ReadOnly, InternalError) as exc:
                # The base class, whatever the subclass: its message is what
                # is made here (a subclass may take other arguments).
                kind = ReadOnly if isinstance(exc, ReadOnly) else InternalError
                raise kind(
                    f"{exc} (cleanup stopped: the {len(removed)} sessions it removed before "
                    f"stay removed, the rest are as they were; run it again to finish)"
                ) from exc
        removed += cleaned.removed
        if cleaned.resume is None:
            return removed, remaining
        after = cleaned.resume
        # A commit written inline never gives the loop back: a turn for the
        # others between slices.
        await anyio.lowlevel.checkpoint()
