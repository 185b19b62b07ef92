"""The dispatcher in-process: a real store, a real journal file, a real hub,
and batches of encoded request bodies, as a connection hands them over.

What is pinned here is the dispatcher's own contract, which the end-to-end
tests reach only through timing: a batch gets one reply per request, in
order, each under its request's id; what the journal refuses is reverted
and every reply says so or shows the state that stands; a bad frame is
answered and counted; a ``watch`` ends the batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from sessiond import config, failpoints
from sessiond.dispatch import Dispatcher
from sessiond.events import Hub
from sessiond.journal import Journal
from sessiond.live import Live, rules_of
from sessiond.protocol import (
    HEADER,
    LENGTH,
    AnyResponse,
    Create,
    ErrorReply,
    EventReply,
    Get,
    List,
    Page,
    Request,
    Response,
    SessionReply,
    Set,
    StatsInfo,
    Watch,
    encoder,
)
from sessiond.store import Store

_decoder = msgspec.msgpack.Decoder(AnyResponse)


def no_stats(now: int) -> StatsInfo:
    raise AssertionError("no stats were asked for")


def bodies(*requests: Request | bytes) -> list[memoryview]:
    return [memoryview(r if isinstance(r, bytes) else encoder.encode(r)) for r in requests]


def replies(out: bytearray) -> list[Response]:
    found = []
    pos = 0
    while pos < len(out):
        (n,) = LENGTH.unpack_from(out, pos)
        found.append(_decoder.decode(out[pos + HEADER : pos + HEADER + n]))
        pos += HEADER + n
    return found


def run(tmp_path: Path, fsync: str, steps: Callable[[Dispatcher], Awaitable[None]]) -> Store:
    """``steps`` against a dispatcher on a fresh store and journal."""
    layers = config.Layers(tmp_path / "config.json", config.validate({"fsync": fsync}))
    store = Store(rules_of(layers.settings))
    journal = Journal(tmp_path / "data.jsonl", fsync)
    journal.open(0, False)

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run_flusher)
            await steps(Dispatcher(store, journal, Hub(), Live(layers), no_stats))
            tg.cancel_scope.cancel()

    try:
        anyio.run(go)
    finally:
        journal.close()
    return store


def fsync_fails(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setattr(failpoints, "_failpoints", failpoints.Failpoints(spec))


def test_a_batch_gets_one_reply_per_request_in_order_under_its_id(tmp_path: Path) -> None:
    got: list[Response] = []

    async def steps(d: Dispatcher) -> None:
        out = bytearray()
        watcher, bad, used = await d.batch(bodies(
            Create(id=7, sid="a"), Set(id=3, sid="a", key="k", value="v"), Get(id=9, sid="a"),
            Get(id=4, sid="missing"),
        ), 0, out)
        assert (watcher, bad, used) == (None, 0, 4)
        got.extend(replies(out))

    run(tmp_path, "everysec", steps)
    assert [r.id for r in got] == [7, 3, 9, 4]
    assert isinstance(got[2], SessionReply) and got[2].session.meta == {"k": "v"}
    assert isinstance(got[3], ErrorReply) and got[3].code == "not_found"


def test_a_write_the_journal_refuses_is_answered_read_only_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[Response] = []

    async def steps(d: Dispatcher) -> None:
        out = bytearray()
        await d.batch(bodies(Create(id=1, sid="a")), 0, out)
        before = d.store.snapshot()
        fsync_fails(monkeypatch, "fsync-error@1:1")
        out = bytearray()
        await d.batch(bodies(Set(id=2, sid="a", key="k", value="v")), 0, out)
        got.extend(replies(out))
        assert d.store.snapshot() == before

    store = run(tmp_path, "always", steps)
    assert len(got) == 1 and isinstance(got[0], ErrorReply)
    assert got[0].id == 2 and got[0].code == "read_only"
    record = store.peek("a")
    assert record is not None and record.meta == {} and record.version == 1


def test_a_read_after_a_refused_write_in_its_batch_shows_the_state_that_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[Response] = []

    async def steps(d: Dispatcher) -> None:
        await d.batch(bodies(Create(id=1, sid="a")), 0, bytearray())
        fsync_fails(monkeypatch, "fsync-error@1:1")
        out = bytearray()
        await d.batch(bodies(
            Set(id=2, sid="a", key="k", value="v"), Get(id=3, sid="a"), List(id=4),
        ), 0, out)
        got.extend(replies(out))

    run(tmp_path, "always", steps)
    refused, read, page = got
    assert isinstance(refused, ErrorReply) and refused.code == "read_only"
    assert isinstance(read, SessionReply) and read.session.meta == {}, "saw a refused write"
    assert read.session.version == 1
    assert isinstance(page, Page) and [s.meta for s in page.sessions] == [{}]


def test_a_bad_frame_is_answered_under_the_id_it_carries_and_counted(tmp_path: Path) -> None:
    got: list[Any] = []

    async def steps(d: Dispatcher) -> None:
        out = bytearray()
        bad_body = msgspec.msgpack.encode({"op": "get", "id": 12, "sid": 5})
        _, bad, used = await d.batch(bodies(bad_body, b"\xc1", Get(id=13, sid="x")), 2, out)
        got.extend([bad, used, replies(out)])

    run(tmp_path, "everysec", steps)
    bad, used, answered = got
    assert used == 3
    assert bad == 0, "a good frame ends a run of bad ones"
    codes = [(r.id, r.code) for r in answered]
    assert codes == [(12, "invalid"), (0, "invalid"), (13, "not_found")]


def test_a_watch_ends_the_batch_and_returns_its_watcher(tmp_path: Path) -> None:
    got: list[Any] = []

    async def steps(d: Dispatcher) -> None:
        out = bytearray()
        watcher, _, used = await d.batch(bodies(
            Create(id=1, sid="a"), Watch(id=2), Get(id=3, sid="a"),
        ), 0, out)
        got.extend([watcher, used, replies(out), len(d.hub.watchers)])

    run(tmp_path, "everysec", steps)
    watcher, used, answered, watching = got
    assert watcher is not None and used == 2 and watching == 1
    assert [type(r) for r in answered] == [SessionReply, EventReply]
