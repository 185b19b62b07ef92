"""An idle daemon wakes about once a second, however its looks were spread.

Several parts of the local daemon look at something once a second (the
expiry timer, whether the wall clock stepped; the data dir's keeper; the
socket's keeper; the everysec syncer while lines wait for an fsync). Each
used to sleep a second from its own last look, so that an expiry (or any
burst of work) put them out of step, and an idle daemon then woke two or
three times a second. They now wake at the same ticks (``sessiond.ticks``).

Measured as the daemon's voluntary context switches (its threads' waits
that blocked) over a few seconds in which no client touches it: a wait
of the event loop is one. The window is a measurement, not a wait for
something to happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_until

pytestmark = pytest.mark.local_only("the local daemon's own timers")

WINDOW = 5.0
# Waking once a second makes about WINDOW of them; out of step, twice as many.
MOST_PER_SECOND = 1.5


def voluntary_switches(pid: int) -> int:
    """Times any of the daemon's threads blocked, so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def test_an_idle_daemon_wakes_about_once_a_second_after_an_expiry(
    make_daemon: Callable[..., Daemon],
) -> None:
    # fsync always: no syncer's thread work after the writes below.
    d = make_daemon("--fsync", "always")
    ready = time.monotonic()
    assert d.proc is not None
    with d.client() as c:
        # A deadline half a second out of step with the looks that began
        # when the daemon did (just before it answered): a timer that
        # looks again a second after what it last did (the expiry timer,
        # after expiring it) stays half a second away from the others.
        time.sleep(max(0.0, ready + 0.5 - time.monotonic()))  # placing it, not waiting
        c.create(user="u", ttl=1)
        wait_until(lambda: c.stats().expiries_done == 1, what="the session to expire")
    before = voluntary_switches(d.proc.pid)
    began = time.monotonic()
    time.sleep(WINDOW)  # the measurement's window: nothing to wait for
    woken = voluntary_switches(d.proc.pid) - before
    seconds = time.monotonic() - began
    assert woken <= MOST_PER_SECOND * seconds, (
        f"an idle daemon blocked {woken} times in {seconds:.1f}s"
    )
