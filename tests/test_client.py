"""The Python API: ``from sessionctl import Client``, one method per command,
typed results, errors as a small tree under ``SessionError``, pipelines.

One daemon serves the whole module; every test works on sessions of its own
(its own user or ids), so the tests do not see each other's state.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest

import sessionctl
from sessionctl import (
    CleanupResult,
    Client,
    CompactResult,
    Conflict,
    DaemonUnavailable,
    ImportResult,
    InvalidRequest,
    Pending,
    Session,
    SessionError,
    SessionExpired,
    SessionNotFound,
    StatsInfo,
)
from sessiond.protocol import PAGE_MAX, Pong
from tests.conftest import Daemon, Engine, running


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("client"), engine) as d:
        yield d


@pytest.fixture
def c(shared: Daemon) -> Iterator[Client]:
    with shared.client() as client:
        yield client


def test_client_finds_the_socket_through_sessiond_socket(
    shared: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIOND_SOCKET", str(shared.socket))
    with Client() as c:
        assert c.path == shared.socket
        assert c.ping().pid == shared.proc.pid  # type: ignore[union-attr]


def test_an_explicit_socket_wins_over_the_environment(
    shared: Daemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SESSIOND_SOCKET", str(tmp_path / "nothing-here.sock"))
    with Client(socket=shared.socket) as c:
        assert c.ping().pid > 0


def test_hello_records_the_daemon_version_and_pid(c: Client, shared: Daemon) -> None:
    from sessiond import __version__

    assert c.server_version == __version__
    assert c.server_pid == shared.proc.pid  # type: ignore[union-attr]


def test_create_returns_the_session_struct_with_every_field(c: Client) -> None:
    s = c.create(user="create-user", ttl=120, meta={"theme": "dark", "n": 3}, id="create-1")
    assert isinstance(s, Session)
    assert (s.id, s.user, s.status, s.ttl, s.version) == ("create-1", "create-user", "active",
                                                          120, 1)
    assert s.meta == {"theme": "dark", "n": 3}
    assert s.created_at == s.last_access and s.expires_at == s.created_at + timedelta(seconds=120)
    assert s.created_at.tzinfo is UTC
    assert s.expires_at_us == s.created_at_us + 120 * 1_000_000
    assert s.expired_at is None


def test_create_without_arguments_uses_the_defaults(c: Client) -> None:
    s = c.create()
    assert s.user == "anonymous" and s.ttl == 3600 and s.meta == {}
    assert len(s.id) == 32 and int(s.id, 16) >= 0


def test_get_set_unset_refresh_expire_delete_round_trip(c: Client) -> None:
    s = c.create(user="lifecycle")
    assert c.get(s.id) == s
    after_set = c.set(s.id, "lang", "en")
    assert after_set.meta == {"lang": "en"} and after_set.version == 2
    assert c.set(s.id, "tags", ["a", 1, None]).meta["tags"] == ["a", 1, None]
    assert "lang" not in c.unset(s.id, "lang").meta
    refreshed = c.refresh(s.id, ttl=7200)
    assert refreshed.ttl == 7200 and refreshed.expires_at > s.expires_at
    expired = c.expire(s.id)
    assert expired.status == "expired" and expired.expired_at is not None
    assert c.delete(s.id) == s.id
    with pytest.raises(SessionNotFound):
        c.get(s.id)


def test_touch_slides_the_deadline(c: Client) -> None:
    s = c.create(ttl=600)
    touched = c.get(s.id, touch=True)
    assert touched.last_access > s.last_access and touched.expires_at > s.expires_at


def test_refresh_of_an_expired_session_needs_revive(c: Client) -> None:
    s = c.create(user="revive")
    c.expire(s.id)
    with pytest.raises(SessionExpired, match="revive"):
        c.refresh(s.id)
    assert c.get(s.id).status == "expired"
    revived = c.refresh(s.id, revive=True)
    assert revived.status == "active" and revived.expired_at is None


def test_writes_to_an_expired_session_raise_session_expired(c: Client) -> None:
    s = c.create()
    c.expire(s.id)
    with pytest.raises(SessionExpired):
        c.set(s.id, "k", "v")


def test_compare_and_set_refuses_a_stale_version(c: Client) -> None:
    s = c.create()
    c.set(s.id, "a", "1", expect_version=s.version)
    with pytest.raises(Conflict, match="version"):
        c.set(s.id, "a", "2", expect_version=s.version)
    assert c.get(s.id).meta == {"a": "1"}


def test_compare_and_unset_refuses_a_stale_version(c: Client) -> None:
    s = c.create(meta={"a": "1", "b": "2"})
    after = c.unset(s.id, "a", expect_version=s.version)
    assert after.meta == {"b": "2"}
    with pytest.raises(Conflict, match="version"):
        c.unset(s.id, "b", expect_version=s.version)
    with c.pipeline() as p:
        stale = p.unset(s.id, "b", expect_version=s.version)
        fresh = p.unset(s.id, "b", expect_version=after.version)
    with pytest.raises(Conflict):
        stale.result()
    assert fresh.result().meta == {}
    assert c.get(s.id).meta == {}


def test_creating_an_existing_id_is_a_conflict(c: Client) -> None:
    c.create(id="taken-id")
    with pytest.raises(Conflict, match="taken-id"):
        c.create(id="taken-id")


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.create(ttl=0),
        lambda c: c.create(ttl=-1),
        lambda c: c.create(id="not valid!"),
        lambda c: c.get("bad/id"),
        lambda c: c.list_page(status="zombie"),
        lambda c: c.set("x" * 129, "k", "v"),
    ],
    ids=["ttl-0", "ttl-negative", "bad-id", "bad-id-get", "unknown-status", "id-too-long"],
)
def test_invalid_values_raise_invalid_request_and_change_nothing(c: Client, call: object) -> None:
    before = c.stats().total_sessions
    with pytest.raises(InvalidRequest):
        call(c)  # type: ignore[operator]
    assert c.stats().total_sessions == before


def test_errors_form_one_tree_under_session_error() -> None:
    for cls in (SessionNotFound, SessionExpired, Conflict, InvalidRequest, DaemonUnavailable):
        assert issubclass(cls, SessionError)
        assert getattr(sessionctl, cls.__name__) is cls


def test_nothing_listening_is_daemon_unavailable_naming_the_socket(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    with pytest.raises(DaemonUnavailable, match="none.sock"):
        Client(missing)


def test_a_stale_socket_file_is_daemon_unavailable(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(os.fspath(stale))  # bound, never listening: connection refused
    with pytest.raises(DaemonUnavailable, match="stale.sock"):
        Client(stale)


def test_list_pages_through_the_daemon_in_creation_order(c: Client) -> None:
    n = PAGE_MAX * 2 + 345
    with c.pipeline() as p:
        made = [p.create(user="pager", meta={"i": str(i)}) for i in range(n)]
    ids = [m.result().id for m in made]
    assert [s.id for s in c.list(user="pager")] == ids
    assert [s.id for s in c.list(user="pager", limit=PAGE_MAX + 1)] == ids[: PAGE_MAX + 1]
    page, cursor = c.list_page(user="pager", limit=10)
    assert [s.id for s in page] == ids[:10] and cursor is not None
    nxt, _ = c.list_page(user="pager", limit=10, cursor=cursor)
    assert [s.id for s in nxt] == ids[10:20]


def test_list_of_big_sessions_comes_in_pages_of_bounded_size(c: Client) -> None:
    big = "y" * 60_000
    with c.pipeline() as p:
        made = [p.create(user="heavy", meta={"blob": big}) for _ in range(50)]
    ids = [m.result().id for m in made]
    first, cursor = c.list_page(user="heavy")
    assert 0 < len(first) < len(ids) and cursor is not None
    listed = c.list(user="heavy")
    assert [s.id for s in listed] == ids and all(s.meta == {"blob": big} for s in listed)


def test_list_filters_by_status_and_user(c: Client) -> None:
    a = c.create(user="filter-a")
    b = c.create(user="filter-a")
    c.create(user="filter-b")
    c.expire(b.id)
    assert [s.id for s in c.list(user="filter-a", status="active")] == [a.id]
    assert [s.id for s in c.list(user="filter-a", status="expired")] == [b.id]


def test_stats_is_a_typed_struct_with_counts_and_daemon_health(c: Client, shared: Daemon) -> None:
    c.create(user="stats-user", ttl=100)
    st = c.stats()
    assert isinstance(st, StatsInfo)
    assert st.total_sessions == st.active + st.expired >= 1
    assert st.unique_users >= 1 and st.average_ttl_seconds > 0
    assert st.pid == shared.proc.pid  # type: ignore[union-attr]
    assert st.uptime_seconds >= 0 and st.version
    assert re.fullmatch(shared.kept_in, st.journal_path)
    if shared.engine.shared:
        assert st.journal_bytes == 0 and st.backend_ok is True
    else:
        assert st.journal_bytes > 0 and st.backend is None


def test_cleanup_dry_run_reports_without_removing(c: Client) -> None:
    s = c.create(user="cleanup-dry")
    c.expire(s.id)
    r = c.cleanup(dry_run=True)
    assert isinstance(r, CleanupResult) and r.dry_run and s.id in r.removed_ids
    assert c.get(s.id).status == "expired"


def test_cleanup_removes_expired_sessions_and_those_due_before(c: Client) -> None:
    gone = c.create(user="cleanup")
    c.expire(gone.id)
    due = c.create(user="cleanup", ttl=60)
    kept = c.create(user="cleanup", ttl=86400)
    r = c.cleanup(before=due.expires_at + timedelta(microseconds=1))
    assert {gone.id, due.id} <= set(r.removed_ids) and kept.id not in r.removed_ids
    assert r.removed_count == len(r.removed_ids) and not r.dry_run
    assert [s.id for s in c.list(user="cleanup")] == [kept.id]


def test_config_reads_all_settings_or_one(c: Client) -> None:
    everything = c.config()
    assert everything["default_ttl"] == 3600 and "fsync" in everything
    assert c.config("default_ttl") == {"default_ttl": 3600}
    with pytest.raises(InvalidRequest, match="unknown config key"):
        c.config("no_such_key")


def test_set_config_refuses_a_wrong_type_as_invalid_request(c: Client) -> None:
    with pytest.raises(InvalidRequest, match="default_ttl"):
        c.set_config("default_ttl", "soon")
    assert c.config("default_ttl") == {"default_ttl": 3600}


def test_import_sessions_merges_more_than_a_page(c: Client) -> None:
    template = c.create(user="importer")
    records = [
        Session(id=f"imp-{i}", user="imported", status="active", ttl=3600, meta={"i": i},
                created_at_us=template.created_at_us, last_access_us=template.created_at_us,
                expires_at_us=template.expires_at_us)
        for i in range(PAGE_MAX + 50)
    ]
    r = c.import_sessions(records)
    assert isinstance(r, ImportResult)
    assert (r.imported, r.updated, r.skipped) == (PAGE_MAX + 50, 0, 0)
    again = c.import_sessions(records[:3])
    assert again.skipped == 3 and len(again.reasons) == 3
    assert c.get("imp-7").meta == {"i": 7}


def test_compact_returns_sizes(c: Client, shared: Daemon) -> None:
    r = c.compact()
    assert isinstance(r, CompactResult) and r.sessions >= 1
    if shared.engine.shared:
        # Nothing to rewrite: said plainly rather than faked.
        assert r.note is not None and "persists the sessions itself" in r.note
    else:
        assert r.bytes_after > 0 and r.note is None


def test_ping_returns_the_pong(c: Client, shared: Daemon) -> None:
    p = c.ping()
    assert isinstance(p, Pong) and p.pid == shared.proc.pid  # type: ignore[union-attr]


# -- pipelines -----------------------------------------------------------------


def test_pipeline_results_come_back_in_order(c: Client) -> None:
    with c.pipeline() as p:
        made = [p.create(user="pipe", meta={"i": str(i)}) for i in range(50)]
        pong = p.ping()
    sessions = [m.result() for m in made]
    assert [s.meta["i"] for s in sessions] == [str(i) for i in range(50)]
    assert isinstance(pong.result(), Pong)
    with c.pipeline() as p:
        got = [p.get(s.id) for s in reversed(sessions)]
    assert [g.result().id for g in got] == [s.id for s in reversed(sessions)]


def test_pipeline_errors_belong_to_their_own_request(c: Client) -> None:
    good = c.create(user="pipe-errors")
    with c.pipeline() as p:
        first = p.get(good.id)
        missing = p.get("no-such-session")
        taken = p.create(id=good.id)
        last = p.set(good.id, "k", "v")
    assert first.result().id == good.id
    with pytest.raises(SessionNotFound):
        missing.result()
    with pytest.raises(Conflict):
        taken.result()
    assert last.result().meta == {"k": "v"}


def test_pipeline_results_are_not_ready_before_it_is_sent(c: Client) -> None:
    p = c.pipeline()
    pending = p.ping()
    assert isinstance(pending, Pending)
    with pytest.raises(RuntimeError, match="not been sent"):
        pending.result()
    p.execute()
    assert pending.result().pid > 0


def test_an_exception_inside_the_pipeline_sends_nothing(c: Client) -> None:
    with pytest.raises(KeyError), c.pipeline() as p:
        p.create(id="never-sent")
        raise KeyError("boom")
    with pytest.raises(SessionNotFound):
        c.get("never-sent")


def test_a_pipeline_bigger_than_the_socket_buffers_does_not_deadlock(c: Client) -> None:
    s = c.create(user="big-pipe", meta={"pad": "x" * 1000})
    n = 20_000  # about 25 MB of replies: far beyond what the buffers hold
    with c.pipeline() as p:
        got = [p.get(s.id) for _ in range(n)]
    assert all(g.result().id == s.id for g in got)
    assert c.ping().pid > 0  # and the connection is still in step
