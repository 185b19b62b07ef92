"""Whether an ``always`` commit that finds nothing in flight offers the
other connections a turn of the event loop to join its group before it is
written and synced.

A turn is a trip round the event loop, taken with the caches as cold as the
last sync left them: with one client it is a good part of the Python a
request runs, spent waiting for nobody. It pays only when other clients are
ready to join, and then a group shares one sync. So the journal offers it
while it finds company, gives it up after ``LONE_TURNS`` groups in a row
that had nobody but their own batch, still offers it one lone commit in
``PROBE_EVERY`` meanwhile so that clients that arrive are noticed, and
offers it to every commit again as soon as a group has company (formed by
a turn, or queued behind a write).

A commit that does not offer the turn is written and fsynced on the loop
at once, on a slow disk too, and acknowledged only after that fsync like
every other; a failed fsync refuses it as any other (``sessiond.journal``).
With nobody to form a next group the writer thread, which is there so that
the next group forms while one is on disk, would only add its two
wake-ups, and a reply that may have read the commit waits for its fsync
wherever it runs (``standing.hold``); what a slow disk costs then is
that the loop serves nothing else during that fsync (neither does Redis's
under ``appendfsync always``).

The journal owns one ``GroupForming`` and asks it; nothing here waits or
reads a clock, so what it decides depends only on the groups before.
"""

from __future__ import annotations

# Groups of one in a row before the turn is given up. Enough that clients
# which miss a turn now and then (still busy with their next request) keep
# their groups; few enough that one client soon stops paying for it.
LONE_TURNS = 8
# While the turn is given up, one lone commit in this many still offers it.
# Clients that arrive meanwhile get, at most, this many commits less one
# written a sync each before their groups form again; one client saves the
# turn on all the others.
PROBE_EVERY = 16


class GroupForming:
    """The run of lone groups, and the lone commits since the last turn
    offered while given up."""

    __slots__ = ("lone", "skipped")

    def __init__(self) -> None:
        # Groups of one in a row, counted up to LONE_TURNS.
        self.lone = 0
        # Lone commits that did not offer the turn since the last that did.
        self.skipped = 0

    @property
    def given_up(self) -> bool:
        """Whether lone commits have stopped offering the turn (but for the
        one in ``PROBE_EVERY``)."""
        return self.lone >= LONE_TURNS

    def offer(self) -> bool:
        """Whether a commit that finds nothing in flight offers the turn;
        a commit told no is counted towards the next that is."""
        if self.lone < LONE_TURNS:
            return True
        self.skipped += 1
        if self.skipped < PROBE_EVERY:
            return False
        self.skipped = 0
        return True

    def formed(self, batches: int) -> None:
        """A group of ``batches`` is on its way to disk, whichever way it
        formed (a turn, or queued behind a write): company brings the turn
        back for every commit."""
        if batches > 1:
            self.lone = 0
            self.skipped = 0
        elif self.lone < LONE_TURNS:
            self.lone += 1
