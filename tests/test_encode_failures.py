"""A failure after the store applied a change (encoding the reply, encoding
the journal line) reverts the change: memory never runs ahead of the journal.

The failures are real ones injected where they happen: the failpoints
``reply-encode-error`` and ``line-encode-error`` make the encoder raise the
``OverflowError`` msgpack raises for an integer it cannot carry. The daemon
is waited for by its log, so that the K-th encoding a failpoint names is
the K-th this test causes (the first is the client's hello).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sessiond.errors import InternalError
from tests.conftest import FAILPOINT, Daemon, restarted, stored, wait_until

pytestmark = pytest.mark.local_only(
    "journal lines and replies that cannot be encoded, and their revert"
)


def started(make_daemon: Callable[..., Daemon], failpoint: str) -> Daemon:
    """A daemon no request has reached yet (so the failpoint's count is ours)."""
    d = make_daemon(env={FAILPOINT: failpoint}, start=False)
    d.start(wait=False)
    wait_until(lambda: "ready on" in d.log_text() or d.proc is None or d.proc.poll() is not None,
               15, "sessiond to say it is ready")
    assert "ready on" in d.log_text(), d.log_text()
    return d


def test_a_write_whose_reply_cannot_be_encoded_is_reverted_and_answered_internal_error(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Replies: 1 hello, 2 create, 3 the set that fails.
    d = started(make_daemon, "reply-encode-error@3:1")
    with d.client() as c:
        made = c.create(id="a", meta={"k": "before"})
        with pytest.raises(InternalError, match="could not be encoded"):
            c.set("a", "k", "after")
        # The same connection goes on serving, and the set left no trace.
        assert c.get("a") == made
        later = c.set("a", "n", 1)
        assert later.version == made.version + 1 and later.meta == {"k": "before", "n": 1}
        assert c.stats().write_errors == 0
    assert d.log_text().count("Traceback") == 1
    assert stored(restarted(d)) == {"a": later}


def test_in_a_pipeline_only_the_request_whose_reply_fails_is_reverted(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Replies: 1 hello, 2 create, then the pipeline: 3 set x, 4 set y (fails).
    d = started(make_daemon, "reply-encode-error@4:1")
    with d.client() as c:
        c.create(id="a")
        with c.pipeline() as p:
            x = p.set("a", "x", 1)
            y = p.set("a", "y", 2)
            z = p.set("a", "z", 3)
            seen = p.get("a")
        assert x.result().meta == {"x": 1}
        with pytest.raises(InternalError):
            y.result()
        assert z.result().meta == {"x": 1, "z": 3} and z.result().version == 3
        assert seen.result() == z.result()
        assert c.get("a") == z.result()
    assert stored(restarted(d)) == {"a": z.result()}


def test_a_batch_whose_journal_lines_cannot_be_encoded_is_reverted_and_reads_recomputed(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Journal encodings: 1 the create, 2 the pipelined batch (one for all).
    d = started(make_daemon, "line-encode-error@2:1")
    with d.client() as c:
        made = c.create(id="a", meta={"k": "v"})
        with c.pipeline() as p:
            first = p.set("a", "x", 1)
            between = p.get("a")
            second = p.set("a", "y", 2)
        for refused in (first, second):
            with pytest.raises(InternalError, match="journal"):
                refused.result()
        # The read that followed a refused write in the same batch is
        # answered with the state that stands, not with the write it saw.
        assert between.result() == made
        assert c.get("a") == made
        after = c.set("a", "z", 3)
        assert after.version == made.version + 1
    assert d.log_text().count("Traceback") == 1
    assert stored(restarted(d)) == {"a": after}


def test_an_expiry_whose_line_cannot_be_encoded_is_reverted_and_retried(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Journal encodings: 1 the create, 2 the timer's expiry (fails), 3 its retry.
    d = started(make_daemon, "line-encode-error@2:1")
    with d.client() as c:
        c.create(id="short", ttl=1)
        # Nothing reads the session (a read would expire it itself): the
        # timer does, fails once, and tries again.
        wait_until(lambda: "internal error" in d.log_text(), 15, "the failed expiry")
        wait_until(lambda: c.stats().expiries_done == 1, 15, "the expiry to be retried")
        assert d.proc is not None and d.proc.poll() is None
        expired = c.get("short")
        assert expired.status == "expired" and expired.version == 2
    assert stored(restarted(d)) == {"short": expired}
