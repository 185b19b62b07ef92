"""Helpers of the shared-mode tests (``tests/test_shared_*.py``): the daemons
of one namespace, a watch in a thread, the engine read behind the daemons'
backs (``engine_state`` reads a local journal too), a daemon's figures.

The daemons themselves come from ``tests/conftest.py`` (``make_daemon``,
``namespace=`` to share one, ``backend=`` to use a Redis of the test's own
from ``make_redis``).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sessiond.errors import SessionError
from sessiond.model import iso
from sessiond.protocol import Event, StatsInfo
from tests.conftest import Daemon
from tests.threads import take_until


class Watching:
    """``Client.watch()`` of one daemon running in a thread, its events in a
    queue; ``after`` resumes after an event's cursor."""

    def __init__(self, d: Daemon, user: str | None = None, after: str | None = None) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(d, user, after), daemon=True)
        self._thread.start()

    def _run(self, d: Daemon, user: str | None, after: str | None) -> None:
        try:
            with d.client() as c:
                for event in c.watch(user=user, after=after):
                    self.events.put(event)
        except BaseException as exc:  # the test looks at it (the daemon stopped, ...)
            self.error = exc

    def until(self, done: Callable[[Event], bool], timeout: float = 15,
              what: str = "a matching event") -> list[Event]:
        """Events up to and including the first for which ``done`` is true."""
        def saw(seen: list[Event]) -> str:
            last = ", ".join(f"{e.kind} {e.sid}" for e in seen[-5:])
            return f"{len(seen)} events (last: {last}), error {self.error!r}"

        return take_until(self.events, done, timeout, what, saw)

    def count(self, n: int, timeout: float = 15) -> list[Event]:
        """The next ``n`` events."""
        seen: list[Event] = []
        self.until(lambda e: seen.append(e) is None and len(seen) >= n, timeout,
                   f"{n} events")
        return seen

    def ended(self, timeout: float = 10) -> BaseException | None:
        """Wait for the watch to end (its daemon stopped); what ended it."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the watch did not end with the daemon"
        return self.error

    def nothing_more(self, within: float = 0.0) -> list[Event]:
        """Whatever arrived besides (``within``: how long to wait for more
        first; the tests pass an end marker they waited for instead)."""
        extra: list[Event] = []
        deadline = time.monotonic() + within
        while True:
            try:
                extra.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return extra

    def started(self, d: Daemon, timeout: float = 15) -> None:
        """Wait until the daemon counts this watcher (it reads the stream
        from then on)."""
        def counted() -> bool:
            if self.error is not None:
                raise AssertionError(f"the watch failed: {self.error!r}")
            return figures(d).watchers >= 1

        from tests.conftest import wait_until

        wait_until(counted, timeout, "the daemon to count the watcher")


def figures(d: Daemon) -> StatsInfo:
    """``Client.stats()`` of ``d`` (cheaper than a ``sessionctl`` run, for
    polling)."""
    with d.client() as c:
        return c.stats()


def stats(d: Daemon) -> dict[str, Any]:
    """``sessionctl stats --json`` of ``d``, read as JSON (it must answer)."""
    r = d.ctl("stats", "--json")
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def hosts(make_daemon: Callable[..., Daemon], n: int = 2) -> list[Daemon]:
    """``n`` daemons started on one namespace: ``n`` hosts of one fleet."""
    first = make_daemon()
    return [first, *(make_daemon(namespace=first.namespace) for _ in range(n - 1))]


def create(d: Daemon, *args: str) -> str:
    """A new session's id, made through ``sessionctl create`` on ``d``."""
    r = d.ctl("create", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def get_json(d: Daemon, sid: str) -> dict[str, Any]:
    r = d.ctl("get", sid, "--json")
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


@contextmanager
def redis_of(url: str, cluster: bool = False) -> Iterator[Any]:
    """A redis-py client of the engine at ``url``, to read (or set up) what
    the daemons cannot show."""
    import redis

    client: Any = (redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url))
    try:
        yield client
    finally:
        client.close()


def engine_of(d: Daemon) -> Any:
    """``redis_of`` for ``d``'s engine."""
    assert d.engine.backend is not None
    return redis_of(d.engine.backend, d.engine.name == "cluster")


def engine_time_us(client: Any, key: str) -> int:
    """The engine's clock (``TIME``) on the node that holds ``key``'s slot,
    in microseconds."""
    import redis

    if isinstance(client, redis.RedisCluster):
        node = client.get_node_from_key(key)
        seconds, micros = client.time(target_nodes=node)
    else:
        seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def tag(d: Daemon) -> str:
    """The prefix of ``d``'s namespace's keys in the engine."""
    return "sd:{" + d.namespace + "}:"


def engine_state(d: Daemon) -> dict[str, dict[str, Any]]:
    """Every session as ``d``'s engine holds it, read behind the daemon's
    back (so that no read expires anything lazily): the last journal line
    of each id, or the session's hash in the shared engine, in the legacy
    record shape (times as ISO text)."""
    state: dict[str, dict[str, Any]] = {}
    if not d.engine.shared:
        if not d.journal.exists():
            return state
        for line in d.journal_bytes().decode().splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("type") == "delete":
                    state.pop(record["id"], None)
                else:
                    state[record["id"]] = record
        return state
    prefix = tag(d)
    with engine_of(d) as client:
        # The creation order: buckets of 128 sequence numbers (layout 2).
        top = int(client.hget(prefix + "counters", "seq") or 0)
        order: dict[int, str] = {}
        for bucket in range(top // 128 + 1):
            for seq, raw in client.hgetall(f"{prefix}o:{bucket}").items():
                order[int(seq)] = raw.decode()
        for _, sid in sorted(order.items()):
            h = {k.decode(): v.decode() for k, v in client.hgetall(prefix + "s:" + sid).items()}
            if not h:
                continue
            record = {
                "id": sid, "user": h["u"], "status": "expired" if "x" in h else "active",
                "ttl": int(h["t"]), "meta": json.loads(h["m"]),
                "created_at": iso(int(h["c"])), "last_access": iso(int(h["a"])),
                "expires_at": iso(int(h["e"])), "version": int(h["v"]),
            }
            if "x" in h:
                record["expired_at"] = iso(int(h["x"]))
            state[sid] = record
    return state


def fails(what: Callable[[], object]) -> SessionError:
    """The ``SessionError`` ``what`` raises (it must raise one)."""
    try:
        what()
    except SessionError as exc:
        return exc
    raise AssertionError("expected a SessionError")
