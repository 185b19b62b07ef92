"""A pipeline in a ``with`` block sends as it queues: the daemon answers
the first requests while the caller queues the next, the answers are
settled in their places, and a block that ends early leaves the
connection in step (or closed), never out of step."""

from __future__ import annotations

import threading

import pytest

from sessionctl import SessionNotFound
from sessionctl.pipeline import STREAM_EVERY
from tests.conftest import Daemon, wait_until


class Stop(Exception):
    pass


def test_requests_go_out_before_the_block_ends(daemon: Daemon) -> None:
    with daemon.client() as c, daemon.client() as other, c.pipeline() as p:
        for n in range(STREAM_EVERY):
            p.create(id=f"early-{n}")
        # The daemon has them (and answered) while the block is still open.
        assert wait_until(lambda: len(other.list()) == STREAM_EVERY, timeout=30)
        late = p.create(id="late")
    assert late.result().id == "late"


def test_answers_and_errors_keep_their_places(daemon: Daemon) -> None:
    with daemon.client() as c:
        made = c.create(id="places")
        with c.pipeline() as p:
            pend = [p.set(made.id, "n", n) if n % 7 else p.get(f"missing-{n}")
                    for n in range(10 * STREAM_EVERY + 3)]
        for n, x in enumerate(pend):
            if n % 7:
                assert x.result().meta["n"] == n
            else:
                with pytest.raises(SessionNotFound, match=f"missing-{n}"):
                    x.result()


def test_a_block_left_by_an_exception_leaves_the_connection_in_step(daemon: Daemon) -> None:
    with daemon.client() as c:
        made = c.create(id="in-step")
        with pytest.raises(Stop), c.pipeline() as p:
            sent = [p.set(made.id, "n", n) for n in range(3 * STREAM_EVERY + 5)]
            raise Stop
        # What went out was applied (whole frames only); what was still
        # queued was not; the next round trips read past the answers.
        got = c.get(made.id)
        assert got.version == 1 + 3 * STREAM_EVERY and got.meta["n"] == 3 * STREAM_EVERY - 1
        assert c.ping().pid > 0
        # The answers that came back were settled in their places.
        assert sent[0].result().version == 2
        with c.pipeline() as p:
            again = [p.get(made.id) for _ in range(2 * STREAM_EVERY)]
        assert all(x.result().version == got.version for x in again)


def test_a_request_sent_before_an_exception_ended_the_block_answers_when_asked(
    daemon: Daemon,
) -> None:
    """Not "not sent yet" for a request that was sent and carried out: a
    caller told so would send it again."""
    with daemon.client() as c:
        with pytest.raises(Stop), c.pipeline() as p:
            made = [p.create(id=f"asked-{n}") for n in range(STREAM_EVERY + 2)]
            raise Stop
        # Asked before anything else reads the connection.
        assert made[0].result().id == "asked-0"
        assert made[STREAM_EVERY - 1].result().id == f"asked-{STREAM_EVERY - 1}"
        for unsent in made[STREAM_EVERY:]:
            with pytest.raises(RuntimeError, match="not been sent"):
                unsent.result()
        assert c.get("asked-0").id == "asked-0"
        with pytest.raises(SessionNotFound):
            c.get(f"asked-{STREAM_EVERY}")


def test_a_discarded_pipeline_leaves_the_connection_in_step(daemon: Daemon) -> None:
    with daemon.client() as c:
        made = c.create(id="discarded")
        p = c.pipeline().__enter__()
        for n in range(2 * STREAM_EVERY + 1):
            p.set(made.id, "n", n)
        del p  # never executed: its sent requests' answers are read past
        assert c.set(made.id, "last", 1).version == 2 + 2 * STREAM_EVERY


def test_threads_share_a_client_while_one_streams(daemon: Daemon) -> None:
    with daemon.client() as c:
        made = c.create(id="shared")
        errors: list[BaseException] = []

        def others() -> None:
            try:
                for _ in range(200):
                    assert c.get(made.id).id == made.id
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=others)
        t.start()
        with c.pipeline() as p:
            pend = [p.set(made.id, "n", n) for n in range(20 * STREAM_EVERY)]
        t.join(60)
        assert not errors and not t.is_alive()
        assert [x.result().meta["n"] for x in pend] == list(range(20 * STREAM_EVERY))
