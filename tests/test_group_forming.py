"""Group forming under ``always``: a lone commit offers the others a turn of
the loop to join its group, gives that turn up while nobody takes it, and
offers it again as soon as a group has company (``sessiond.grouping``).

What must not move: every commit is acknowledged only after the fsync that
covers it, a failed fsync refuses what it carried, and concurrent writers
still share fsyncs after any run of lone commits. The journal is driven on
real files (its fsync count is the figure); the last test drives a real
daemon with a real failed fsync.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessiond import diskio
from sessiond.errors import ReadOnly, SessionNotFound
from sessiond.grouping import LONE_TURNS, PROBE_EVERY, GroupForming
from sessiond.journal import Journal
from sessiond.model import Session
from sessiond.records import put_line
from tests.conftest import Daemon, stored
from tests.test_journal import session, state

pytestmark = pytest.mark.local_only("the journal's group commit under always")

FAILPOINT = "SESSIOND_FAILPOINT"


@pytest.fixture
def fast_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync counts as fast, whatever this machine's disk does while
    the test runs: lone commits sync on the loop, groups form by the turn."""
    monkeypatch.setattr("sessiond.journal.INLINE_SYNC_MAX", 3600.0)


def offers(forming: GroupForming, commits: int) -> list[bool]:
    """Whether each of ``commits`` lone commits in a row offers the turn."""
    out = []
    for _ in range(commits):
        offered = forming.offer()
        out.append(offered)
        forming.formed(1)
    return out


def test_the_turn_is_given_up_after_a_run_of_lone_groups_and_still_offered_now_and_then() -> None:
    forming = GroupForming()
    seen = offers(forming, LONE_TURNS + 3 * PROBE_EVERY)
    assert all(seen[:LONE_TURNS]), "every commit offers the turn until the run is long"
    assert forming.given_up
    later = seen[LONE_TURNS:]
    assert later.count(True) == 3, "one lone commit in PROBE_EVERY still offers it"
    assert later[PROBE_EVERY - 1] and later[2 * PROBE_EVERY - 1]


def test_a_group_with_company_brings_the_turn_back_for_every_commit() -> None:
    forming = GroupForming()
    offers(forming, LONE_TURNS + 5)
    assert forming.given_up
    forming.formed(2)
    assert not forming.given_up
    assert all(offers(forming, LONE_TURNS))


# -- the journal, on a real file --------------------------------------------


def run(path: Path, steps: Callable[[Journal], Any]) -> None:
    async def go() -> None:
        journal = Journal(path, "always")
        journal.open(0, False)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run_flusher)
                await steps(journal)
                tg.cancel_scope.cancel()
        finally:
            journal.close()

    anyio.run(go)


async def lone_commits(journal: Journal, first: int, count: int) -> None:
    """``count`` commits one after another, each of them alone."""
    for i in range(first, first + count):
        before = journal.fsyncs
        await journal.commit(put_line(session(i)), lambda: None)
        assert journal.fsyncs == before + 1, "a lone commit returned before its fsync"


async def concurrent_commits(journal: Journal, first: int, count: int) -> int:
    """``count`` commits ready at once; the fsyncs they took. Each must
    return only once an fsync has covered it."""
    before = journal.fsyncs

    async def one(i: int) -> None:
        accepted = journal.settlement.accepted
        await journal.commit(put_line(session(i)), lambda: None)
        assert journal.fsyncs > before and journal.settlement.settled > accepted

    async with anyio.create_task_group() as tg:
        for i in range(first, first + count):
            tg.start_soon(one, i)
    return journal.fsyncs - before


def test_concurrent_commits_share_fsyncs_again_after_a_long_run_of_lone_ones(
    tmp_path: Path, fast_disk: None
) -> None:
    path = tmp_path / "data.jsonl"
    taken: list[int] = []

    async def steps(journal: Journal) -> None:
        await lone_commits(journal, 0, 10 * PROBE_EVERY)
        assert journal._grouping.given_up
        # Ready at once while the turn is given up: the lone commits before
        # the next one that offers it sync alone; that one finds company,
        # and all the rest join its group.
        taken.append(await concurrent_commits(journal, 1000, 50))
        # Company brought the turn back: the next burst is one group again.
        taken.append(await concurrent_commits(journal, 2000, 50))

    run(path, steps)
    assert taken[0] <= PROBE_EVERY, f"50 concurrent commits took {taken[0]} fsyncs"
    assert taken[1] == 1, f"with the turn back, 50 concurrent commits took {taken[1]} fsyncs"
    assert len(state(path)) == 10 * PROBE_EVERY + 100


def test_while_the_turn_is_given_up_two_ready_commits_sync_apart(
    tmp_path: Path, fast_disk: None
) -> None:
    path = tmp_path / "data.jsonl"
    taken: list[int] = []

    async def steps(journal: Journal) -> None:
        # Before any run of lone commits, two that are ready share a group.
        taken.append(await concurrent_commits(journal, 0, 2))
        await lone_commits(journal, 10, LONE_TURNS + 1)
        taken.append(await concurrent_commits(journal, 100, 2))

    run(path, steps)
    assert taken == [1, 2]
    assert len(state(path)) == LONE_TURNS + 5


def test_a_commit_that_gives_up_the_turn_and_fails_to_sync_is_refused_and_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_disk: None
) -> None:
    fails_at = LONE_TURNS + 3  # given up by then, and not a probing commit
    monkeypatch.setenv(FAILPOINT, f"fsync-error@{fails_at}:1")
    monkeypatch.setattr("sessiond.failpoints._failpoints", None)
    path = tmp_path / "data.jsonl"
    undone: list[int] = []

    async def steps(journal: Journal) -> None:
        await lone_commits(journal, 0, fails_at - 1)
        assert journal._grouping.given_up
        with pytest.raises(ReadOnly, match="fsync failed"):
            await journal.commit(put_line(session(99)), lambda: undone.append(99))
        assert journal._writer._thread is None, "the failed fsync ran on the loop"
        with pytest.raises(ReadOnly):
            await journal.commit(put_line(session(100)), lambda: undone.append(100))

    run(path, steps)
    assert undone == [99, 100]
    assert sorted(state(path)) == sorted(f"s{i}" for i in range(fails_at - 1)), (
        "the refused line was cut from the file"
    )


@pytest.mark.skipif(not hasattr(os, "RWF_DSYNC"), reason="this system has no pwritev2(RWF_DSYNC)")
def test_a_lone_writer_on_a_slow_disk_syncs_on_the_loop_once_nobody_joins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every fsync counts as slow, and the write and sync is one call.
    monkeypatch.setattr("sessiond.journal.INLINE_SYNC_MAX", 0.0)
    monkeypatch.setattr(diskio, "_rwf_dsync", os.RWF_DSYNC)
    real_pwritev = os.pwritev
    on_loop: list[bool] = []

    def pwritev(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return real_pwritev(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "pwritev", pwritev)
    path = tmp_path / "data.jsonl"

    async def steps(journal: Journal) -> None:
        await lone_commits(journal, 0, LONE_TURNS + 2 * PROBE_EVERY)

    run(path, steps)
    # While lone commits offer the turn, a slow disk's fsyncs run in the
    # writer thread; once they no longer do, on the loop, but for the one
    # in PROBE_EVERY that still offers it.
    probing = [True] * (PROBE_EVERY - 1) + [False]
    assert on_loop == [False] * LONE_TURNS + probing * 2
    assert len(state(path)) == LONE_TURNS + 2 * PROBE_EVERY


# -- a real daemon ------------------------------------------------------------


def test_a_lone_writer_past_the_turn_is_refused_not_acknowledged_when_its_fsync_fails(
    make_daemon: Callable[..., Daemon],
) -> None:
    fails_at = LONE_TURNS + 3
    d = make_daemon("--fsync", "always", env={FAILPOINT: f"fsync-error@{fails_at}:1"})
    acked: dict[str, Session] = {}
    with d.client() as c:
        for i in range(fails_at - 1):
            s = c.create(id=f"k{i}")
            acked[s.id] = s
        with pytest.raises(ReadOnly, match="journal fsync failed"):
            c.create(id="refused")
        with pytest.raises(SessionNotFound):
            c.get("refused")
    d.kill()
    del d.extra_env[FAILPOINT]
    d.start()
    assert stored(d) == acked
