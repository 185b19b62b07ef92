"""Memory of sessions gone goes back to the system (``sessiond.trim``).

Measured for real: the daemon's resident size (``VmRSS``) after many
sessions are created and then deleted. Without the trim it stays at its
high mark for good (the allocator keeps the freed pages); with it, a good
part comes back within a tick or two.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Daemon, wait_until

pytestmark = pytest.mark.local_only("the sessions are in the local daemon's memory")

SESSIONS = 60_000


def test_memory_of_deleted_sessions_is_given_back_to_the_system(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    start = d.memory_mb()
    with d.client() as c:
        with c.pipeline(returning="ack") as p:
            for i in range(SESSIONS):
                p.create(id=f"s{i}", user=f"u{i % 50}", meta={"n": i, "pad": "x" * (i % 700)})
        full = d.memory_mb()
        grown = full - start
        assert grown > 40, f"{SESSIONS} sessions took only {grown:.0f} MB"
        with c.pipeline(returning="ack") as p:
            for i in range(SESSIONS):
                p.delete(f"s{i}")
        assert c.stats().total_sessions == 0
    # A quarter of what the sessions took back at least (from two fifths
    # to a half, measured; none without the trim).
    wait_until(lambda: d.memory_mb() < full - grown / 4, 10,
               f"the daemon's memory to fall from {full:.0f} MB")
