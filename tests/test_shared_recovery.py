"""Shared mode after the engine lost or refused something: daemons start
again on a namespace whose keys were flushed while they ran, reads go on
while the engine refuses writes, a ``max_lifetime`` whose scan failed is
finished by setting it again, and a session's key of another type is
refused by name.

Each test runs a Redis of its own (to flush, fill or damage it)."""

from __future__ import annotations

import json
from collections.abc import Callable

from sessiond.errors import ReadOnly
from sessiond.model import US
from tests.conftest import Daemon, wait_until
from tests.fleet import fails, figures, tag
from tests.redis_servers import RedisNode


def _engine_now(node: RedisNode) -> int:
    seconds, micros = node.cli("TIME").split()
    return int(seconds) * US + int(micros)


def test_a_daemon_starts_on_a_namespace_flushed_while_daemons_ran(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    """The running daemon's commits put the sequence number back in the
    counters, not the layout's mark: that is no namespace of the first
    layout (whose order is a sorted set), and a daemon started after must
    serve it."""
    node = make_redis(unix=True)
    a = make_daemon_on(backend=node.url)
    counters = tag(a) + "counters"
    with a.client() as c:
        c.create()
        node.flush()
        kept = c.create().id
    assert node.cli("HEXISTS", counters, "seq").strip() == "1"
    assert node.cli("HEXISTS", counters, "layout").strip() == "0"
    b = make_daemon_on(backend=node.url, namespace=a.namespace)
    assert "layout 1" not in b.log_text()
    assert node.cli("HGET", counters, "layout").strip() == "2"
    with b.client() as c:
        assert [s.id for s in c.list()] == [kept]
        made = c.create().id
    with a.client() as c:
        assert [s.id for s in c.list()] == [kept, made]
