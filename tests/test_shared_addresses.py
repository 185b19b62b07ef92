"""Shared mode: where the engine is. A Unix socket (``unix:///path``, with
``?db=N``), a database number in the URL, ``valkey://`` as another name
for ``redis://`` (on one node and on a Cluster), ``rediss://`` that means
TLS, and addresses that are no engine's: each refused with one clear
line at start."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Daemon
from tests.redis_servers import RedisNode, free_port


def _start_fails(d: Daemon) -> str:
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1, d.log_text()
    log = d.log_text()
    assert "Traceback" not in log
    assert not d.socket.exists()
    return log


def test_an_engine_on_a_unix_socket_serves_daemons_sharing_a_namespace(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    url = f"unix://{node.socket_path}"
    a = make_daemon_on(backend=url)
    b = make_daemon_on(backend=url, namespace=a.namespace)
    with a.client() as c:
        sid = c.create(meta={"via": "socket"}).id
    with b.client() as c:
        assert c.get(sid).meta == {"via": "socket"}
        st = c.stats()
    assert st.backend == f"unix://{node.socket_path} namespace {a.namespace}"
    assert st.backend_ok is True
    # Database 0, the URL's default.
    assert node.cli("EXISTS", "sd:{" + a.namespace + "}:s:" + sid).strip() == "1"


def test_a_database_number_in_the_url_keeps_the_sessions_there(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
) -> None:
    node = make_redis(unix=True)
    on_socket = make_daemon_on(backend=f"unix://{node.socket_path}?db=3")
    tcp = make_redis()
    on_tcp = make_daemon_on(backend=f"{tcp.url}/5")
    for d, engine, db in ((on_socket, node, "3"), (on_tcp, tcp, "5")):
        with d.client() as c:
            sid = c.create().id
        key = "sd:{" + d.namespace + "}:s:" + sid
        assert engine.cli("-n", db, "EXISTS", key).strip() == "1"
        assert engine.cli("-n", "0", "EXISTS", key).strip() == "0"


@pytest.mark.shared_only("valkey:// names the same engine as redis://")
def test_valkey_urls_are_redis_urls_by_another_name(
    make_daemon: Callable[..., Daemon],
) -> None:
    a = make_daemon()
    assert a.engine.backend is not None and a.engine.backend.startswith("redis://")
    valkey = "valkey://" + a.engine.backend.removeprefix("redis://")
    b = make_daemon(backend=valkey, namespace=a.namespace)
    with a.client() as c:
        sid = c.create(meta={"from": "redis"}).id
    with b.client() as c:
        assert c.get(sid).meta == {"from": "redis"}
        c.set(sid, "from", "valkey")
        assert (c.stats().backend or "").startswith("valkey://")
    with a.client() as c:
        assert c.get(sid).meta == {"from": "valkey"}


def test_a_tls_url_speaks_tls_and_a_plain_engine_is_refused_at_start(
    redis_single: RedisNode, make_daemon_on: Callable[..., Daemon],
) -> None:
    # valkeys:// is rediss:// by another name: one run covers both.
    url = f"valkeys://127.0.0.1:{redis_single.port}"
    log = _start_fails(make_daemon_on(backend=url, start=False))
    assert f"{url} cannot be reached" in log


@pytest.mark.parametrize("url, said", [
    ("ftp://127.0.0.1:1", "scheme 'ftp'"),
    ("redis://127.0.0.1:99999", "port"),
    ("redis://127.0.0.1:6379/x", "database"),
    ("unix://", "socket's path"),
    ("redis://127.0.0.1:1?timeout=3", "option 'timeout'"),
])
def test_a_url_that_names_no_engine_is_refused_at_start(
    make_daemon_on: Callable[..., Daemon], url: str, said: str,
) -> None:
    assert said in _start_fails(make_daemon_on(backend=url, start=False))


def test_an_engine_that_is_not_there_is_refused_at_start_at_once(
    make_daemon_on: Callable[..., Daemon],
) -> None:
    import time

    port = free_port()
    d = make_daemon_on(backend=f"redis://127.0.0.1:{port}", start=False)
    t = time.monotonic()
    log = _start_fails(d)
    assert time.monotonic() - t < 3.0, "a refused connection should not wait for a timeout"
    assert f"redis://127.0.0.1:{port} cannot be reached" in log
