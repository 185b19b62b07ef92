"""``AsyncClient``: every operation of ``Client`` as a coroutine, pipelines
as ``async with``, ``watch()`` as an async iterator, under asyncio and trio
alike, against a real daemon; the same errors as the blocking client, the
same autostart rules, and tasks that share one client each get their own
answers.

One daemon serves the module (each test works on sessions of its own user
or ids); the autostart tests start their own, with every path in a temp dir.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import sessionctl
from sessionctl import (
    AsyncClient,
    AsyncPipeline,
    CleanupResult,
    Client,
    ClientClosed,
    CompactResult,
    Conflict,
    DaemonUnavailable,
    Event,
    ImportResult,
    Pending,
    Session,
    SessionError,
    SessionExpired,
    SessionNotFound,
    StatsInfo,
)
from sessionctl.connection import NO_AUTOSTART_ENV
from sessiond.legacy import read_sessions
from sessiond.protocol import PAGE_MAX, Pong
from tests.conftest import Daemon, running
from tests.test_client_autostart import Fresh, fresh  # noqa: F401  (a fixture)
from tests.test_client_errors import OPERATIONS as BOTH_CLIENTS

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("aclient")) as d:
        yield d


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


async def eventually(holds: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``holds`` until it does, for 10 s at most: ``wait_until`` for a
    test that runs in an event loop."""
    delay = 0.005
    try:
        with anyio.fail_after(10):
            while not await holds():
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# -- every operation -----------------------------------------------------------


async def test_every_operation_answers_as_the_blocking_client_does(shared: Daemon) -> None:
    user = unique("every")
    async with AsyncClient(shared.socket) as c:
        assert c.server_pid == shared.proc.pid  # type: ignore[union-attr]
        assert c.server_version == sessionctl.__version__
        s = await c.create(user=user, ttl=120, meta={"theme": "dark"}, id=unique("a"))
        assert isinstance(s, Session) and (s.user, s.ttl, s.meta, s.version) == (
            user, 120, {"theme": "dark"}, 1)
        got = await c.get(s.id, touch=True)
        assert got.id == s.id and got.last_access >= s.last_access
        changed = await c.set(s.id, "lang", "en", expect_version=got.version)
        assert changed.meta == {"theme": "dark", "lang": "en"}
        assert changed.version == got.version + 1
        unset = await c.unset(s.id, "theme")
        assert unset.meta == {"lang": "en"}
        refreshed = await c.refresh(s.id, ttl=600)
        assert refreshed.ttl == 600 and refreshed.expires_at > s.expires_at
        expired = await c.expire(s.id)
        assert expired.status == "expired" and expired.expired_at is not None
        revived = await c.refresh(s.id, revive=True)
        assert revived.status == "active"
        page, cursor = await c.list_page(user=user, limit=10)
        assert [p.id for p in page] == [s.id] and cursor is None
        stats = await c.stats()
        assert isinstance(stats, StatsInfo) and stats.total_sessions >= 1
        config = await c.config("default_ttl")
        assert config == {"default_ttl": 3600}
        assert (await c.set_config("idle_timeout", 600))["idle_timeout"] == 600
        values, sources = await c.config_sources("idle_timeout")
        assert values == {"idle_timeout": 600} and sources == {"idle_timeout": "file"}
        assert await c.delete(s.id) == s.id
        with pytest.raises(SessionNotFound):
            await c.get(s.id)
        gone = await c.create(user=user)
        await c.expire(gone.id)
        swept = await c.cleanup(dry_run=True)
        assert isinstance(swept, CleanupResult) and gone.id in swept.removed_ids
        assert (await c.get(gone.id)).status == "expired"
        assert isinstance(await c.compact(), CompactResult)
        pong = await c.ping()
        assert isinstance(pong, Pong) and pong.pid == c.server_pid


async def test_iter_sessions_list_and_import_page_through_more_than_a_page(
    shared: Daemon,
) -> None:
    user = unique("paged")
    async with AsyncClient(shared.socket) as c:
        template = await c.create(user="template")
        records = [
            Session(id=f"{user}-{i}", user=user, status="active", ttl=3600, meta={"i": i},
                    created_at_us=template.created_at_us,
                    last_access_us=template.created_at_us,
                    expires_at_us=template.expires_at_us)
            for i in range(PAGE_MAX + 30)
        ]
        result = await c.import_sessions(records)
        assert isinstance(result, ImportResult)
        assert (result.imported, result.updated, result.skipped) == (PAGE_MAX + 30, 0, 0)
        again = [part async for part in c.import_pages(records[:3])]
        assert sum(p.skipped for p in again) == 3
        seen = [s.id async for s in c.iter_sessions(user=user, page=7)]
        assert seen == [r.id for r in records]
        assert [s.id for s in await c.list(user=user, limit=PAGE_MAX + 1)] == seen[: PAGE_MAX + 1]
        assert [s.id for s in await c.list(user=user, limit=2)] == seen[:2]
        assert len(await c.list(user=user)) == len(records)


async def test_import_takes_what_the_legacy_reader_reads_from_an_export(
    shared: Daemon, tmp_path: Path
) -> None:
    user = unique("exported")
    async with AsyncClient(shared.socket) as c:
        made = [await c.create(user=user, meta={"n": n}) for n in range(3)]
    out = tmp_path / "export.jsonl"
    r = shared.ctl("export", "--format", "jsonl", "--output", str(out))
    assert r.returncode == 0, r.stderr
    # sessiond.legacy reads the file into the daemon's own Session structs.
    loaded = [s for s in read_sessions(out).sessions if s.user == user]
    async with AsyncClient(shared.socket) as c:
        for s in made:
            await c.delete(s.id)
        result = await c.import_sessions(loaded)
        assert result.imported == 3
        back = await c.list(user=user)
    assert back == made


# -- pipelines -------------------------------------------------------------------


async def test_a_pipeline_settles_every_pending_when_its_block_ends(shared: Daemon) -> None:
    user = unique("apipe")
    async with AsyncClient(shared.socket) as c:
        async with c.pipeline() as p:
            assert isinstance(p, AsyncPipeline)
            made = [p.create(user=user, meta={"i": str(i)}) for i in range(50)]
            pong = p.ping()
            assert isinstance(made[0], Pending)
            with pytest.raises(RuntimeError, match="not been sent"):
                made[0].result()
        sessions = [m.result() for m in made]
        assert [s.meta["i"] for s in sessions] == [str(i) for i in range(50)]
        assert isinstance(pong.result(), Pong)
        taken = await c.create(user=user)
        async with c.pipeline() as p:
            first = p.get(sessions[0].id)
            clash = p.create(id=taken.id)
            missing = p.get("no-such-session")
            last = p.set(sessions[1].id, "k", "v")
        assert first.result().id == sessions[0].id
        with pytest.raises(Conflict):
            clash.result()
        with pytest.raises(SessionNotFound):
            missing.result()
        assert last.result().meta == {"i": "1", "k": "v"}


async def test_a_pipeline_left_by_an_exception_sends_nothing(shared: Daemon) -> None:
    never = unique("never")
    async with AsyncClient(shared.socket) as c:
        with pytest.raises(KeyError):
            async with c.pipeline() as p:
                p.create(id=never)
                raise KeyError("boom")
        with pytest.raises(SessionNotFound):
            await c.get(never)


async def test_a_pipeline_bigger_than_the_socket_buffers_does_not_deadlock(
    shared: Daemon,
) -> None:
    async with AsyncClient(shared.socket) as c:
        s = await c.create(user=unique("bigpipe"), meta={"pad": "x" * 1000})
        n = 20_000  # about 25 MB of replies: far beyond what the buffers hold
        async with c.pipeline() as p:
            got = [p.get(s.id) for _ in range(n)]
        assert all(g.result().id == s.id for g in got)
        assert (await c.ping()).pid > 0  # and the connection is still in step


# -- watch -----------------------------------------------------------------------


async def test_watch_is_an_async_iterator_of_events_until_closed(shared: Daemon) -> None:
    user = unique("watched")
    seen: list[Event] = []

    async def collect() -> None:
        async with aclosing(c.watch(user=user)) as events:
            async for event in events:
                seen.append(event)
                if event.kind == "deleted":
                    return

    async with AsyncClient(shared.socket) as c:
        before = (await c.stats()).watchers

        async def watchers(n: int) -> bool:
            return (await c.stats()).watchers == n

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                await eventually(lambda: watchers(before + 1), "the watch to start")
                s = await c.create(user=user)
                await c.set(s.id, "k", "v")
                await c.create(user="someone-else")
                await c.delete(s.id)
        assert [(e.kind, e.sid) for e in seen] == [
            ("created", s.id), ("updated", s.id), ("deleted", s.id)]
        assert all(isinstance(e, Event) and e.at.tzinfo is UTC for e in seen)
        assert seen[1].session is not None and seen[1].session.meta == {"k": "v"}
        await eventually(lambda: watchers(before), "the watch's connection to close")


async def test_closing_ends_a_watch_running_in_another_task(shared: Daemon) -> None:
    caught: list[BaseException] = []

    async def watchers(n: int) -> bool:
        async with AsyncClient(shared.socket) as other:
            return (await other.stats()).watchers == n

    async def watching() -> None:
        try:
            async for _ in c.watch():
                pass
        except SessionError as exc:
            caught.append(exc)

    async with AsyncClient(shared.socket) as c:
        before = (await c.stats()).watchers
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watching)
                await eventually(lambda: watchers(before + 1), "the watch to start")
                await c.aclose()
    assert len(caught) == 1 and isinstance(caught[0], ClientClosed), caught
    await eventually(lambda: watchers(before), "the watch's connection to close")


# -- tasks, timeouts, cancellation ----------------------------------------------


async def test_tasks_sharing_one_client_each_get_their_own_answers(shared: Daemon) -> None:
    user = unique("tasks")
    async with AsyncClient(shared.socket) as c:
        made = [await c.create(user=user, meta={"n": n}) for n in range(20)]
        answers: dict[int, list[tuple[str, Any]]] = {}

        async def worker(n: int) -> None:
            got = answers.setdefault(n, [])
            for _ in range(25):
                s = await c.get(made[n].id)
                got.append((s.id, s.meta["n"]))

        async with anyio.create_task_group() as tg:
            for n in range(len(made)):
                tg.start_soon(worker, n)
        assert answers == {n: [(made[n].id, n)] * 25 for n in range(len(made))}


async def test_a_cancelled_request_leaves_the_client_in_step(shared: Daemon) -> None:
    assert shared.proc is not None
    async with AsyncClient(shared.socket) as c:
        s = await c.create(user=unique("cancelled"))
        shared.proc.send_signal(signal.SIGSTOP)
        try:
            with anyio.move_on_after(0.3) as scope:
                await c.get(s.id)
            assert scope.cancelled_caught
        finally:
            shared.proc.send_signal(signal.SIGCONT)
        # The cancelled get's answer arrives first, and is passed over.
        assert (await c.ping()).pid == shared.proc.pid
        assert (await c.get(s.id)).id == s.id


async def test_a_daemon_that_does_not_answer_in_time_is_daemon_unavailable(
    shared: Daemon,
) -> None:
    assert shared.proc is not None
    async with AsyncClient(shared.socket, timeout=0.3) as c:
        shared.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(DaemonUnavailable, match="did not answer in time"):
                await c.ping()
        finally:
            shared.proc.send_signal(signal.SIGCONT)
        assert (await c.ping()).pid == shared.proc.pid


# -- the same errors as Client ---------------------------------------------------

CALLS: list[tuple[str, Callable[[Any, str], Any]]] = [
    ("not-found", lambda c, sid: c.get("no-such-session-here")),
    ("taken-id", lambda c, sid: c.create(id=sid)),
    ("stale-version", lambda c, sid: c.set(sid, "k", "v", expect_version=99)),
    ("expired-set", lambda c, sid: c.set(f"{sid}-x", "k", "v")),
    ("bad-ttl", lambda c, sid: c.create(ttl=0)),
    ("bad-id", lambda c, sid: c.get("bad/id")),
    ("ttl-text", lambda c, sid: c.refresh(sid, ttl="60")),
    ("bad-status", lambda c, sid: c.list_page(status="zombie")),
    ("bad-cursor", lambda c, sid: c.list_page(cursor="garbage")),
    ("bad-fsync", lambda c, sid: c.set_config("fsync", "sometimes")),
    ("unknown-key", lambda c, sid: c.config("colour")),
    ("naive-before", lambda c, sid: c.cleanup(before=datetime(2026, 1, 1))),
    ("unsendable", lambda c, sid: c.set(sid, "k", object())),
    ("not-a-session", lambda c, sid: c.import_page([{"id": "x"}])),
]


@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[n for n, _ in CALLS])
async def test_errors_are_the_blocking_clients_own(
    shared: Daemon, call: Callable[[Any, str], Any]
) -> None:
    sid = unique("errors")
    with Client(shared.socket) as sync:
        sync.create(id=sid)
        sync.expire(sync.create(id=f"{sid}-x").id)
        with pytest.raises(SessionError) as blocking:
            call(sync, sid)
    async with AsyncClient(shared.socket) as c:
        with pytest.raises(SessionError) as awaited:
            await call(c, sid)
    assert type(awaited.value) is type(blocking.value)
    assert str(awaited.value) == str(blocking.value)


async def test_a_refused_write_to_an_expired_session_is_session_expired(
    shared: Daemon,
) -> None:
    async with AsyncClient(shared.socket) as c:
        s = await c.create(user=unique("exp"))
        await c.expire(s.id)
        with pytest.raises(SessionExpired):
            await c.refresh(s.id)


OPERATIONS: list[tuple[str, Callable[[Any], Awaitable[Any]]]] = [
    *BOTH_CLIENTS,
    ("connect", lambda c: c.connect()),
    ("iter_sessions", lambda c: c.iter_sessions().__anext__()),
    ("watch", lambda c: c.watch().__anext__()),
]


@pytest.mark.parametrize("call", [c for _, c in OPERATIONS], ids=[n for n, _ in OPERATIONS])
async def test_a_closed_client_says_so_for_every_method(
    shared: Daemon, call: Callable[[Any], Awaitable[Any]]
) -> None:
    c = AsyncClient(shared.socket)
    await c.ping()
    await c.aclose()
    await c.aclose()  # again: nothing happens
    with pytest.raises(ClientClosed, match="this AsyncClient .* is closed"):
        await call(c)


async def test_a_closed_client_refuses_a_pipeline_and_one_filled_before(shared: Daemon) -> None:
    async with AsyncClient(shared.socket) as c:
        p = c.pipeline()
        p.ping()
    with pytest.raises(ClientClosed):
        c.pipeline()
    with pytest.raises(ClientClosed):
        await p.execute()


async def test_closing_ends_a_request_another_task_waits_in(shared: Daemon) -> None:
    assert shared.proc is not None
    c = AsyncClient(shared.socket, timeout=60)
    await c.connect()
    caught: list[BaseException] = []

    async def waiting() -> None:
        try:
            await c.ping()
        except SessionError as exc:
            caught.append(exc)

    shared.proc.send_signal(signal.SIGSTOP)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting)

                async def on_its_way() -> bool:
                    return c._lock.locked()

                await eventually(on_its_way, "the ping to be sent")
                await c.aclose()
    finally:
        shared.proc.send_signal(signal.SIGCONT)
    assert len(caught) == 1 and isinstance(caught[0], ClientClosed), caught


# -- opening: lazily, with the same autostart rules -------------------------------


async def test_no_io_happens_before_the_first_request(tmp_path: Path) -> None:
    c = AsyncClient(tmp_path / "nothing.sock", autostart=False)  # nothing listens: no error yet
    assert c.server_pid is None
    with pytest.raises(DaemonUnavailable, match="nothing.sock"):
        await c.ping()


async def test_autostart_starts_a_daemon_in_a_worker_thread(
    fresh: Fresh,  # noqa: F811
) -> None:
    async with AsyncClient() as c:
        made = await c.create(user="auto")
        pid = (await c.ping()).pid
    assert os.getsid(pid) == pid and (fresh.data_dir / "sessiond.log").exists()
    async with AsyncClient(autostart=False) as again:
        assert (await again.get(made.id)).user == "auto"


async def test_autostart_off_names_the_argument_in_python_words(
    fresh: Fresh,  # noqa: F811
) -> None:
    with pytest.raises(DaemonUnavailable) as caught:
        async with AsyncClient(autostart=False):
            pass
    message = str(caught.value)
    assert str(fresh.socket) in message and "AsyncClient(autostart=True)" in message
    assert NO_AUTOSTART_ENV not in message
    assert fresh.nothing_started()


async def test_the_environment_turns_autostart_off_and_the_error_says_so(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(NO_AUTOSTART_ENV, "1")
    with pytest.raises(DaemonUnavailable) as caught:
        await AsyncClient().connect()
    message = str(caught.value)
    assert f"{NO_AUTOSTART_ENV}='1' in the environment" in message
    assert "AsyncClient(autostart=True)" in message
    assert fresh.nothing_started()


async def test_a_stale_socket_file_is_daemon_unavailable(tmp_path: Path) -> None:
    import socket

    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(os.fspath(stale))  # bound, never listening: connection refused
        with pytest.raises(DaemonUnavailable, match="stale.sock"):
            await AsyncClient(stale).connect()
