"""The client's errors say what to do, in Python's terms.

A closed client says it is closed, for every method, its pipeline and its
watch (not "Bad file descriptor"); an argument of the wrong type or value
is refused before anything is sent, naming the argument; a value that
cannot be encoded says which argument holds it; a setting refused by the
daemon says what the key takes; and msgspec's notation (``Expected `int |
null`, got `str` - at `$.ttl```) reaches nobody: not the Python caller, not
the command line, not the report of an import. Every public method's
docstring says what it raises.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import msgspec
import pytest

from sessionctl import (
    AsyncClient,
    AsyncPipeline,
    AsyncWatch,
    Client,
    ClientClosed,
    DaemonUnavailable,
    InvalidRequest,
    Pending,
    Pipeline,
    ProtocolError,
    SessionError,
)
from sessiond.limits import MAX_TTL
from tests.conftest import Daemon, running, wait_until


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("errors")) as d:
        yield d


def in_words(message: str) -> None:
    """No msgspec notation in ``message``."""
    assert "`" not in message and "Expected" not in message and "$." not in message, message


# -- a closed client -----------------------------------------------------------

# One call of each operation that Client and AsyncClient both have (an
# AsyncClient's returns a coroutine): test_async_client's closed client
# tries them too.
OPERATIONS: list[tuple[str, Callable[[Any], Any]]] = [
    ("create", lambda c: c.create()),
    ("get", lambda c: c.get("s1")),
    ("set", lambda c: c.set("s1", "k", "v")),
    ("unset", lambda c: c.unset("s1", "k")),
    ("delete", lambda c: c.delete("s1")),
    ("expire", lambda c: c.expire("s1")),
    ("refresh", lambda c: c.refresh("s1")),
    ("list_page", lambda c: c.list_page()),
    ("stats", lambda c: c.stats()),
    ("cleanup", lambda c: c.cleanup()),
    ("config", lambda c: c.config()),
    ("set_config", lambda c: c.set_config("idle_timeout", 600)),
    ("config_sources", lambda c: c.config_sources()),
    ("config_listing", lambda c: c.config_listing()),
    ("import_page", lambda c: c.import_page([])),
    ("compact", lambda c: c.compact()),
    ("ping", lambda c: c.ping()),
    ("list", lambda c: c.list()),
    ("import_sessions", lambda c: c.import_sessions([])),
]
EVERY_METHOD: list[tuple[str, Callable[[Client], Any]]] = [
    *OPERATIONS,
    ("iter_sessions", lambda c: next(c.iter_sessions())),
    ("import_pages", lambda c: next(c.import_pages([]))),
    ("pipeline", lambda c: c.pipeline()),
    ("watch", lambda c: next(c.watch())),
]


@pytest.mark.parametrize("call", [m for _, m in EVERY_METHOD], ids=[n for n, _ in EVERY_METHOD])
def test_every_method_of_a_closed_client_says_it_is_closed(
    shared: Daemon, call: Callable[[Client], Any]
) -> None:
    with shared.client() as c:
        c.ping()
    c.close()  # again: nothing happens
    with pytest.raises(ClientClosed) as caught:
        call(c)
    assert str(caught.value).startswith(f"this Client (for {shared.socket}) is closed; ")
    assert "Bad file descriptor" not in str(caught.value)


def test_a_pipeline_filled_before_the_client_closed_says_so_when_sent(shared: Daemon) -> None:
    with shared.client() as c:
        p = c.pipeline()
        pending = p.ping()
    with pytest.raises(ClientClosed):
        p.execute()
    with pytest.raises(RuntimeError, match="not been sent"):
        pending.result()


def test_closing_wakes_a_thread_waiting_for_its_answer(shared: Daemon) -> None:
    assert shared.proc is not None
    c = shared.client(timeout=60)
    caught: list[BaseException] = []

    def waiting() -> None:
        try:
            c.ping()
        except SessionError as exc:
            caught.append(exc)

    shared.proc.send_signal(signal.SIGSTOP)  # the ping is never answered
    try:
        t = threading.Thread(target=waiting)
        t.start()
        wait_until(c._lock.locked, 10, "the ping to be on its way")
        c.close()
        t.join(10)
        assert not t.is_alive(), "close() left the thread waiting"
    finally:
        shared.proc.send_signal(signal.SIGCONT)
    assert len(caught) == 1 and isinstance(caught[0], ClientClosed), caught


def test_closing_ends_a_watch_running_in_another_thread(shared: Daemon) -> None:
    c = shared.client(timeout=60)
    before = c.stats().watchers
    caught: list[BaseException] = []

    def watching() -> None:
        try:
            for _ in c.watch():
                pass
        except SessionError as exc:
            caught.append(exc)

    t = threading.Thread(target=watching, daemon=True)
    t.start()
    wait_until(lambda: c.stats().watchers == before + 1, 10, "the watch to start")
    c.close()
    t.join(10)
    assert not t.is_alive(), "close() left the watch waiting"
    assert len(caught) == 1 and isinstance(caught[0], ClientClosed), caught
    with shared.client() as other:  # and the watch's connection is closed
        wait_until(lambda: other.stats().watchers == before, 10, "the watch to end")


# -- arguments, in Python's words, before anything is sent -----------------------

NOW = datetime.now(UTC)


def nested(depth: int) -> list[Any]:
    """A value ``depth`` lists deep, the outermost counted."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


class Colour(Enum):
    RED = "red"


class Level(IntEnum):
    HIGH = 2


class Word(StrEnum):
    YES = "yes"


@dataclass
class Point:
    x: int
    y: int

# An argument of the wrong type, and a number out of its bounds, are the
# client's to refuse: before anything is sent.
BAD_ARGUMENTS: list[tuple[str, Callable[[Client], Any], str]] = [
    ("ttl-text", lambda c: c.create(ttl="60"),
     f"ttl must be a whole number of seconds from 1 to {MAX_TTL}, not '60'"),
    ("ttl-float", lambda c: c.refresh("s1", ttl=1.5), "ttl must be a whole number of seconds"),
    ("ttl-bool", lambda c: c.create(ttl=True), "ttl must be a whole number of seconds"),
    ("ttl-zero", lambda c: c.create(ttl=0), "ttl must be a whole number of seconds"),
    ("ttl-huge", lambda c: c.refresh("s1", ttl=MAX_TTL + 1), "ttl must be a whole number"),
    ("user-number", lambda c: c.create(user=5), "user must be a str, not int (5)"),
    ("meta-list", lambda c: c.create(meta=[1]), "meta must be a dict of str keys"),
    ("meta-key", lambda c: c.create(meta={"ok": 1, 1: "v"}), "a meta key must be a str, not int"),
    ("id-number", lambda c: c.create(id=7), "invalid session id 7: use 1-128 of"),
    ("sid-number", lambda c: c.get(12), "invalid session id 12"),
    ("sid-none", lambda c: c.delete(None), "invalid session id None"),
    ("sid-bytes", lambda c: c.set(b"s1", "k", "v"), "invalid session id b's1'"),
    ("touch-text", lambda c: c.get("s1", touch="yes"), "touch must be True or False, not 'yes'"),
    ("key-number", lambda c: c.set("s1", 3, "v"), "key must be a str, not int (3)"),
    ("unset-key", lambda c: c.unset("s1", None), "key must be a str, not NoneType"),
    ("version-text", lambda c: c.set("s1", "k", "v", expect_version="2"),
     "expect_version must be a session's version"),
    ("version-zero", lambda c: c.unset("s1", "k", expect_version=0),
     "expect_version must be a session's version"),
    ("revive-number", lambda c: c.refresh("s1", revive=1), "revive must be True or False"),
    ("status", lambda c: c.list_page(status="zombie"),
     "status must be 'active', 'expired' or None, not 'zombie'"),
    ("limit", lambda c: c.list_page(limit=0), "limit must be a whole number from 1 to 1000"),
    ("list-limit", lambda c: c.list(limit=-3), "limit must be a whole number from 1 on"),
    ("page", lambda c: list(c.iter_sessions(page="all")), "limit must be a whole number"),
    ("cursor", lambda c: c.list_page(cursor=5), "cursor must be a str, not int"),
    ("list-user", lambda c: c.list_page(user=["a"]), "user must be a str, not list"),
    ("before-naive", lambda c: c.cleanup(before=datetime(2030, 1, 1)),
     "before must be a timezone-aware datetime"),
    ("before-int", lambda c: c.cleanup(before=1), "before must be a datetime, not int"),
    ("dry-run", lambda c: c.cleanup(before=NOW, dry_run="no"), "dry_run must be True or False"),
    ("config-key", lambda c: c.config(5), "key must be a str, not int"),
    ("set-config-key", lambda c: c.set_config(None, 1), "key must be a str, not NoneType"),
    ("import-dicts", lambda c: c.import_page([{"id": "x"}]),
     "sessions must be Session structs (as Client.list or sessiond.legacy.read_sessions"),
    ("import-text", lambda c: c.import_page("abc"), "sessions must be a list of sessions"),
    ("import-many", lambda c: c.import_sessions([1, 2]), "sessions must be Session structs"),
    ("watch-user", lambda c: next(c.watch(user=5)), "user must be a str, not int (5)"),
    # What msgspec would send as another JSON value (an array, a string, an
    # object): the caller would read back something else than it wrote.
    ("value-set", lambda c: c.set("s1", "k", {1, 2}),
     "value cannot be sent: a value of type set is not JSON"),
    ("value-date", lambda c: c.set("s1", "k", date(2026, 1, 1)), "a value of type date is not"),
    ("value-uuid", lambda c: c.set("s1", "k", UUID(int=1)), "a value of type UUID is not JSON"),
    ("value-decimal", lambda c: c.set("s1", "k", Decimal("1.5")), "a value of type Decimal is"),
    ("value-enum", lambda c: c.set("s1", "k", Colour.RED), "a value of type Colour is not JSON"),
    ("value-dataclass", lambda c: c.set("s1", "k", Point(1, 2)), "a value of type Point is not"),
    ("meta-nested-set", lambda c: c.create(meta={"k": [{"a": frozenset({1})}]}),
     "meta cannot be sent: a value of type frozenset is not JSON"),
    ("meta-uuid-key", lambda c: c.create(meta={"k": {UUID(int=1): 1}}),
     "meta cannot be sent: an object key of type UUID is not JSON"),
    # The daemon's depth, in its words, and a value that holds itself.
    ("value-deep", lambda c: c.set("s1", "k", nested(33)), "nested deeper than 32 levels"),
    ("value-cycle", lambda c: c.set("s1", "k", cyclic()), "nested deeper than 32 levels"),
    # A float no JSON number holds, in the daemon's words.
    ("value-nan", lambda c: c.set("s1", "k", float("nan")), "meta values must be finite"),
    ("value-inf", lambda c: c.set("s1", "k", float("-inf")), "meta values must be finite"),
    ("meta-inf", lambda c: c.create(meta={"k": [1.5, float("inf")]}), "must be finite"),
]


@pytest.mark.parametrize(
    ("call", "needle"), [(c, n) for _, c, n in BAD_ARGUMENTS], ids=[i for i, _, _ in BAD_ARGUMENTS]
)
def test_a_bad_argument_is_refused_in_python_words_before_anything_is_sent(
    shared: Daemon, call: Callable[[Client], Any], needle: str
) -> None:
    assert shared.proc is not None
    with shared.client(timeout=2) as c:
        # Stopped, the daemon answers nothing: a call that sent its request
        # and waited would end in DaemonUnavailable, not InvalidRequest.
        shared.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(InvalidRequest) as caught:
                call(c)
        finally:
            shared.proc.send_signal(signal.SIGCONT)
        assert needle in str(caught.value)
        in_words(str(caught.value))
        assert c.ping().pid == shared.proc.pid  # nothing out of step


# A string's characters and length are the daemon's to judge (it does
# anyway; the client would pay for it on every call), in the same words.
BAD_VALUES: list[tuple[str, Callable[[Client], Any], str]] = [
    ("sid-slash", lambda c: c.delete("a/b"),
     "sid must be a session id (use 1-128 of A-Z a-z 0-9 . _ -)"),
    ("sid-long", lambda c: c.get("x" * 129), "sid must be a session id (use 1-128 of"),
    ("id-empty", lambda c: c.create(id=""), "sid must be a session id"),
    ("user-empty", lambda c: c.create(user=""), "user must be a name of 1 to 256 characters"),
    ("user-control", lambda c: c.create(user="a\nb"), "user 'a\\nb' holds the control character"),
    ("key-empty", lambda c: c.unset("s1", ""), "key must be a meta key of 1 to 256 characters"),
    ("key-long", lambda c: c.set("s1", "k" * 257, 1), "key must be a meta key of 1 to 256"),
    ("meta-key-control", lambda c: c.create(meta={"k\x1b": 1}), "holds the control character"),
    ("meta-nan", lambda c: c.set("s1", "k", float("nan")), "meta values must be finite numbers"),
]


@pytest.mark.parametrize(
    ("call", "needle"), [(c, n) for _, c, n in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES]
)
def test_a_bad_value_is_refused_in_words_naming_it_and_changes_nothing(
    shared: Daemon, call: Callable[[Client], Any], needle: str
) -> None:
    with shared.client() as c:
        if not any(s.id == "s1" for s in c.list()):
            c.create(id="s1")
        before = c.stats().total_sessions, c.get("s1")
        with pytest.raises(InvalidRequest) as caught:
            call(c)
        assert needle in str(caught.value)
        in_words(str(caught.value))
        assert (c.stats().total_sessions, c.get("s1")) == before


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"timeout": "5"}, "timeout must be a number of seconds above 0"),
     ({"timeout": 0}, "timeout must be a number of seconds above 0"),
     ({"timeout": 0.0}, "timeout must be a number of seconds above 0"),
     ({"timeout": -1.5}, "timeout must be a number of seconds above 0"),
     # Past a day, and what no clock takes (an OverflowError each, before).
     ({"timeout": float("inf")}, "timeout must be .* at most 86400, or None to wait for ever"),
     ({"timeout": float("nan")}, "timeout must be .* at most 86400"),
     ({"timeout": 10**20}, "timeout must be .* at most 86400"),
     ({"timeout": 86400.5}, "timeout must be .* at most 86400"),
     ({"autostart": "yes"}, "autostart must be True, False or None")],
)
def test_a_bad_constructor_argument_is_refused_before_connecting(
    tmp_path: Path, kwargs: dict[str, Any], needle: str
) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(InvalidRequest, match=needle):
            make(tmp_path / "none.sock", **kwargs)


@pytest.mark.parametrize("socket_path", [5, ["a.sock"], object()])
def test_a_socket_that_is_not_a_path_is_refused_before_connecting(socket_path: object) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(InvalidRequest, match="socket must be a path .*, not "):
            make(socket_path, autostart=False)  # type: ignore[arg-type]


def test_a_socket_path_given_as_bytes_is_a_path(shared: Daemon) -> None:
    with Client(os.fsencode(shared.socket)) as c:  # type: ignore[arg-type]
        assert c.path == shared.socket and c.ping().pid > 0

    async def ping() -> int:
        async with AsyncClient(os.fsencode(shared.socket)) as a:  # type: ignore[arg-type]
            return (await a.ping()).pid

    assert anyio.run(ping) > 0


@pytest.mark.parametrize("timeout", [86400, 86400.0])
def test_both_clients_take_a_timeout_of_up_to_a_day(shared: Daemon, timeout: float) -> None:
    with Client(shared.socket, timeout=timeout) as c:
        assert c.ping().pid > 0
        with c.pipeline() as p:  # its waits are polls, bounded alike
            pending = p.ping()
        assert pending.result().pid > 0

    async def ping() -> int:
        async with AsyncClient(shared.socket, timeout=timeout) as a:
            return (await a.ping()).pid

    assert anyio.run(ping) > 0


UNSENDABLE: list[tuple[str, Callable[[Client, str], Any], str]] = [
    ("object", lambda c, sid: c.set(sid, "k", object()),
     "value cannot be sent: a value of type object is not JSON"),
    ("meta-object", lambda c, sid: c.create(meta={"k": [1, 2, object()]}),
     "meta cannot be sent: a value of type object is not JSON"),
    ("huge-int", lambda c, sid: c.set(sid, "k", 2**70),
     "value cannot be sent: an integer is outside -2**63 to 2**64 - 1"),
    ("config", lambda c, sid: c.set_config("default_ttl", Path("/")),
     "value cannot be sent: a value of type PosixPath is not JSON"),
]


@pytest.mark.parametrize(
    ("call", "needle"), [(c, n) for _, c, n in UNSENDABLE], ids=[i for i, _, _ in UNSENDABLE]
)
def test_a_value_that_cannot_be_sent_names_the_argument_that_holds_it(
    shared: Daemon, call: Callable[[Client, str], Any], needle: str
) -> None:
    with shared.client() as c:
        sid = c.create(user="unsendable").id
        with pytest.raises(InvalidRequest) as caught:
            call(c, sid)
        assert needle in str(caught.value)
        in_words(str(caught.value))
        assert c.get(sid).meta == {}  # and the connection is in step


def test_what_json_writes_as_json_goes_through_and_reads_back_as_written(
    shared: Daemon,
) -> None:
    # As Python's json module takes them: a tuple is an array, an IntEnum a
    # number, a StrEnum a string (each reads back as what json.loads gives).
    written = {"pair": (1, 2), "n": Level.HIGH, "word": Word.YES, "deep": [{"t": ("a",)}],
               "float": 1.5, "floats": [-0.0, 1e308]}
    with shared.client() as c:
        deepest = c.set(c.create(user="deep").id, "k", nested(32))  # as deep as it goes
        assert deepest.meta == {"k": nested(32)}
        s = c.create(user="json-like", meta=written)
        c.set(s.id, "later", (3, Level.HIGH))
        assert c.get(s.id).meta == json.loads(json.dumps({**written, "later": (3, 2)}))


def test_a_bad_call_in_a_pipeline_raises_there_and_the_rest_is_sent(shared: Daemon) -> None:
    with shared.client() as c:
        sid = c.create(user="pipe-bad").id
        with c.pipeline() as p:
            first = p.set(sid, "a", 1)
            with pytest.raises(InvalidRequest, match="value cannot be sent"):
                p.set(sid, "b", object())
            with pytest.raises(InvalidRequest, match="ttl must be"):
                p.refresh(sid, ttl=-1)
            last = p.set(sid, "c", 3)
        # The frames queued around the refused ones went out whole.
        assert first.result().meta == {"a": 1}
        assert last.result().meta == {"a": 1, "c": 3}


# -- what the daemon refuses, in words -------------------------------------------

# Where the CLI reads a value itself before the daemon sees it (durations),
# its own words refuse it.
CLI_WORDS = {"default_ttl": "not a number of seconds or a duration"}


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [("fsync", "sometimes", "fsync takes 'always', 'everysec' or 'no'"),
     ("default_ttl", "soon", "default_ttl takes a whole number of seconds from 1 to 3153600000"),
     ("frame_timeout", 0, "frame_timeout takes a number of seconds above 0, up to 3600"),
     ("max_frame_bytes", 10, "max_frame_bytes takes a whole number of bytes from 1024 to")],
)
def test_a_refused_setting_says_what_the_key_takes(
    shared: Daemon, key: str, value: Any, needle: str
) -> None:
    with shared.client() as c:
        before = c.config(key)
        with pytest.raises(InvalidRequest) as caught:
            c.set_config(key, value)
        assert str(caught.value) == f"invalid value {value!r} for {key}: {needle}" or (
            needle in str(caught.value))
        in_words(str(caught.value))
        assert c.config(key) == before
    r = shared.ctl("config", key, json.dumps(value) if not isinstance(value, str) else value)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert CLI_WORDS.get(key, needle) in r.stderr


def test_the_bad_records_of_an_imported_file_are_reported_in_words(
    shared: Daemon, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"type": "session", "id": "fine1", "user": "u", "status": "active", "ttl": 60,
            "meta": {}, "created_at": "2026-01-01T00:00:00Z"}
    path.write_text("\n".join(json.dumps(r) for r in [
        good, {**good, "id": "u1", "user": 5}, {**good, "id": "m1", "meta": [1]},
        {"type": "session", "user": "u", "status": "active"},
    ]) + "\n")
    r = shared.ctl("import", str(path), "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["unreadable"] == 3, r.stdout
    problems = report["problems"]
    assert any("user must be a string, not a whole number" in p for p in problems), problems
    assert any("meta must be an object, not an array" in p for p in problems), problems
    assert any("lacks the field 'id'" in p for p in problems), problems
    for p in problems:
        in_words(p)


def test_a_reply_the_client_cannot_read_is_a_protocol_error_in_words(tmp_path: Path) -> None:
    # Something else listens where sessiond was expected, and answers the
    # hello with a frame of its own.
    path = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                body = msgspec.msgpack.encode({"r": "hello", "id": 1, "version": "one"})
                conn.sendall(len(body).to_bytes(4, "big") + body)
                conn.recv(1)  # until the client hangs up

        t = threading.Thread(target=answer)
        t.start()
        with pytest.raises(ProtocolError) as caught:
            Client(path, timeout=10)
        t.join(10)
    assert f"what answers on {path} sent a reply this client cannot read" in str(caught.value)
    in_words(str(caught.value))
    assert isinstance(caught.value.__cause__, msgspec.ValidationError)


def test_nothing_listening_is_still_daemon_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="none.sock"):
        Client(tmp_path / "none.sock")


# -- every public method says what it raises -------------------------------------


@pytest.mark.parametrize(
    "cls", [Client, AsyncClient, Pipeline, AsyncPipeline, Pending, AsyncWatch]
)
def test_every_public_method_says_what_it_raises(cls: type) -> None:
    silent = [
        name for name, method in inspect.getmembers(cls, callable)
        if not name.startswith("_") and "raise" not in (inspect.getdoc(method) or "").lower()
    ]
    assert silent == [], f"{cls.__name__}: no word on what these raise: {silent}"
