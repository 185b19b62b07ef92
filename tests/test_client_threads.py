"""One ``Client`` shared by threads, as redis-py's and httpx's are: every
answer goes to the thread that asked, and is the right one.

Eight threads make 500 mixed requests each on one client, against a real
daemon. Each thread owns the sessions of its own user and keeps a model of
them (values and versions), so every answer can be checked exactly: the
right session, the right values, the right version.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from sessionctl import Client, SessionNotFound
from sessiond.model import Session
from tests.conftest import Daemon
from tests.threads import in_threads

THREADS = 8
OPERATIONS = 500


class Owner:
    """One thread's sessions and what the daemon must say about them."""

    def __init__(self, c: Client, n: int) -> None:
        self.c = c
        self.user = f"thread-{n}"
        self.rng = random.Random(n)
        self.model: dict[str, tuple[int, dict[str, Any]]] = {}  # creation order

    def check(self, s: Session, sid: str, version: int, meta: dict[str, Any]) -> None:
        assert (s.id, s.user, s.version, s.meta) == (sid, self.user, version, meta), (
            f"{self.user} got {s.id} v{s.version} {s.meta} by {s.user}; "
            f"expected {sid} v{version} {meta}"
        )
        self.model[sid] = (version, meta)

    def pick(self) -> tuple[str, int, dict[str, Any]]:
        sid = self.rng.choice(list(self.model))
        version, meta = self.model[sid]
        return sid, version, meta

    def step(self, i: int) -> None:
        c = self.c
        op = "create" if len(self.model) < 3 else self.rng.choice(
            ["create", "get", "get", "set", "set", "unset", "refresh", "list", "delete", "pipe"]
        )
        if op == "create":
            s = c.create(user=self.user, ttl=3600, meta={"born": str(i)})
            self.check(s, s.id, 1, {"born": str(i)})
            return
        sid, version, meta = self.pick()
        if op == "unset" and not meta:
            op = "set"
        if op == "get":
            self.check(c.get(sid), sid, version, meta)
        elif op == "set":
            value = f"{self.user}-{i}"
            self.check(c.set(sid, f"k{i % 4}", value), sid, version + 1,
                       {**meta, f"k{i % 4}": value})
        elif op == "unset":
            key = self.rng.choice(list(meta))
            rest = {k: v for k, v in meta.items() if k != key}
            self.check(c.unset(sid, key, expect_version=version), sid, version + 1, rest)
        elif op == "refresh":
            self.check(c.refresh(sid, ttl=7200), sid, version + 1, meta)
        elif op == "list":
            sessions, cursor = c.list_page(user=self.user)
            assert cursor is None
            assert [s.id for s in sessions] == list(self.model)
            for s in sessions:
                self.check(s, s.id, *self.model[s.id])
        elif op == "delete":
            assert c.delete(sid) == sid
            del self.model[sid]
            with pytest.raises(SessionNotFound):
                c.get(sid)
        else:
            value = f"piped-{i}"
            with c.pipeline() as p:
                before = p.get(sid)
                after = p.set(sid, "piped", value)
                page = p.list_page(user=self.user, limit=1)
            self.check(before.result(), sid, version, meta)
            self.check(after.result(), sid, version + 1, {**meta, "piped": value})
            first = next(iter(self.model))
            assert [s.id for s in page.result()[0]] == [first]


def test_eight_threads_sharing_one_client_each_get_their_own_right_answers(
    daemon: Daemon,
) -> None:
    done = [0] * THREADS
    with daemon.client() as c:

        def run(n: int) -> None:
            owner = Owner(c, n)
            for i in range(OPERATIONS):
                owner.step(i)
                done[n] += 1

        in_threads(run, THREADS, 100, "a thread is stuck")
        assert done == [OPERATIONS] * THREADS
        # The connection is still in step afterwards.
        assert c.ping().pid == c.server_pid
