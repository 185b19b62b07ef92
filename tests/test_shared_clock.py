"""Shared mode: one clock for the fleet, the engine's. Stamps and deadlines
are the engine's ``TIME``, whatever the host's clock says: a daemon whose
host clock is a day off (as libfaketime would make it: ``time.time`` and
``time.time_ns`` shifted in the daemon's process, by a ``sitecustomize``
on its ``PYTHONPATH``) stamps, expires and streams exactly as one whose
clock is right."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, engine_of, engine_time_us, figures, tag

pytestmark = pytest.mark.shared_only("stamps and deadlines from the engine's clock")

SKEW = """\
import os
import time

_skew = float(os.environ["SESSIOND_TEST_CLOCK_SKEW"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _skew
time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
"""


@pytest.fixture(params=[-86400, 86400], ids=["a day behind", "a day ahead"])
def skewed(
    request: pytest.FixtureRequest, make_daemon: Callable[..., Daemon], tmp_path: Path,
) -> Daemon:
    where = tmp_path / "skew"
    where.mkdir()
    (where / "sitecustomize.py").write_text(SKEW)
    return make_daemon(env={"PYTHONPATH": str(where),
                            "SESSIOND_TEST_CLOCK_SKEW": str(request.param)})


def test_the_skew_is_real_in_the_daemon_s_process(skewed: Daemon) -> None:
    # The premise: the daemon's own clock is off (its uptime is not, being
    # monotonic); "watching" is the one stamp a daemon makes itself.
    import time

    from sessionctl import Client
    from sessionctl.results import EventReply
    from sessiond.protocol import Watch

    with Client(skewed.socket) as c:
        first = c._roundtrip(Watch(id=0))
    assert isinstance(first, EventReply)
    assert abs(first.event.at_us - time.time() * 1e6) > 3600 * 1e6


def test_stamps_and_deadlines_are_the_engine_s_time(skewed: Daemon) -> None:
    with engine_of(skewed) as r:
        key = tag(skewed) + "counters"
        before = engine_time_us(r, key)
        with skewed.client() as c:
            s = c.create(ttl=60)
        after = engine_time_us(r, key)
        assert before <= s.created_at_us <= after
        assert s.last_access_us == s.created_at_us
        assert s.expires_at_us == s.created_at_us + 60_000_000
        assert int(float(r.zscore(tag(skewed) + "due", s.id))) == s.expires_at_us
        with skewed.client() as c:
            touched = c.get(s.id, touch=True)
        assert after <= touched.last_access_us <= engine_time_us(r, key)
    assert figures(skewed).due_next_minute == 1


def test_timed_expiry_and_events_follow_the_engine_s_clock(skewed: Daemon) -> None:
    w = Watching(skewed)
    w.started(skewed)
    with engine_of(skewed) as r:
        key = tag(skewed) + "counters"
        start = engine_time_us(r, key)
        with skewed.client() as c:
            s = c.create(ttl=1)
            # Neither a day early nor a day late.
            wait_until(lambda: c.get(s.id).status == "expired", 10, "the expiry")
        done = engine_time_us(r, key)
    expired = w.until(lambda e: e.kind == "expired")
    created = expired[0]
    assert created.kind == "created" and start <= created.at_us <= s.created_at_us
    assert expired[-1].session is not None
    assert expired[-1].session.expired_at_us == s.expires_at_us
    assert s.expires_at_us <= expired[-1].at_us <= done
