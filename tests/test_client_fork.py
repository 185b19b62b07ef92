"""A ``Client`` used on both sides of ``os.fork()``: as with redis-py's
connection pool, the child never reads, writes or shuts down the connection
it inherited (its replies are the parent's), and its first call connects
afresh; the parent goes on as if nothing happened. Before, both read one
socket with the same request ids, and each took some of the other's answers
as its own.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sessionctl import Client, DaemonUnavailable, Event, SessionError
from tests.conftest import Daemon

pytestmark = pytest.mark.local_only("the client's connection, whatever the engine")

ROUNDS = 400


def in_child(work: Callable[[], Any]) -> tuple[int, Callable[[], Any]]:
    """Fork; the child runs ``work`` and hands its result (JSON) back. Returns
    the child's pid and a function that waits for that result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        status = 1
        try:
            os.close(read)
            try:
                result: Any = {"ok": work()}
            except BaseException as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write, "w") as out:
                json.dump(result, out)
            status = 0
        finally:
            os._exit(status)
    os.close(write)

    def result() -> Any:
        with os.fdopen(read) as got:
            text = got.read()
        _, status = os.waitpid(pid, 0)
        assert status == 0 and text, f"the child failed (status {status})"
        answer = json.loads(text)
        assert "error" not in answer, answer["error"]
        return answer["ok"]

    return pid, result


def gets(c: Client, ids: list[str], step: int) -> list[str]:
    """``ROUNDS`` gets, ``pipeline`` ones among them, each checked against the
    id it asked for, up to the first that goes wrong (an answer taken by the
    other process costs a timeout); what went wrong, in words."""
    for n in range(ROUNDS):
        sid = ids[(n * step) % len(ids)]
        try:
            if n % 10 == 0:
                with c.pipeline() as p:
                    asked = [(i, p.get(i)) for i in ids[:5]]
                wrong = [f"asked {i} got {a.result().id}" for i, a in asked if a.result().id != i]
                if wrong:
                    return wrong
            elif (got := c.get(sid).id) != sid:
                return [f"asked {sid} got {got}"]
        except SessionError as exc:
            return [f"{type(exc).__name__}: {exc}"]
    return []


def test_parent_and_child_each_get_their_own_answers_after_a_fork(daemon: Daemon) -> None:
    with daemon.client(timeout=5) as c:
        ids = [c.create(user=f"u{n}").id for n in range(20)]
        server_pid = c.server_pid

        def child() -> list[str]:
            wrong = gets(c, ids, 7)
            assert c.server_pid == server_pid  # connected afresh, to the same daemon
            c.close()  # closes what it inherited: the parent's goes on
            return wrong

        _, child_result = in_child(child)
        assert gets(c, ids, 3) == []
        assert child_result() == []
        # The child's close did not shut the parent's connection down.
        assert [c.get(i).id for i in ids] == ids


def test_a_watch_carried_across_a_fork_stays_the_parents(daemon: Daemon) -> None:
    with daemon.client(timeout=10) as c, daemon.client(timeout=10) as maker:
        watch = c.watch()
        first: queue.Queue[Event] = queue.Queue()
        # Its first event comes once it watches: sessions are made until then.
        reader = threading.Thread(target=lambda: first.put(next(watch)), daemon=True)
        reader.start()
        while reader.is_alive():
            maker.create(user="before")
            reader.join(0.05)
        first.get(timeout=10)

        def child() -> str:
            try:
                next(watch)
            except DaemonUnavailable as exc:
                return str(exc)
            return "the child read an event of its parent's"

        _, child_result = in_child(child)
        made = maker.create(user="after")
        said = child_result()
        assert "forked this one" in said and str(os.getpid()) in said, said
        # Every event still comes to the parent, the one made after the fork too.
        events: queue.Queue[Event] = queue.Queue()

        def read_until_made() -> None:
            for event in watch:
                events.put(event)
                if event.sid == made.id:
                    return

        threading.Thread(target=read_until_made, daemon=True).start()
        while (event := events.get(timeout=10)).sid != made.id:
            assert event.session is not None and event.session.user == "before"
        watch.close()
