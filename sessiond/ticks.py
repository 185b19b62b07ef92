"""The daemon's once-a-second looks, woken together.

Some parts look at something once a second because nothing tells them
when it changes: the expiry timer (whether the wall clock stepped), the
data dir's keeper (its lock file and journal), the socket's keeper (its
path), and the ``everysec`` syncer while lines wait for their fsync. Each
sleeping a second from when it last looked, they drift apart, and an idle
daemon woke two to three times a second; each sleeping until the next
whole second of the monotonic clock instead, they wake together, once.
"""

from __future__ import annotations

import time

TICK = 1.0
# A wait shorter than this is taken to the tick after: a timer that fires a
# hair before the tick (timers are kept in milliseconds) would otherwise
# wake the loop once more just before it.
SLACK = 0.005


def until_tick() -> float:
    """Seconds until the next tick: more than ``SLACK``, at most ``TICK +
    SLACK``."""
    left = TICK - time.monotonic() % TICK
    return left + TICK if left < SLACK else left
