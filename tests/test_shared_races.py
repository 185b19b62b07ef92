"""Shared mode: two hosts racing on one session never lose an update, and a
compare and set (``expect_version``) holds across hosts."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from sessionctl import Client
from sessiond.errors import Conflict
from tests.conftest import Daemon
from tests.fleet import create, get_json, hosts
from tests.threads import in_threads

pytestmark = pytest.mark.shared_only("daemons racing on the sessions of one namespace")

THREADS = 3  # per daemon, each with a client of its own
SETS = 30  # per thread


def _race(daemons: list[Daemon], work: Callable[[Client, int], None]) -> None:
    """``work(client, n)`` in THREADS threads per daemon, started together,
    each with a client of its own; re-raises the first failure."""

    def run(n: int) -> None:
        with daemons[n // THREADS].client() as c:
            work(c, n)

    in_threads(run, THREADS * len(daemons), 120, "a racing thread did not finish")


def test_sets_racing_from_two_hosts_on_one_session_all_land(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    sid = create(a)

    def sets(c: Client, n: int) -> None:
        for i in range(SETS):
            c.set(sid, f"k{n}-{i}", str(i))

    _race([a, b], sets)
    final = get_json(b, sid)
    assert final["meta"] == {f"k{n}-{i}": str(i) for n in range(2 * THREADS)
                             for i in range(SETS)}
    assert final["version"] == 1 + 2 * THREADS * SETS


def test_pipelined_sets_racing_from_two_hosts_all_land(
    make_daemon: Callable[..., Daemon],
) -> None:
    # A pipeline reaches the daemon as one batch: every request of it on
    # the session is committed at once, and all of them are refused when
    # the other host got there first; each must then be made again.
    a, b = hosts(make_daemon)
    sid = create(a)

    def sets(c: Client, n: int) -> None:
        for round_ in range(3):
            with c.pipeline() as p:
                replies = [p.set(sid, f"p{n}-{round_}-{i}", "v") for i in range(10)]
            for r in replies:
                r.result()

    _race([a, b], sets)
    final = get_json(a, sid)
    assert len(final["meta"]) == 2 * THREADS * 3 * 10
    assert final["version"] == 1 + 2 * THREADS * 3 * 10


def test_a_stale_expected_version_on_another_host_is_a_conflict(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    sid = create(a)
    assert get_json(b, sid)["version"] == 1
    assert a.ctl("set", sid, "by", "a", "--expect-version", "1").returncode == 0

    stale = b.ctl("set", sid, "by", "b", "--expect-version", "1")
    assert stale.returncode == 1
    assert stale.stderr.startswith("sessionctl: error: ") and "version" in stale.stderr
    assert stale.stdout == ""
    stale = b.ctl("unset", sid, "by", "--expect-version", "1")
    assert stale.returncode == 1
    assert get_json(b, sid)["meta"] == {"by": "a"}

    assert b.ctl("set", sid, "by", "b", "--expect-version", "2").returncode == 0
    assert get_json(a, sid)["meta"] == {"by": "b"}
    assert get_json(a, sid)["version"] == 3


def test_compare_and_set_racing_from_two_hosts_lets_exactly_one_win_each_round(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    sid = create(a)
    rounds = 20
    wins: list[tuple[int, int]] = []
    lock = threading.Lock()

    def cas(c: Client, n: int) -> None:
        for r in range(rounds):
            # Everyone aims at the version the round starts at: one
            # set per round can match it.
            try:
                c.set(sid, "winner", str(n), expect_version=1 + r)
            except Conflict:
                pass
            else:
                with lock:
                    wins.append((r, n))
            # Wait for the round's winner to be visible before the next.
            while c.get(sid).version < 2 + r:
                pass

    _race([a, b], cas)
    assert sorted(r for r, _ in wins) == list(range(rounds)), wins
    final = get_json(b, sid)
    assert final["version"] == 1 + rounds
    assert final["meta"]["winner"] == str(dict(wins)[rounds - 1])


def test_two_hosts_creating_one_id_at_once_make_one_session(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    made: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def creates(c: Client, n: int) -> None:
        for i in range(10):
            try:
                c.create(id=f"race-{i}", meta={"by": str(n)})
            except Conflict:
                with lock:
                    refused.append(f"race-{i}")
            else:
                with lock:
                    made.append(f"race-{i}")

    _race([a, b], creates)
    assert sorted(made) == [f"race-{i}" for i in range(10)]
    assert len(refused) == 10 * (2 * THREADS - 1)
    for i in range(10):
        assert get_json(a, f"race-{i}")["version"] == 1
