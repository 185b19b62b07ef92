"""``sessionctl watch`` survives a daemon restart: it says so in one line on
stderr, reconnects when a daemon answers on the socket again, and goes on
printing events; it starts no daemon to do so. ``--no-reconnect`` ends it
(exit 3) when the connection is lost; past ``--reconnect-timeout`` with no
daemon answering it gives up (exit 3).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import SESSIONCTL, Daemon, wait_until
from tests.test_watch import Lines, watchers

AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}


class Watch:
    """``sessionctl watch ARGS``, both of its outputs read line by line."""

    def __init__(self, d: Daemon, *args: str, env: dict[str, str] | None = None) -> None:
        full = d.env
        full.update(env or {})
        self.proc = subprocess.Popen(
            [SESSIONCTL, "watch", *args], env=full, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            stream.close()


@pytest.fixture
def watching() -> Iterator[list[Watch]]:
    made: list[Watch] = []
    yield made
    for w in made:
        w.close()


def watch(d: Daemon, made: list[Watch], *args: str, **kw: dict[str, str]) -> Watch:
    w = Watch(d, *args, **kw)
    made.append(w)
    wait_until(lambda: watchers(d) >= 1, 15, "the watch to start")
    return w


@pytest.mark.parametrize("as_json", [False, True])
def test_watch_reconnects_after_a_restart_and_goes_on(
    daemon: Daemon, watching: list[Watch], as_json: bool
) -> None:
    w = watch(daemon, watching, *(["--json"] if as_json else []))
    with daemon.client() as c:
        before = c.create(user="before").id
    w.out.until(lambda line: before in line)
    daemon.restart()
    said = w.err.until(lambda line: "reconnected" in line, timeout=30)
    assert said == [said[-1]]  # one line, and nothing before it
    assert daemon.proc is not None
    assert said[0].startswith(f"sessionctl: watch: reconnected to sessiond on {daemon.socket} "
                              f"(pid {daemon.proc.pid}) after losing the connection (")
    # A shared daemon's events carry cursors: the watch resumes after the
    # last one it showed; a local daemon keeps no events to resume from.
    assert said[0].endswith("); resuming after the last event shown" if daemon.engine.shared
                            else "); events in between were missed")
    # What happened to the connection, not what a lost request is told of
    # its outcome, which means nothing to a watch.
    assert "carried out" not in said[0] and "next call" not in said[0], said[0]
    with daemon.client() as c:
        wait_until(lambda: c.stats().watchers == 1, 15, "the watch to be back")
        after = c.create(user="after").id
    w.out.until(lambda line: after in line)
    w.proc.send_signal(signal.SIGINT)
    assert w.proc.wait(30) == 0


def test_no_reconnect_ends_with_exit_3_when_the_daemon_stops(
    daemon: Daemon, watching: list[Watch]
) -> None:
    w = watch(daemon, watching, "--no-reconnect")
    daemon.stop()
    assert w.proc.wait(30) == 3
    lines = w.err.until(lambda line: True)
    assert lines[0].startswith("sessionctl: error: ") and "closed the connection" in lines[0]


def test_watch_gives_up_after_the_reconnect_timeout_and_starts_no_daemon(
    daemon: Daemon, watching: list[Watch]
) -> None:
    w = watch(daemon, watching, "--reconnect-timeout", "2s", env=AUTOSTART_ON)
    # Timed from before the stop: the watch loses its connection during the
    # stop, which can take a while (a shared daemon's engine link), and its
    # timeout runs from then.
    stopping = time.monotonic()
    daemon.stop()
    assert w.proc.wait(30) == 3
    waited = time.monotonic() - stopping
    assert waited >= 1.9  # it did wait (the check allows a little slack)
    lines = w.err.until(lambda line: True)
    assert lines[0].startswith(
        f"sessionctl: error: watch: lost the connection to sessiond on {daemon.socket} ("
    )
    assert "and no daemon answered there again within 2s" in lines[0]
    assert lines[0].endswith("; giving up")
    # Autostart was on, and still nothing was started to reconnect to (a
    # daemon started here would have bound the socket).
    assert not daemon.socket.exists()


def test_watch_help_documents_the_reconnect(daemon: Daemon) -> None:
    text = " ".join(daemon.ctl("help", "watch").stdout.split())
    assert "--no-reconnect" in text
    assert "default: 60s" in text
