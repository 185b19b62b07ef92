"""Signals that come while the daemon starts (replaying its journal): they
wait until it can act on them, rather than end it with their default
action. A SIGHUP then reloads the config once the daemon serves; a SIGTERM
stops it cleanly once it can. The log says that a replay is under way.

The ``start-hold`` failpoint holds the start before its replay until a
signal is pending: a slow replay, without millions of sessions to make one.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from tests.conftest import FAILPOINT, START_TIMEOUT, Daemon, wait_until

pytestmark = pytest.mark.local_only("the replay of the local journal is the start that takes long")

HOLDING = "failpoint start-hold: holding until a signal is pending"


def held_in_replay(make_daemon: Callable[..., Daemon]) -> tuple[Daemon, list[str]]:
    """A daemon with sessions in its journal, started again and held at its
    replay; the ids of its sessions."""
    d = make_daemon()
    with d.client() as c:
        sids = [c.create(user="u").id for _ in range(3)]
    assert d.stop() == 0
    d.extra_env[FAILPOINT] = "start-hold"
    d.start(wait=False)
    wait_until(lambda: HOLDING in d.log_text(), START_TIMEOUT, "the start to hold at replay")
    return d, sids


def test_the_log_says_a_replay_is_under_way_while_it_runs(
    make_daemon: Callable[..., Daemon],
) -> None:
    d, _ = held_in_replay(make_daemon)
    size = len(d.journal_bytes())
    # Reserved zeros follow the lines: the file is at least that long.
    line = next(line for line in d.log_text().splitlines() if "replaying " in line)
    said = int(line.split("replaying ", 1)[1].split(" bytes of data.jsonl")[0])
    assert said >= size > 0, line
    assert f"in {d.data_dir}; the socket answers once that is done" in line
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(START_TIMEOUT) == 0


def test_a_sighup_during_the_start_reloads_once_the_daemon_serves(
    make_daemon: Callable[..., Daemon],
) -> None:
    d, sids = held_in_replay(make_daemon)
    assert d.proc is not None
    d.config.write_text(json.dumps({"default_ttl": 77}))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_ready()
    wait_until(lambda: "SIGHUP: reloaded" in d.log_text(), START_TIMEOUT, "the reload")
    assert d.proc.poll() is None
    with d.client() as c:
        assert c.config("default_ttl") == {"default_ttl": 77}
        assert [c.get(sid).user for sid in sids] == ["u"] * 3
    assert d.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_sigterm_or_sigint_during_the_start_stops_the_daemon_cleanly_once_it_can(
    make_daemon: Callable[..., Daemon], signum: signal.Signals,
) -> None:
    d, sids = held_in_replay(make_daemon)
    assert d.proc is not None
    d.proc.send_signal(signum)
    assert d.proc.wait(START_TIMEOUT) == 0
    text = d.log_text()
    assert f"received {signum.name}" in text and text.rstrip().endswith("stopped"), text
    del d.extra_env[FAILPOINT]
    d.start()
    with d.client() as c:
        assert [c.get(sid).user for sid in sids] == ["u"] * 3
