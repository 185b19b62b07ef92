"""Shared mode: daemons of one namespace are one session space, as two or
three hosts would be; daemons of different namespaces never see each
other, on the same engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Daemon
from tests.fleet import Watching, create, get_json, hosts, stats

pytestmark = pytest.mark.shared_only("daemons sharing (or not) a namespace of an engine")


def test_a_session_made_on_one_host_is_read_changed_expired_and_watched_on_the_others(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b, c = hosts(make_daemon, 3)
    watch = Watching(c)
    watch.started(c)

    sid = create(a, "--user", "alice", "--ttl", "600", "--meta", "cart=1")
    seen = get_json(b, sid)
    assert (seen["user"], seen["meta"], seen["version"]) == ("alice", {"cart": "1"}, 1)

    assert b.ctl("set", sid, "cart", "2").returncode == 0
    assert c.ctl("set", sid, "coupon", "x").returncode == 0
    assert a.ctl("unset", sid, "coupon").returncode == 0
    seen = get_json(c, sid)
    assert (seen["meta"], seen["version"]) == ({"cart": "2"}, 4)

    assert c.ctl("expire", sid).returncode == 0
    on_a, on_b = get_json(a, sid), get_json(b, sid)
    assert on_a == on_b
    assert on_a["status"] == "expired" and on_a["expired_at"] is not None

    assert b.ctl("delete", sid).returncode == 0
    gone = a.ctl("get", sid)
    assert gone.returncode == 1 and "not found" in gone.stderr

    events = watch.until(lambda e: e.kind == "deleted")
    assert [(e.kind, e.sid) for e in events] == [
        ("created", sid), ("updated", sid), ("updated", sid), ("updated", sid),
        ("expired", sid), ("deleted", sid),
    ]
    assert [e.session.version for e in events if e.session is not None] == [1, 2, 3, 4, 5, 5]


def test_a_list_on_any_host_holds_every_host_s_sessions_in_creation_order(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = hosts(make_daemon)
    made = [create(d) for d in (a, b, b, a, b)]
    for d in (a, b):
        r = d.ctl("list", "--json")
        assert r.returncode == 0, r.stderr
        import json

        assert [s["id"] for s in json.loads(r.stdout)] == made
    assert stats(a)["total_sessions"] == stats(b)["total_sessions"] == 5


def test_daemons_of_different_namespaces_never_see_each_other(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, a2 = hosts(make_daemon)
    b = make_daemon()
    assert a.namespace != b.namespace
    watch_b = Watching(b)
    watch_b.started(b)

    sid = create(a, "--id", "same-id", "--user", "alice", "--meta", "side=a")
    assert sid == "same-id"
    missing = b.ctl("get", sid)
    assert missing.returncode == 1 and "not found" in missing.stderr
    # The same id is free in the other namespace, and stays apart.
    assert create(b, "--id", "same-id", "--meta", "side=b") == "same-id"
    assert get_json(a2, sid)["meta"] == {"side": "a"}
    assert get_json(b, sid)["meta"] == {"side": "b"}

    assert a.ctl("config", "default_ttl", "77").returncode == 0
    assert get_json(a2, create(a2))["ttl"] == 77
    assert get_json(b, create(b))["ttl"] != 77

    assert b.ctl("delete", "same-id").returncode == 0
    assert get_json(a, "same-id")["meta"] == {"side": "a"}
    assert stats(a)["total_sessions"] == 2
    assert stats(b)["total_sessions"] == 1
    assert stats(a)["unique_users"] == 2 and stats(b)["unique_users"] == 1

    # b's watcher saw b's own three events, and none of a's.
    events = watch_b.until(lambda e: e.kind == "deleted")
    assert [e.kind for e in events] == ["created", "created", "deleted"]
    assert all(e.session is None or e.session.meta.get("side") != "a" for e in events)
