"""Shared mode with the engine away: a paused engine (SIGSTOP) fails
requests within about two seconds, a killed one at once, both with exit
status 3 and a message naming the engine without its password; a change
sent and not answered says its outcome is unknown; nothing is buffered;
the daemon keeps running, says the engine's health in ``stats``, serves
again as soon as the engine is back, and its expiries catch up at their
deadlines.

Each test runs a Redis of its own (appendonly, so that what it held
survives a kill) with a password, and damages it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from sessiond.errors import BackendUnavailable, OutcomeUnknown
from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, fails, figures
from tests.redis_servers import RedisNode
from tests.test_watch import CtlWatch, watchers

PASSWORD = "outage-S3cret-pw"
# A request must fail within 2 s of the engine's silence; the CLI's own
# start and a loaded machine get the rest.
SILENT_BOUND = 5.0
# A refused connection must fail at once, not after the 2 s of silence.
REFUSED_BOUND = 1.5


@pytest.fixture
def engine_and_daemon(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon]
) -> tuple[RedisNode, Daemon]:
    node = make_redis(appendonly=True, password=PASSWORD, extra=("--appendfsync", "always"))
    d = make_daemon_on(backend=f"redis://:{PASSWORD}@127.0.0.1:{node.port}")
    return node, d


def _timed(d: Daemon, *args: str) -> tuple[float, object]:
    t = time.monotonic()
    r = d.ctl(*args)
    return time.monotonic() - t, r


def _names_the_engine(text: str, node: RedisNode) -> None:
    assert f"127.0.0.1:{node.port}" in text, text
    assert PASSWORD not in text, text


def test_a_paused_engine_fails_requests_within_seconds_naming_it_without_its_password(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    with d.client() as c:
        sid = c.create(meta={"k": "before"}).id
    node.pause()
    try:
        for args in (("get", sid), ("set", sid, "k", "during")):
            took, r = _timed(d, *args)
            assert r.returncode == 3, (args, r.stderr)  # type: ignore[attr-defined]
            assert took < SILENT_BOUND, (args, took)
            assert r.stdout == ""  # type: ignore[attr-defined]
            err: str = r.stderr  # type: ignore[attr-defined]
            assert err.startswith("sessionctl: error: ") and err.count("\n") == 1
            _names_the_engine(err, node)
        with d.client() as c:
            assert isinstance(fails(lambda: c.get(sid)), BackendUnavailable)
            assert c.ping().pid == d.proc.pid  # type: ignore[union-attr]
    finally:
        node.resume()
    with d.client() as c:
        assert c.get(sid).meta == {"k": "before"}


def test_a_change_sent_to_an_engine_that_then_stops_answering_has_an_unknown_outcome(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    with d.client() as c:
        sid = c.create().id
    # Reads are answered, writes held: the change is read, decided and sent,
    # and its answer never comes in time.
    node.cli("CLIENT", "PAUSE", "20000", "WRITE")
    try:
        took, r = _timed(d, "set", sid, "k", "v")
        assert r.returncode == 3  # type: ignore[attr-defined]
        assert took < SILENT_BOUND
        err: str = r.stderr  # type: ignore[attr-defined]
        assert "may or may not have been made" in err
        _names_the_engine(err, node)
        with d.client() as c:
            exc = fails(lambda: c.set(sid, "k", "w"))
            assert isinstance(exc, OutcomeUnknown)
            # A read is still answered: its outcome is not in doubt.
            assert c.get(sid).id == sid
    finally:
        node.cli("CLIENT", "UNPAUSE")
    # Now the engine has made the changes it held, or not: either way it says which.
    with d.client() as c:
        assert c.get(sid).version in (1, 2, 3)


def test_a_killed_engine_is_refused_fast_and_the_daemon_serves_again_once_it_is_back(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    with d.client() as c:
        kept = c.create(meta={"k": "kept"}).id
        due = c.create(ttl=1)
    pid = d.proc.pid  # type: ignore[union-attr]
    node.kill()
    # Every request, not only the first (which finds its connection closed).
    for args in (("get", kept), ("set", kept, "k", "lost"), ("create",), ("get", kept)):
        took, r = _timed(d, *args)
        assert r.returncode == 3, (args, r.stderr)  # type: ignore[attr-defined]
        assert took < REFUSED_BOUND, (args, took)
        err: str = r.stderr  # type: ignore[attr-defined]
        _names_the_engine(err, node)
        assert "no answer within" not in err, err

    # Past the deadline of ``due`` while the engine is away.
    wait_until(lambda: time.time() * 1e6 > due.expires_at_us + 500_000, 10, "the deadline")
    node.start()
    with d.client() as c:
        wait_until(lambda: _answers(c, kept), 10, "the daemon to serve again")
        assert c.get(kept).meta == {"k": "kept"}
        wait_until(lambda: c.get(due.id).status == "expired", 10, "the expiry to catch up")
        s = c.get(due.id)
    assert s.expired_at_us == s.expires_at_us == due.expires_at_us
    assert d.proc.pid == pid and d.proc.poll() is None  # type: ignore[union-attr]
    assert figures(d).backend_ok is True


def _answers(c: object, sid: str) -> bool:
    try:
        c.get(sid)  # type: ignore[attr-defined]
    except BackendUnavailable:
        return False
    return True


def test_stats_answers_while_the_engine_is_away_and_says_so(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    healthy = figures(d)
    assert healthy.backend_ok is True and healthy.backend_error is None
    node.kill()
    r = d.ctl("stats", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["backend_ok"] is False
    assert data["backend_error"]
    _names_the_engine(data["backend"], node)
    assert PASSWORD not in r.stdout
    human = d.ctl("stats")
    assert human.returncode == 0, human.stderr
    assert "unreachable" in human.stdout
    _names_the_engine(human.stdout, node)
    node.start()
    wait_until(lambda: figures(d).backend_ok, 10, "the engine's health to come back")
    assert "unreachable" not in d.ctl("stats").stdout


def test_timed_expiry_catches_up_after_a_pause_at_the_deadlines(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    with d.client() as c, c.pipeline() as p:
        made = [p.create(ttl=1) for _ in range(5)]
    sessions = [m.result() for m in made]
    node.pause()
    try:
        last = max(s.expires_at_us for s in sessions)
        wait_until(lambda: time.time() * 1e6 > last + 1_500_000, 10, "the deadlines")
    finally:
        node.resume()
    with d.client() as c:
        wait_until(lambda: figures(d).expiries_done == 5, 15, "the expiries to catch up")
        for s in sessions:
            now = c.get(s.id)
            assert now.status == "expired" and now.expired_at_us == s.expires_at_us


def test_a_watch_ends_saying_the_engine_is_away(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    w = Watching(d)
    w.started(d)
    node.kill()
    wait_until(lambda: w.error is not None, 10, "the watch to end")
    assert isinstance(w.error, BackendUnavailable), repr(w.error)
    _names_the_engine(str(w.error), node)
    assert "Traceback" not in d.log_text()
    r = d.ctl("watch")
    assert r.returncode == 3
    _names_the_engine(r.stderr, node)


def test_sessionctl_watch_waits_for_the_engine_and_resumes_after_the_last_event_shown(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    w = CtlWatch(d, "--json")
    try:
        wait_until(lambda: watchers(d) == 1, 15, "the watch to start")
        with d.client() as c:
            sid = c.create(meta={"k": "before"}).id
        w.lines.until(lambda line: json.loads(line)["event"] == "created")
        node.kill()
        # The daemon's watch ended (stats answers with the engine away).
        wait_until(lambda: watchers(d) == 0, 15, "the watch to be ended by the daemon")
        node.start()
        with d.client() as c:
            wait_until(lambda: _answers(c, sid), 15, "the daemon to serve again")
            c.set(sid, "k", "after")
        # Whether the watch asked again before or after this change, it
        # resumes at its cursor: the change is shown.
        seen = w.lines.until(lambda line: json.loads(line)["event"] == "updated", 30)
        assert json.loads(seen[-1])["session"]["meta"] == {"k": "after"}
    finally:
        status, err = w.interrupt()
    assert status == 0, err
    assert "to resume after the last event shown" in err, err
    _names_the_engine(err, node)


def test_sessionctl_watch_gives_up_when_the_engine_stays_away_past_its_patience(
    engine_and_daemon: tuple[RedisNode, Daemon],
) -> None:
    node, d = engine_and_daemon
    with CtlWatch(d, "--json", "--reconnect-timeout", "1") as w:
        wait_until(lambda: watchers(d) == 1, 15, "the watch to start")
        with d.client() as c:
            c.create()
        w.lines.until(lambda line: json.loads(line)["event"] == "created")
        node.kill()
        status, err = w.ended()
    assert status == 3, err
    assert "the engine did not come back within 1s" in err, err
    _names_the_engine(err, node)
    assert len(err.strip().splitlines()) == 2, err  # the wait said once, then the end
