"""No reply carries state that is not yet durable under the policy in force.

Under ``--fsync always`` a change is applied in memory before its fsync, and
other connections are served meanwhile. Their replies are held until every
batch they may have read is on disk; if one of those is refused (an fsync
fails, injected with a real failpoint), they are computed again after the
revert. So whoever is told that a write was refused never shares the daemon
with a reader that was shown it, and the expiry timer's changes are held the
same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import cast

import pytest

from sessionctl import Client
from sessiond.errors import ReadOnly, SessionNotFound
from tests.conftest import Daemon, stored, wait_until

pytestmark = pytest.mark.local_only("replies held until the journal has the changes they show")

FAILPOINT = "SESSIOND_FAILPOINT"
READERS = 4
PURGE_READERS = 8
PIPELINE = 50
PURGE_RUNS = 3
WRITERS = 6
SIDS = [f"s{i}" for i in range(WRITERS)]
# The K-th fsync fails: after the creates, and some sets (one fsync for
# every group of them).
FAILING_FSYNC = 40
RUNS = 5


class Readers:
    """Threads that each read one session over their own connection, as
    fast as they can, and keep what every read showed, in order."""

    def __init__(self, d: Daemon, read: Callable[[Client], object], count: int = READERS) -> None:
        self.seen: list[list[object]] = [[] for _ in range(count)]
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self._read = read
        self._threads = [
            threading.Thread(target=self._run, args=(d, i), daemon=True) for i in range(count)
        ]
        for t in self._threads:
            t.start()

    def _run(self, d: Daemon, i: int) -> None:
        try:
            with d.client() as c:
                while not self.stop.is_set():
                    self.seen[i].append(self._read(c))
        except BaseException as exc:  # handed to the test, which fails with it
            self.errors.append(exc)

    def reads(self) -> int:
        return min(len(s) for s in self.seen)

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)
            assert not t.is_alive()
        assert not self.errors, self.errors


def every_value(c: Client) -> object:
    """What one read shows: every session's value, in one round trip."""
    with c.pipeline() as p:
        got = [p.get(sid) for sid in SIDS]
    return tuple(g.result().meta["v"] for g in got)


class Writer:
    """A thread that sets its session's value to 1, 2, ... until refused
    (or for a while: see ``_writers_and_readers``)."""

    def __init__(self, d: Daemon, sid: str) -> None:
        self.sid = sid
        self.refused: int | None = None
        self.last = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(d,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive()
        assert self.error is None, self.error

    def _run(self, d: Daemon) -> None:
        try:
            with d.client() as c:
                for i in range(1, 4 * FAILING_FSYNC):
                    try:
                        c.set(self.sid, "v", i)
                    except ReadOnly:
                        self.refused = i
                        return
                    self.last = i
        except BaseException as exc:  # handed to the test, which fails with it
            self.error = exc


def test_readers_never_see_a_write_that_is_then_refused(
    make_daemon: Callable[..., Daemon],
) -> None:
    for run in range(RUNS):
        d = make_daemon("--fsync", "always", env={FAILPOINT: f"fsync-error@{FAILING_FSYNC}:1"})
        now = _writers_and_readers(d, run)
        d.kill()
        del d.extra_env[FAILPOINT]
        d.start()
        assert {sid: s.meta["v"] for sid, s in stored(d).items()} == now
        d.stop()


def _writers_and_readers(d: Daemon, run: int) -> dict[str, object]:
    with d.client() as c:
        for sid in SIDS:
            c.create(id=sid, meta={"v": 0})
        readers = Readers(d, every_value)
        wait_until(lambda: readers.reads() >= 20 or readers.errors, 30, "readers to run")
        # Writers at once: their commits group, and a group is fsynced in
        # the journal's thread while the event loop serves the readers.
        writers = [Writer(d, sid) for sid in SIDS]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        # Those in the failing group are refused; one whose thread was not
        # running meanwhile may find writes accepted again (a compaction
        # ends read-only mode at once) and never be.
        assert any(w.refused is not None for w in writers), "no write was refused"
        # Readers go on after the revert, so a value shown too early would
        # be followed by an older one.
        after = readers.reads() + 20
        wait_until(lambda: readers.reads() >= after or readers.errors, 30, "more reads")
        readers.join()
        for seen in readers.seen:
            for i, w in enumerate(writers):
                values = [cast("tuple[int, ...]", row)[i] for row in seen]
                assert w.refused not in values, (
                    f"run {run}: a reader was shown {w.sid}={w.refused}, then refused"
                )
                assert values == sorted(values), f"run {run}: {w.sid} went back"
        now = {sid: c.get(sid).meta["v"] for sid in SIDS}
        assert now == {w.sid: w.last for w in writers}
        return now


def test_a_read_pipelined_after_a_refused_write_shows_the_state_that_stands(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always", env={FAILPOINT: "fsync-error@2:1"})
    with d.client() as c:
        made = c.create(id="s", meta={"v": 0})
        with c.pipeline() as p:
            write = p.set("s", "v", 1)
            read = p.get("s")
            page = p.list_page()
            created = p.create(id="new")
            missing = p.get("new")
        with pytest.raises(ReadOnly):
            write.result()
        with pytest.raises(ReadOnly):
            created.result()
        assert read.result() == made
        assert page.result() == ([made], None)
        with pytest.raises(SessionNotFound):
            missing.result()
        assert c.get("s") == made


def test_readers_never_see_a_purge_by_the_timer_that_is_then_refused(
    make_daemon: Callable[..., Daemon],
) -> None:
    for run in range(PURGE_RUNS):
        # fsyncs: 1 the create, 2 its expiry (by the timer or a reader), 3
        # the timer's purge once expired_retention has passed: that one fails.
        d = make_daemon(start=False)
        d.config.write_text('{"fsync": "always", "expired_retention": 1}')
        d.extra_env[FAILPOINT] = "fsync-error@3:1"
        d.start()
        _purge_under_readers(d, run)
        d.stop()


def statuses(c: Client) -> object:
    """Many reads of one session a round trip: they keep the daemon busy,
    so that some wait when the timer's commit gives them a turn of the loop."""
    with c.pipeline() as p:
        got = [p.get("s") for _ in range(PIPELINE)]
    seen = []
    for g in got:
        try:
            seen.append(g.result().status)
        except SessionNotFound:
            seen.append("gone")
    return seen


def _purge_under_readers(d: Daemon, run: int) -> None:
    with d.client() as c:
        c.create(id="s", ttl=1)
        readers = Readers(d, statuses, count=PURGE_READERS)
        wait_until(lambda: "journal fsync failed" in d.log_text() or readers.errors, 30,
                   "the purge's fsync to fail")

        def all_gone() -> bool:
            return all(s and cast("list[str]", s[-1])[-1] == "gone" for s in readers.seen)

        # The purge is retried once a compaction has ended read-only mode.
        wait_until(lambda: all_gone() or readers.errors, 30, "the purge to be retried")
        readers.join()
        for rounds in readers.seen:
            seen = [status for batch in rounds for status in cast("list[str]", batch)]
            if "gone" in seen:
                assert set(seen[seen.index("gone"):]) == {"gone"}, (
                    f"run {run}: a purged session came back"
                )
        assert c.stats().purges_done == 1
