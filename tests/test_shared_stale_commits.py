"""Shared mode: a change computed on records that another host changed
before it was committed never lands as it was computed, and nothing
answered on that reading shows a state the session never had.

The race is made deterministic with the engine's own ``CLIENT PAUSE
WRITE``: reads go on, so each host reads its records, and its commit
(a script, which the engine counts as a write) waits; the engine lets the
waiting commits go in the order they came once ``CLIENT UNPAUSE`` is sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sessionctl import Client, Session
from tests.conftest import Daemon, wait_until
from tests.redis_servers import RedisNode

# A meta this big makes a commit's arguments (its events carry the session)
# tell it from the daemons' own small scripts (the expiry lease, the timer),
# which a pause of the engine's writes holds too.
BIG = "x" * 4000


def _commits_waiting(node: RedisNode) -> int:
    """Commits (scripts carrying a session with ``BIG``) the paused engine holds."""
    count = 0
    for line in node.cli("CLIENT", "LIST").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("cmd") == "evalsha" and "b" in fields.get("flags", "") \
                and int(fields.get("argv-mem", "0")) > len(BIG):
            count += 1
    return count


class _InThread:
    """``work()`` in a thread; ``result()`` its value (or raises its error)."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = work()
            except BaseException as exc:  # handed to result()
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 20) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request did not finish"
        if self._error is not None:
            raise self._error
        return self._value


@contextmanager
def _writes_paused(node: RedisNode) -> Iterator[Callable[[Callable[[], Any]], _InThread]]:
    """While the block runs, the engine holds every write; ``send(work)``
    runs ``work`` in a thread and returns once its commit waits, after the
    commits sent before it. The engine lets them go, in that order, at the
    block's end."""
    node.cli("CLIENT", "PAUSE", "30000", "WRITE")
    sent: list[_InThread] = []

    def send(work: Callable[[], Any]) -> _InThread:
        sent.append(_InThread(work))
        wait_until(lambda: _commits_waiting(node) >= len(sent), 15,
                   f"commit {len(sent)} to wait in the paused engine")
        return sent[-1]

    try:
        yield send
    finally:
        node.cli("CLIENT", "UNPAUSE")


def _two_hosts(make_redis: Callable[..., RedisNode],
               make_daemon_on: Callable[..., Daemon]) -> tuple[RedisNode, Client, Client]:
    node = make_redis()
    a = make_daemon_on(backend=node.url)
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    return node, a.client(), b.client()


def test_a_change_read_before_its_session_was_made_again_is_made_on_the_new_one(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    # Host a reads s at version 1; host b deletes s and makes it again
    # (version 1 again) before a's set is committed. a's set must be made
    # on the new session, not land on it with the old one's meta.
    node, a, b = _two_hosts(make_redis, make_daemon_on)
    with a, b:
        a.create(id="s", ttl=600, meta={"old": BIG})

        def remake() -> Session:
            with b.pipeline() as p:
                p.delete("s")
                made = p.create(id="s", ttl=60, meta={"new": BIG})
            return made.result()

        with _writes_paused(node) as send:
            remade = send(remake)
            changed = send(lambda: a.set("s", "k", 1))
        new = remade.result()
        answered = changed.result()
        now = a.get("s")

    assert now.meta == {"new": BIG, "k": 1}
    assert (now.created_at_us, now.ttl, now.version) == (new.created_at_us, 60, 2)
    assert answered == now


def test_a_read_after_a_change_that_lost_a_race_answers_what_the_session_became(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    # A pipeline's set and get reach host a together and are read together;
    # host b's set is committed first, so a's set is made again on top of
    # it. The get must answer what the session became, not the version a's
    # first reading would have made, which the session never had.
    node, a, b = _two_hosts(make_redis, make_daemon_on)
    with a, b:
        a.create(id="s", ttl=600, meta={"big": BIG})

        def set_and_get() -> tuple[Session, Session]:
            with a.pipeline() as p:
                changed = p.set("s", "by", "a")
                read = p.get("s")
            return changed.result(), read.result()

        with _writes_paused(node) as send:
            first = send(lambda: b.set("s", "first", "b"))
            pipelined = send(set_and_get)
        assert first.result().version == 2
        changed, read = pipelined.result()
        now = a.get("s")

    assert now.meta == {"big": BIG, "first": "b", "by": "a"} and now.version == 3
    assert changed == now
    assert read == now
