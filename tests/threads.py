"""Tests' work in threads: several let go at once (``in_threads``), and what
a thread hands over in a queue, read up to a match (``take_until``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


def take_until(items: queue.Queue[Any], done: Callable[[Any], bool], timeout: float,
               what: str, saw: Callable[[list[Any]], str]) -> list[Any]:
    """The items a thread puts in ``items`` (events, a child's lines) up to
    and including the first for which ``done`` is true. Fails when none is
    within ``timeout`` seconds, or at ``None``, which ends what will come;
    ``saw`` describes what came before."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            item = items.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {what} within {timeout}s; saw {saw(seen)}") from None
        if item is None:
            raise AssertionError(f"it ended before {what}; saw {saw(seen)}")
        seen.append(item)
        if done(item):
            return seen


def in_threads(work: Callable[[int], None], n: int, timeout: float, stuck: str) -> None:
    """``work(i)`` for each ``i`` below ``n``, each in a thread of its own,
    all let go at once; fails saying ``stuck`` when one has not finished
    after ``timeout`` seconds, and re-raises the first failure."""
    errors: list[BaseException] = []
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            gate.wait(30)
            work(i)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), stuck
    if errors:
        raise errors[0]
