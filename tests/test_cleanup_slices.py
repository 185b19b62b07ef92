"""A mass cleanup runs a slice at a time (``sessiond.sweep``): the daemon
answers other clients while it runs, each slice is committed before the
next, and a cleanup cut short leaves what a cleanup run again finishes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from sessiond.errors import ReadOnly
from sessiond.model import US, Session, now_us
from sessiond.records import put_line
from sessiond.sweep import SLICE
from tests.conftest import FAILPOINT, Daemon, restarted, stored, wait_until

pytestmark = pytest.mark.local_only("the local store's cleanup and its journal")


def started_with(make_daemon: Callable[..., Daemon], count: int, *args: str,
                 env: dict[str, str] | None = None) -> Daemon:
    """A daemon whose journal holds ``count`` sessions due within the hour
    (written as the journal holds them: quicker than creating them)."""
    d = make_daemon(*args, start=False, env=env)
    d.data_dir.mkdir(mode=0o700)
    now = now_us()
    d.journal.write_bytes(b"".join(
        put_line(Session(id=f"s{i:08d}", user="u", status="active", ttl=3600, meta={},
                         created_at=now, last_access=now, expires_at=now + 3600 * US))
        for i in range(count)
    ))
    return d.start()


def in_two_hours() -> datetime:
    return datetime.now(UTC) + timedelta(hours=2)


def test_other_clients_are_answered_while_a_mass_cleanup_runs(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = started_with(make_daemon, 12 * SLICE)
    ran: dict[str, float] = {}

    def cleanup() -> None:
        with d.client(timeout=120) as c:
            ran["start"] = time.monotonic()
            ran["removed"] = c.cleanup(before=in_two_hours()).removed_count
            ran["end"] = time.monotonic()

    worker = threading.Thread(target=cleanup)
    pings: list[tuple[float, float]] = []  # (sent, answered)
    with d.client() as c:
        c.ping()
        worker.start()
        while worker.is_alive():
            sent = time.monotonic()
            c.ping()
            pings.append((sent, time.monotonic()))
    worker.join()
    assert ran["removed"] == 12 * SLICE
    took = ran["end"] - ran["start"]
    during = [answered - sent for sent, answered in pings if ran["start"] <= sent < ran["end"]]
    # All at once, a ping sent as the cleanup began waited for all of it.
    assert during and max(during) < took / 2, (max(during), took, len(during))
    with d.client() as c:
        assert c.stats().total_sessions == 0


def test_a_cleanup_cut_short_by_the_journal_keeps_its_slices_and_a_second_one_finishes(
    make_daemon: Callable[..., Daemon],
) -> None:
    # The second fsync fails: the first slice is committed, the second refused.
    d = started_with(make_daemon, 3 * SLICE, "--fsync", "always",
                     env={FAILPOINT: "fsync-error@2:1"})
    with d.client(timeout=60) as c:
        with pytest.raises(ReadOnly) as refused:
            c.cleanup(before=in_two_hours())
        assert (f"(cleanup stopped: the {SLICE} sessions it removed before stay removed, the "
                f"rest are as they were; run it again to finish)") in str(refused.value)
        assert c.stats().total_sessions == 2 * SLICE
        # The failure wakes the compactor, whose fresh journal takes writes again.
        wait_until(lambda: c.stats().read_only is None, what="writes accepted again")
        assert c.cleanup(before=in_two_hours()).removed_count == 2 * SLICE
    assert stored(restarted(d)) == {}
