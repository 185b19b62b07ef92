"""Shared mode: how a namespace's keys are laid out in the engine. The
creation order is kept in small hashes of 128 (``sd:{NS}:o:<n>``), which a
list walks in order, across buckets that removals emptied; a namespace
written in the first layout (a sorted set) is refused at start, by name."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Daemon
from tests.redis_servers import RedisNode


def test_the_creation_order_is_in_buckets_a_list_pages_through_even_emptied_ones(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    d = make_daemon_on(backend=node.url)
    tag = "sd:{" + d.namespace + "}:"
    with d.client() as c:
        with c.pipeline() as p:
            made = [p.create(ttl=3600) for _ in range(300)]
        sids = [m.result().id for m in made]
        assert node.cli("TYPE", tag + "o:1").strip() == "hash"
        assert node.cli("HLEN", tag + "o:1").strip() == "128"
        assert node.cli("EXISTS", tag + "order").strip() == "0"
        # The first bucket and a half emptied, and a hole in the last.
        with c.pipeline() as p:
            for sid in sids[:200] + sids[250:260]:
                p.delete(sid)
        assert node.cli("EXISTS", tag + "o:0").strip() == "0"
        kept = sids[200:250] + sids[260:]
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = c.list_page(limit=7, cursor=cursor)
            seen += [s.id for s in page]
            if cursor is None:
                break
        assert seen == kept
        assert [s.id for s in c.list()] == kept


def test_a_namespace_in_the_first_layout_is_refused_at_start_naming_it(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    namespace = "written-by-layout-1"
    node.cli("ZADD", "sd:{" + namespace + "}:order", "1", "0" * 32)
    d = make_daemon_on(backend=node.url, namespace=namespace, start=False)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1, d.log_text()
    log = d.log_text()
    assert "Traceback" not in log
    assert f"namespace {namespace}" in log and "layout 1" in log, log
    assert "export" in log and "import" in log
    assert not d.socket.exists()
