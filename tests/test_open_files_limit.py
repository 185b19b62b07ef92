"""A daemon short of file descriptors (RLIMIT_NOFILE): more clients than it
has descriptors for. Those it can serve are served, the others are told
``busy`` at once (not left waiting in the listen backlog until their own
timeout), and the daemon keeps the descriptors its journal needs."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from typing import Any

import pytest

from sessiond.errors import Busy
from tests.conftest import Daemon, wait_until
from tests.rawwire import Raw, fd_count

pytestmark = pytest.mark.local_only("the daemon's own descriptors: its journal's among them")

LIMIT = 64


def low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def ping(r: Raw) -> dict[str, Any]:
    """Its answer to a ping, or the refusal it was sent on arrival."""
    try:
        r.send_request(op="ping", id=1)
    except BrokenPipeError:
        pass  # refused and closed already: its refusal waits to be read
    reply = r.read_frame()
    assert reply is not None, "closed without a word"
    return reply


def test_clients_past_the_open_files_limit_are_told_busy_and_the_others_served(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.start(preexec_fn=low_limit)
    raws: list[Raw] = []
    try:
        for _ in range(LIMIT + 16):
            raws.append(Raw(d.socket))
        # Each is answered. Before, those past the limit waited unanswered
        # in the backlog (the accept loop backing off on EMFILE) until
        # their own timeout, and said only that the daemon did not answer.
        replies = [ping(r) for r in raws]
        served = [r for r, reply in zip(raws, replies, strict=True) if reply["r"] == "pong"]
        busy = [reply for reply in replies if reply["r"] == "error"]
        assert served and busy, replies
        assert len(served) + len(busy) == len(raws)
        for reply in busy:
            assert reply["code"] == "busy", reply
            assert "open files limit" in reply["message"], reply
        # Those in keep being served, writes included, and the journal
        # still has the descriptors a compaction needs.
        first = served[0]
        assert first.call(op="create", id=2, sid="in", user="u")["r"] == "session"
        compacted = first.call(op="compact", id=3)
        assert compacted["r"] != "error", compacted
        for r in raws[1:]:
            r.close()
        # Once descriptors are free, a new client gets in.
        with d.client(timeout=10) as c:

            def got_in() -> bool:
                try:
                    c.create(id="later", user="u")
                except Busy:
                    return False
                return True

            wait_until(got_in, what="a new client served")
    finally:
        for r in raws:
            r.close()
    d.kill()
    d.start()
    with d.client() as c:
        assert c.get("in").id == "in" and c.get("later").id == "later"


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Under systemd a service gets a soft limit of 1024 (for select()) and
    # a far higher hard one: 1000 connections, the default, must fit.
    d = make_daemon(start=False)
    d.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, 4096)))
    assert d.proc is not None
    soft, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
    assert (soft, hard) == (4096, 4096)


def starved_ping(
    d: Daemon, pid: int, limits: tuple[int, int], holders: list[Raw]
) -> dict[str, Any]:
    """A ping's answer on a new connection, once the daemon has no
    descriptor free: the holes among its descriptors filled with
    connections of ``holders`` (an accepted connection takes the lowest
    free number), then its soft open files limit lowered to those it
    holds, so that accept() finds none free however high its spare is.
    (A connection it was still closing may free one after that: then the
    ping is served, and the caller tries again.)"""
    resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    while True:
        held = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        free = next(n for n in range(max(held) + 2) if n not in held)
        if free > max(held):
            break
        holders.append(Raw(d.socket))
        got = holders[-1].call(op="ping", id=1)
        assert got["r"] == "pong", got
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free, limits[1]))
    with Raw(d.socket, timeout=10) as r:
        reply = ping(r)
        if reply["r"] == "error":
            assert r.at_eof()
        return reply


def test_a_client_is_told_busy_when_accept_finds_no_descriptor_free(
    make_daemon: Callable[..., Daemon],
) -> None:
    # The descriptors used up by something other than connections (here
    # the limit lowered under the running daemon, as prlimit does, to the
    # ones it holds): accept() itself fails. Before, the client waited
    # unanswered in the backlog until its own timeout; the spare
    # descriptor lets the daemon accept it, say why and close it.
    d = make_daemon()
    assert d.proc is not None
    pid = d.proc.pid
    before = fd_count(pid)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    holders: list[Raw] = []
    try:
        for _ in range(5):
            reply = wait_until(
                lambda: (r := starved_ping(d, pid, (soft, hard), holders))["r"] != "pong" and r,
                what="a ping with no descriptor free",
            )
            assert reply["code"] == "busy", reply
            assert "out of file descriptors" in reply["message"], reply
            assert "RLIMIT_NOFILE" in reply["message"], reply
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        for holder in holders:
            holder.close()
    # Descriptors free again: served as ever, and none was lost on the way.
    with d.client(timeout=10) as c:
        assert c.create(id="after", user="u").id == "after"
    wait_until(lambda: fd_count(pid) == before, what="the daemon's descriptors as before")
    wait_until(lambda: "accepting connections again" in d.log_text(), what="the log's all clear")
