"""How autostart starts a daemon and waits for it: as long as the daemon it
started runs (a big journal takes seconds to replay), up to the client's
``timeout``, and no longer once it has exited; in ``/``, with every path it
is given absolute; and a daemon that fails to start is quoted, not only
pointed at.

A slow start is a real daemon held as it starts: the ``start-hold``
failpoint holds it at its replay, its data dir locked and its socket not yet
bound, until the test sends it SIGHUP (which it acts on, reloading its
config, once it serves).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sessionctl import Client, DaemonUnavailable
from sessionctl.autostart import _reason
from tests.conftest import FAILPOINT, SESSIONCTL, Daemon, wait_until
from tests.test_client_autostart import Fresh, fresh  # noqa: F401  (a fixture)

pytestmark = pytest.mark.local_only("autostart starts a daemon with the default (local) engine")

# How long autostart waited, whatever the daemon was doing, before it waited
# as long as the daemon runs.
OLD_BOUND = 5.0


HOLDING = "failpoint start-hold: holding until a signal is pending"


def held_daemon(where: Fresh) -> int | None:
    """The pid of the daemon that holds the data dir, once the failpoint
    holds its start."""
    try:
        if HOLDING not in (where.data_dir / "sessiond.log").read_text():
            return None
        return int((where.data_dir / "sessiond.lock").read_text())
    except (OSError, ValueError):
        return None


def test_autostart_waits_as_long_as_the_daemon_it_started_runs(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(FAILPOINT, "start-hold")
    ctl = subprocess.Popen([SESSIONCTL, "ping", "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    pid = wait_until(lambda: held_daemon(fresh), 15, "the daemon's start to hold")
    held_at = time.monotonic()
    try:
        # The client started it before this saw it held: past the old
        # bound from here, it is past it for the client too.
        wait_until(lambda: ctl.poll() is not None
                   or time.monotonic() > held_at + OLD_BOUND + 1, 30, "the old bound")
        assert ctl.poll() is None, ctl.communicate()
    finally:
        os.kill(pid, signal.SIGHUP)
    out, err = ctl.communicate(timeout=60)
    assert ctl.returncode == 0, err
    assert json.loads(out)["pid"] == pid


def test_autostart_gives_up_at_the_clients_timeout_saying_the_daemon_may_still_come(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(FAILPOINT, "start-hold")
    began = time.monotonic()
    try:
        with pytest.raises(DaemonUnavailable) as caught:
            Client(timeout=1.0)
        waited = time.monotonic() - began
        message = str(caught.value)
        pid = held_daemon(fresh)
        assert pid is not None and f"sessiond (pid {pid}), started, has not answered" in message
        assert f"on {fresh.socket} within 1s" in message and "sessiond.log" in message
        assert 1.0 <= waited < OLD_BOUND, waited
    finally:
        pid = held_daemon(fresh)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)  # it comes up, and the fixture stops it
            monkeypatch.delenv(FAILPOINT)
            wait_until(fresh.socket.exists, 15, "the daemon to answer")


def test_an_autostarted_daemon_runs_in_the_root_directory_with_absolute_paths(
    fresh: Fresh, tmp_path: Path, started: list[int]  # noqa: F811
) -> None:
    # It would keep the caller's directory (its filesystem busy) for its
    # whole life; relative paths keep meaning what they meant there.
    work = tmp_path / "work"
    work.mkdir(mode=0o700)  # the socket's directory
    config = work / "config.json"
    config.write_text(json.dumps({"default_ttl": 77}))
    config.chmod(0o600)
    env = {**os.environ, "SESSIOND_SOCKET": "s.sock", "SESSIOND_DATA_DIR": "data",
           "SESSIOND_CONFIG": "config.json"}
    r = subprocess.run([SESSIONCTL, "create", "--json"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    if (work / "s.sock").exists():
        with Client(work / "s.sock", autostart=False, timeout=10) as c:
            started.append(c.ping().pid)
    assert r.returncode == 0, r.stderr
    assert os.readlink(f"/proc/{started[0]}/cwd") == "/"
    assert json.loads(r.stdout)["ttl"] == 77
    assert (work / "data" / "data.jsonl").exists()


def test_the_reason_of_a_failed_start_is_its_last_error_else_its_last_word(
    tmp_path: Path
) -> None:
    log = tmp_path / "sessiond.log"
    earlier = "2026-01-01 10:00:00,000 sessiond[7] ERROR an earlier start's reason\n"
    log.write_text(earlier)
    offset = len(earlier)
    with log.open("a") as f:
        f.write("2026-01-01 10:00:01,000 sessiond[9] ERROR another start's: lost a race\n"
                "2026-01-01 10:00:01,000 sessiond[8] INFO starting\n"
                "2026-01-01 10:00:01,000 sessiond[8] ERROR config c.json is not valid JSON\n"
                "Traceback (most recent call last):\n  ...\nValueError: in the traceback\n")
    assert _reason(log, offset, 8) == "config c.json is not valid JSON"
    # Nothing logged: what reached its stderr last (the interpreter's word).
    assert _reason(log, offset, 10) == "ValueError: in the traceback"
    assert _reason(log, log.stat().st_size, 8) is None
    assert _reason(tmp_path / "none.log", 0, 8) is None


def test_a_daemon_holding_the_data_dir_on_another_socket_fails_the_start_at_once(
    daemon: Daemon, tmp_path: Path
) -> None:
    # The one started finds the data dir locked; the holder would never
    # answer here, so nothing is waited for.
    assert daemon.proc is not None
    other = tmp_path / "other.sock"
    began = time.monotonic()
    r = daemon.ctl("ping", env={"SESSIOND_SOCKET": str(other), "SESSIONCTL_NO_AUTOSTART": ""})
    assert r.returncode == 3 and len(r.stderr.splitlines()) == 1, r.stderr
    assert (f"another sessiond (pid {daemon.proc.pid}) holds data dir {daemon.data_dir} and "
            f"listens on {daemon.socket}, not on {other}") in r.stderr
    assert time.monotonic() - began < OLD_BOUND


def test_a_relative_socket_too_long_once_absolute_is_still_bound_from_the_callers_directory(
    fresh: Fresh, tmp_path: Path, started: list[int]  # noqa: F811
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    assert len(str(deep / "s.sock")) > 107
    r = subprocess.run([SESSIONCTL, "--socket", "s.sock", "ping", "--json"], cwd=deep,
                       capture_output=True, text=True, timeout=60, check=False)
    if r.returncode == 0:
        started.append(json.loads(r.stdout)["pid"])
    assert r.returncode == 0, r.stderr
    assert os.readlink(f"/proc/{started[0]}/cwd") == str(deep)
