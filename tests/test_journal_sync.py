"""How an ``always`` commit reaches the disk: the write and its sync in one
system call (pwritev2 with RWF_DSYNC); an fdatasync of the whole file where
earlier writes still wait for one (just after a switch from everysec, or
while the everysec syncer is at it); an fsync of the file and one of its
directory when the journal is opened;
write and fdatasync where the flag is refused; and how failures are named.
The calls are real; the tests watch them go by."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessiond import diskio, failpoints
from sessiond.errors import ReadOnly
from sessiond.journal import Journal
from sessiond.model import Session
from sessiond.records import put_line
from tests.conftest import Daemon, stored
from tests.test_journal import session, state

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "RWF_DSYNC"), reason="this system has no pwritev2(RWF_DSYNC)"
    ),
    pytest.mark.local_only("the journal's system calls under each fsync policy"),
]


class Calls:
    """The journal's disk calls, recorded on their way to the real ones."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[str] = []
        self.refuse_flag = False
        real_pwritev, real_fdatasync, real_fsync = os.pwritev, os.fdatasync, os.fsync

        def pwritev(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
            if flags and self.refuse_flag:
                self.seen.append("pwritev2 refused")
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
            self.seen.append("pwritev2 dsync" if flags == os.RWF_DSYNC else "pwritev")
            return real_pwritev(fd, buffers, offset, flags)

        def fdatasync(fd: int) -> None:
            self.seen.append("fdatasync")
            real_fdatasync(fd)

        def fsync(fd: int) -> None:
            self.seen.append("fsync")
            real_fsync(fd)

        monkeypatch.setattr(os, "pwritev", pwritev)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(diskio, "_sync_data", fdatasync)

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    # The flag may have been turned off by a refusal: each test starts with it.
    monkeypatch.setattr(diskio, "_rwf_dsync", os.RWF_DSYNC)
    yield Calls(monkeypatch)


def run(path: Path, steps: Callable[[Journal], Any], valid_end: int = 0) -> None:
    async def go() -> None:
        journal = Journal(path, "always")
        journal.open(valid_end, False)
        try:
            await steps(journal)
        finally:
            journal.close()

    anyio.run(go)


def test_an_always_commit_writes_and_syncs_in_one_system_call(
    tmp_path: Path, calls: Calls
) -> None:
    path = tmp_path / "data.jsonl"

    async def steps(journal: Journal) -> None:
        calls.take()
        for i in range(3):
            await journal.commit(put_line(session(i)), lambda: None)
            assert calls.take() == ["pwritev2 dsync"]
        assert journal.fsyncs == 3

    run(path, steps)
    assert list(state(path)) == ["s0", "s1", "s2"]


def test_the_first_always_commit_after_everysec_syncs_the_whole_file(
    tmp_path: Path, calls: Calls
) -> None:
    path = tmp_path / "data.jsonl"

    async def steps(journal: Journal) -> None:
        journal.policy = "everysec"
        await journal.commit(put_line(session(1)), lambda: None)
        # Written, not synced: the syncer would get to it within a second.
        assert "fdatasync" not in calls.take()
        journal.policy = "always"
        await journal.commit(put_line(session(2)), lambda: None)
        # Syncing the new bytes alone would leave the first line unsynced.
        assert calls.take()[-1] == "fdatasync"
        await journal.commit(put_line(session(3)), lambda: None)
        assert calls.take() == ["pwritev2 dsync"]

    run(path, steps)
    assert list(state(path)) == ["s1", "s2", "s3"]


def test_an_always_commit_while_the_everysec_syncer_runs_syncs_the_whole_file(
    tmp_path: Path, calls: Calls
) -> None:
    path = tmp_path / "data.jsonl"

    async def steps(journal: Journal) -> None:
        calls.take()
        # The syncer clears the dirty flag before its fsync, and holds this
        # lock until the fsync is done: the lines it covers are not on disk
        # yet, so a commit now must not sync its own bytes alone.
        async with journal._fd_lock:
            await journal.commit(put_line(session(1)), lambda: None)
        assert calls.take() == ["fdatasync"]
        await journal.commit(put_line(session(2)), lambda: None)
        assert calls.take() == ["pwritev2 dsync"]

    run(path, steps)
    assert list(state(path)) == ["s1", "s2"]


def test_a_refused_dsync_flag_falls_back_to_write_and_fdatasync_for_good(
    tmp_path: Path, calls: Calls
) -> None:
    path = tmp_path / "data.jsonl"
    calls.refuse_flag = True

    async def steps(journal: Journal) -> None:
        calls.take()
        await journal.commit(put_line(session(1)), lambda: None)
        first = calls.take()
        assert first[0] == "pwritev2 refused" and first[-1] == "fdatasync"
        await journal.commit(put_line(session(2)), lambda: None)
        assert "pwritev2 refused" not in calls.take(), "the flag is not tried again"
        assert journal.readonly.failed is None and journal.fsyncs == 2

    run(path, steps)
    assert list(state(path)) == ["s1", "s2"]


def test_a_failed_synced_write_is_cut_refused_and_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calls: Calls
) -> None:
    monkeypatch.setenv("SESSIOND_FAILPOINT", "fsync-error@2:1")
    monkeypatch.setattr(failpoints, "_failpoints", None)
    path = tmp_path / "data.jsonl"
    undone: list[int] = []

    async def steps(journal: Journal) -> None:
        await journal.commit(put_line(session(1)), lambda: None)
        with pytest.raises(ReadOnly, match="journal fsync failed: Input/output error"):
            await journal.commit(put_line(session(2)), lambda: undone.append(2))

    run(path, steps)
    assert undone == [2]
    assert list(state(path)) == ["s1"], "the refused line was cut from the file"


def test_a_synced_write_past_the_file_size_limit_is_named_a_write_failure(
    make_daemon: Callable[..., Daemon],
) -> None:
    def limit() -> None:
        # Below the first reservation: the lines are appended, synced as
        # they go, until one no longer fits.
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))

    d = make_daemon("--fsync", "always", start=False)
    d.start(preexec_fn=limit)
    acked: dict[str, Session] = {}
    with d.client() as c:
        with pytest.raises(ReadOnly) as refused:
            for i in range(100):
                acked[f"s{i}"] = c.create(id=f"s{i}", meta={"pad": "x" * 500})
        assert "journal write failed: File too large" in str(refused.value)
        assert len(acked) > 1
    d.kill()
    d.start()
    assert stored(d) == acked


def test_opening_syncs_what_a_killed_daemon_left_unsynced(tmp_path: Path, calls: Calls) -> None:
    path = tmp_path / "data.jsonl"
    # Lines a daemon under everysec wrote just before it was killed: in the
    # page cache, not yet on disk.
    left = put_line(session(1))
    path.write_bytes(left)

    async def steps(journal: Journal) -> None:
        # The file once, then its directory (the journal's name: a power
        # cut must not take the file away from under what is synced into it).
        assert calls.take() == ["fsync", "fsync"], "opening syncs the file and its directory"
        await journal.commit(put_line(session(2)), lambda: None)
        assert calls.take() == ["pwritev2 dsync"]

    run(path, steps, valid_end=len(left))
    assert list(state(path)) == ["s1", "s2"]
