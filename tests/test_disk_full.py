"""A disk full (here: the file size limit, RLIMIT_FSIZE, which makes a write
fail with EFBIG as a full disk makes it fail with ENOSPC), then room again:
writes resume as soon as an append fits, without a restart and without the
full rewrite of the journal that a failed fsync needs. ``stats`` says why
writes are refused, and how much room a compaction would need.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import pytest

from sessionctl import Client
from sessiond.errors import ReadOnly, SessionNotFound
from sessiond.model import Session
from tests.conftest import Daemon, stored, wait_until

pytestmark = pytest.mark.local_only("a journal that cannot be written, then can")

PAD = "x" * 1000
UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def limit(pid: int, soft: int) -> None:
    """Set the daemon's file size limit, as an operator would with prlimit."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))


def writable(c: Client, sid: str) -> Session | None:
    try:
        return c.create(id=sid)
    except ReadOnly:
        return None


def test_writes_resume_by_an_append_once_there_is_room_again(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    assert d.proc is not None
    pid = d.proc.pid
    with d.client() as c:
        acked = {f"s{i}": c.create(id=f"s{i}", meta={"pad": PAD}) for i in range(40)}
        size = c.stats().journal_bytes
        # Below what the journal holds: neither an append nor a rewrite of
        # the journal (the same sessions, as many bytes) fits.
        limit(pid, size // 2)
        with pytest.raises(ReadOnly) as refused:
            c.create(id="refused", meta={"pad": PAD})
        assert "File too large" in str(refused.value)
        assert "room to append again" in str(refused.value)
        st = c.stats()
        assert st.read_only is not None and "File too large" in st.read_only
        # One line per session, all of them sampled: exactly the journal.
        assert st.compaction_needs_bytes == st.journal_bytes == size
        shown = d.ctl("stats")
        assert shown.returncode == 0 and "compaction needs" in shown.stdout
        wait_until(lambda: "compaction failed" in d.log_text(), 15, "a rewrite to be tried")
        assert writable(c, "still-refused") is None
        # Room again, for an append (and for a rewrite too: a file size
        # limit cannot tell them apart, so what is pinned is that the
        # append is what ends read-only mode, with no rewrite).
        limit(pid, size * 4)
        after = wait_until(lambda: writable(c, "after"), 15, "writes to be accepted again")
        acked["after"] = after
        acked["more"] = c.create(id="more", meta={"pad": PAD})
        st = c.stats()
        assert st.read_only is None and st.compactions == 0 and st.write_errors >= 1
        assert "room to append again" in d.log_text()
        for sid in ("refused", "still-refused"):
            with pytest.raises(SessionNotFound):
                c.get(sid)
    assert d.stop() == 0
    d.start()
    assert stored(d) == acked


def test_a_daemon_started_under_a_file_size_limit_below_its_journal_resumes_once_raised(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    with d.client() as c:
        acked = {f"s{i}": c.create(id=f"s{i}", meta={"pad": PAD}) for i in range(40)}
    size = len(d.journal_bytes())
    assert d.stop() == 0
    # Restarted with a soft limit under the journal's size: the first write
    # fails, and so does the rewrite that tries to end read-only mode.
    d.start(preexec_fn=lambda: resource.setrlimit(
        resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY)
    ))
    assert d.proc is not None
    with d.client() as c:
        assert c.get("s0") == acked["s0"]
        assert writable(c, "refused") is None
        wait_until(lambda: "compaction failed" in d.log_text(), 15, "a rewrite to be tried")
        assert writable(c, "still-refused") is None
        limit(d.proc.pid, resource.RLIM_INFINITY)
        acked["after"] = wait_until(lambda: writable(c, "after"), 15, "writes accepted again")
        assert c.stats().compactions == 0
    d.kill()
    d.start()
    assert stored(d) == acked


def test_a_rewrite_that_leaves_no_room_to_append_keeps_writes_refused_and_is_not_repeated(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Room for the journal as it is, not for one more line: a rewrite fits
    (every session is live, so it is as big as the journal) but leaves no
    room either. It must not end read-only mode, or every write would fail,
    start another full rewrite and end read-only mode again, for as long as
    writes keep coming."""
    d = make_daemon()
    assert d.proc is not None
    pid = d.proc.pid
    with d.client() as c:
        acked = {f"s{i}": c.create(id=f"s{i}", meta={"pad": PAD}) for i in range(40)}
        size = c.stats().journal_bytes
        limit(pid, size + 100)
        assert writable(c, "refused") is None
        wait_until(lambda: "compacted" in d.log_text(), 15, "a rewrite to be done")
        # Writes keep coming for a while: each is refused, and the journal
        # is not rewritten again and again meanwhile.
        tried = 0
        until = time.monotonic() + 3
        while time.monotonic() < until:
            assert writable(c, f"refused-{tried}") is None
            tried += 1
        st = c.stats()
        assert st.read_only is not None and "File too large" in st.read_only
        assert st.compactions <= 3, f"{st.compactions} rewrites for {tried} refused writes"
        assert "writes are accepted again" not in d.log_text()
        assert "rewritten in full, which freed no room to append" in d.log_text()
        # Room again: the next append is accepted.
        limit(pid, resource.RLIM_INFINITY)
        acked["after"] = wait_until(lambda: writable(c, "after"), 15,
                                    "writes to be accepted again")
    d.kill()
    d.start()
    assert stored(d) == acked
