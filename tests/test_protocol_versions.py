"""Protocol versions, both ways, against real daemons: a client of today
and a daemon that speaks only version 1 (the ``protocol-v1`` failpoint
makes one, as the release before spoke), a client of version 1 (raw
frames) and a daemon of today; and what version 2 added, acks
(``returning="ack"``), on either engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from sessionctl import Ack, AsyncClient, InvalidRequest, Session, SessionNotFound
from sessiond.failpoints import FAILPOINT_ENV, PROTOCOL_V1
from sessiond.protocol import PROTOCOL_VERSION
from tests.conftest import Daemon
from tests.rawwire import Raw, request

V1_ONLY = {FAILPOINT_ENV: PROTOCOL_V1}
WHOLE_SESSION_KEYS = {"id", "user", "status", "ttl", "meta", "created_at", "last_access",
                      "expires_at", "expired_at", "version"}


def test_the_daemon_answers_the_lower_version_of_the_two(daemon: Daemon) -> None:
    with Raw(daemon.socket) as raw:
        assert raw.call(op="hello", id=1, version=1)["version"] == 1
    with Raw(daemon.socket) as raw:
        assert raw.call(op="hello", id=1, version=2)["version"] == 2
    with Raw(daemon.socket) as raw:
        # A newer client is answered in the daemon's own, which it then speaks.
        reply = raw.call(op="hello", id=1, version=PROTOCOL_VERSION + 5)
        assert reply["version"] == PROTOCOL_VERSION == 3


def test_a_hello_older_than_version_1_is_refused_naming_what_is_spoken(daemon: Daemon) -> None:
    with Raw(daemon.socket) as raw:
        reply = raw.call(op="hello", id=3, version=0)
    assert reply["r"] == "error" and reply["code"] == "unsupported"
    assert "protocol version 0 is not supported" in reply["message"]
    assert "speaks versions 1 to 3" in reply["message"]


def test_a_version_1_client_gets_whole_sessions_and_never_an_ack(daemon: Daemon) -> None:
    with Raw(daemon.socket) as raw:
        assert raw.call(op="hello", id=1, version=1, client="old")["version"] == 1
        made = raw.call(op="create", id=2, sid="old-1", meta={"a": 1})
        assert made["r"] == "session" and set(made["session"]) == WHOLE_SESSION_KEYS
        got = raw.call(op="set", id=3, sid="old-1", key="b", value=2)
        assert got["r"] == "session" and got["session"]["meta"] == {"a": 1, "b": 2}


@pytest.mark.parametrize("hello", [True, False], ids=["hello-v1", "no-hello"])
def test_returning_on_version_1_is_refused_clearly_and_changes_nothing(
    daemon: Daemon, hello: bool
) -> None:
    with daemon.client() as c:
        c.create(id="v1-set", meta={"k": "before"})
    with Raw(daemon.socket) as raw:
        if hello:
            raw.call(op="hello", id=1, version=1)
        # Pipelined, so that the refusals share a batch with a good request.
        raw.send(request(op="set", id=2, sid="v1-set", key="k", value="after", returning="ack")
                 + request(op="create", id=3, sid="v1-new", returning="ack")
                 + request(op="get", id=4, sid="v1-set"))
        refused = [raw.read_frame(), raw.read_frame()]
        got = raw.read_frame()
    for reply, rid in zip(refused, (2, 3), strict=True):
        assert reply is not None and reply["r"] == "error" and reply["id"] == rid
        assert reply["code"] == "invalid"
        assert "returning='ack' needs protocol version 2" in reply["message"]
        assert "this connection speaks version 1" in reply["message"]
    assert got is not None and got["session"]["meta"] == {"k": "before"}
    with daemon.client() as c:
        assert c.get("v1-set").version == 1
        with pytest.raises(SessionNotFound):
            c.get("v1-new")


def test_a_version_2_connection_gets_acks_for_each_operation_that_asks(daemon: Daemon) -> None:
    with Raw(daemon.socket) as raw:
        assert raw.call(op="hello", id=1, version=2)["version"] == 2
        made = raw.call(op="create", id=2, sid="v2", ttl=60, returning="ack")
        assert made["r"] == "ack" and made["ack"][:2] == ["v2", 1]
        assert made["ack"][3] is None
        for rid, fields in enumerate([
            {"op": "set", "sid": "v2", "key": "k", "value": 1},
            {"op": "unset", "sid": "v2", "key": "k"},
            {"op": "get", "sid": "v2", "touch": True},
            {"op": "refresh", "sid": "v2", "ttl": 120},
        ], start=3):
            reply = raw.call(id=rid, returning="ack", **fields)
            assert reply["r"] == "ack" and reply["id"] == rid
            assert reply["ack"][:2] == ["v2", rid - 1]  # each bumped the version
        expired = raw.call(op="expire", id=9, sid="v2", returning="ack")
        assert expired["ack"][3] is not None  # expired_at: it says so
        # Not asked: the whole session, as ever.
        assert raw.call(op="get", id=10, sid="v2")["r"] == "session"


def test_a_new_client_falls_back_to_version_1_and_makes_acks_of_sessions(
    make_daemon: Callable[..., Daemon],
) -> None:
    old = make_daemon(env=V1_ONLY)
    with Raw(old.socket) as raw:
        # The daemon refuses version 2 as the release before did.
        reply = raw.call(op="hello", id=1, version=2)
        assert reply["code"] == "unsupported"
        assert reply["message"].endswith("speaks version 1")
    with old.client() as c:
        assert c.protocol_version == 1
        made = c.create(user="alice", meta={"a": 1}, returning="ack")
        assert isinstance(made, Ack) and made.version == 1 and made.status == "active"
        ack = c.set(made.id, "b", 2, returning="ack")
        assert isinstance(ack, Ack) and ack.version == 2
        whole = c.get(made.id)
        assert isinstance(whole, Session) and whole.meta == {"a": 1, "b": 2}
        assert ack.expires_at == whole.expires_at
        with c.pipeline(returning="ack") as p:
            pend = [p.set(made.id, "n", n) for n in range(40)]
        assert [x.result().version for x in pend] == list(range(3, 43))
        assert all(isinstance(x.result(), Ack) for x in pend)


def test_a_new_async_client_falls_back_to_version_1(make_daemon: Callable[..., Daemon]) -> None:
    old = make_daemon(env=V1_ONLY)

    async def main() -> tuple[Any, Any, int | None]:
        c = AsyncClient(old.socket)
        # Asked before the connection opens: the daemon's version is not
        # known yet, and turns out to be 1.
        first = await c.create(id="async-old", returning="ack")
        async with c.pipeline(returning="ack") as p:
            pend = p.set("async-old", "k", 1)
        await c.aclose()
        return first, pend.result(), c.protocol_version

    first, second, version = anyio.run(main)
    assert version == 1
    assert isinstance(first, Ack) and first.id == "async-old" and first.version == 1
    assert isinstance(second, Ack) and second.version == 2


def test_the_client_asks_acks_of_a_daemon_of_version_2_or_later(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.protocol_version == PROTOCOL_VERSION == 3
        made = c.create(meta={"big": "x" * 1000}, returning="ack")
        assert isinstance(made, Ack) and made.version == 1
        assert isinstance(c.get(made.id, touch=True, returning="ack"), Ack)
        assert isinstance(c.refresh(made.id, returning="ack"), Ack)
        assert isinstance(c.unset(made.id, "big", returning="ack"), Ack)
        assert isinstance(c.set(made.id, "k", 1), Session)  # the default
        with c.pipeline(returning="ack") as p:
            acks = [p.set(made.id, "n", n) for n in range(100)]
            whole = p.get(made.id, returning="session")
            missing = p.set("no-such", "k", 1)
            more = p.set(made.id, "m", 1)
        assert [a.result().version for a in acks] == list(range(6, 106))
        assert isinstance(whole.result(), Session) and whole.result().version == 105
        with pytest.raises(SessionNotFound):
            missing.result()  # in its place
        assert more.result().version == 106
        with pytest.raises(InvalidRequest, match="returning must be 'session', 'ack' or None"):
            c.set(made.id, "k", 1, returning="all")  # type: ignore[call-overload]
        with pytest.raises(InvalidRequest, match="returning must be"):
            c.pipeline(returning="everything")  # type: ignore[call-overload]


def test_the_async_client_asks_acks_of_a_version_2_daemon(daemon: Daemon) -> None:
    async def main() -> tuple[Any, Any]:
        async with AsyncClient(daemon.socket) as c:
            made = await c.create(returning="ack")
            got = await c.set(made.id, "k", 1, returning="ack")
            return made, got

    made, got = anyio.run(main)
    assert isinstance(made, Ack) and isinstance(got, Ack) and got.version == 2


def test_the_cli_and_the_shim_print_whole_sessions(daemon: Daemon) -> None:
    out = daemon.ctl("create", "--id", "cli-whole", "--meta", "a=1", "--json")
    assert out.returncode == 0 and '"meta"' in out.stdout
    out = daemon.ctl("set", "cli-whole", "b", "2", "--json")
    assert out.returncode == 0 and '"b"' in out.stdout and '"user"' in out.stdout
