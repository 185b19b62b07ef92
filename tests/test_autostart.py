"""Autostart: when nothing answers, ``sessionctl`` starts ``sessiond`` itself,
detached, logging to the data dir, waits for it and goes on; unless told not
to. Every daemon a test causes is found through ``ping`` and stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionctl import Client, DaemonUnavailable
from tests.conftest import SESSIOND, Daemon

pytestmark = pytest.mark.local_only("autostart starts a daemon with the default (local) engine")

AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}


def daemon_pid(d: Daemon) -> int | None:
    try:
        with Client(d.socket, timeout=10) as c:
            return c.ping().pid
    except DaemonUnavailable:
        return None


def test_sessionctl_starts_the_daemon_and_goes_on(
    make_daemon: Callable[..., Daemon], started: list[int]
) -> None:
    d = make_daemon(start=False)
    r = d.ctl("create", "--user", "auto", "--json", env=AUTOSTART_ON)
    pid = daemon_pid(d)
    if pid is not None:
        started.append(pid)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert pid is not None
    made = json.loads(r.stdout)
    assert made["user"] == "auto"
    # The command went on against the daemon it started, which stays up.
    with Client(d.socket) as c:
        assert c.get(made["id"]).user == "auto"
    log = d.data_dir / "sessiond.log"
    assert log.exists() and log.stat().st_mode & 0o777 == 0o600
    # Detached: a session of its own, so the terminal's signals do not reach it.
    assert os.getsid(pid) == pid
    # The next command finds it running and starts nothing more.
    again = d.ctl("ping", "--json", env=AUTOSTART_ON)
    assert again.returncode == 0 and json.loads(again.stdout)["pid"] == pid


@pytest.mark.parametrize(
    ("flags", "level", "said"),
    [(["--autostarted"], "INFO", "already serves data dir {}; leaving it to it"),
     ([], "ERROR", "already uses data dir {}")],
    ids=["autostarted", "by-hand"],
)
def test_a_daemon_that_finds_the_data_dir_taken_is_an_error_unless_autostart_raced(
    daemon: Daemon, flags: list[str], level: str, said: str
) -> None:
    # An autostarted daemon that finds another there lost a race among
    # commands started at once, which all go on with the winner: no error.
    assert daemon.proc is not None
    log = daemon.root / "second.log"
    done = subprocess.run(
        [SESSIOND, *flags, "--log-file", str(log)], env=daemon.env, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert done.returncode == 1 and done.stderr == "", done
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        f" {level} another sessiond (pid {daemon.proc.pid}) {said.format(daemon.data_dir)}"
    ), lines


def test_no_autostart_flag_turns_it_off(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    r = d.ctl("ping", "--no-autostart", env=AUTOSTART_ON)
    assert r.returncode == 3
    assert r.stderr.startswith("sessionctl: error: ") and str(d.socket) in r.stderr
    assert "sessiond" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not d.socket.exists() and not (d.data_dir / "sessiond.log").exists()


@pytest.mark.parametrize("value", ["1", "yes", "TRUE", "on"])
def test_environment_variable_turns_it_off(
    make_daemon: Callable[..., Daemon], value: str
) -> None:
    d = make_daemon(start=False)
    r = d.ctl("ping", env={"SESSIONCTL_NO_AUTOSTART": value})
    assert r.returncode == 3 and str(d.socket) in r.stderr
    assert not d.socket.exists() and not (d.data_dir / "sessiond.log").exists()


def test_a_false_word_in_the_variable_leaves_it_on_as_systemd_reads_booleans(
    make_daemon: Callable[..., Daemon], started: list[int]
) -> None:
    # (Client reads "false" alike: test_client_autostart.)
    d = make_daemon(start=False)
    r = d.ctl("ping", "--json", env={"SESSIONCTL_NO_AUTOSTART": "Off"})
    pid = daemon_pid(d)
    if pid is not None:
        started.append(pid)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pid"] == pid


@pytest.mark.parametrize("value", ["maybe", "2", "offf"])
def test_a_variable_that_is_no_boolean_is_refused_in_one_line(
    make_daemon: Callable[..., Daemon], value: str
) -> None:
    d = make_daemon(start=False)
    r = d.ctl("ping", env={"SESSIONCTL_NO_AUTOSTART": value})
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(
        f"sessionctl: error: SESSIONCTL_NO_AUTOSTART={value!r} is not a boolean: 1, yes, true "
        f"or on turns autostart off; 0, no, false, off or empty leaves it on"), r.stderr
    assert not d.socket.exists() and not (d.data_dir / "sessiond.log").exists()
    # --no-autostart does not read it, and says to unset it too.
    r = d.ctl("ping", "--no-autostart", env={"SESSIONCTL_NO_AUTOSTART": value})
    assert r.returncode == 3 and "drop --no-autostart and unset SESSIONCTL_NO_AUTOSTART" in r.stderr


def test_a_daemon_that_cannot_start_is_exit_3_saying_why_and_naming_the_log(
    make_daemon: Callable[..., Daemon], started: list[int]
) -> None:
    d = make_daemon(start=False)
    d.config.write_text("{ this is not json")
    d.config.chmod(0o600)
    r = d.ctl("ping", env=AUTOSTART_ON)
    pid = daemon_pid(d)
    if pid is not None:
        started.append(pid)
    log = d.data_dir / "sessiond.log"
    assert r.returncode == 3, r.stderr
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("sessionctl: error: ") and str(log) in r.stderr
    assert "not valid JSON" in log.read_text()
    # Its reason, from its log, in the one line.
    assert f"before answering on {d.socket}: config {d.config} is not valid JSON" in r.stderr
    assert pid is None


def test_bad_input_starts_no_daemon(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    r = d.ctl("get", "not/an/id", env=AUTOSTART_ON)
    assert r.returncode == 2
    assert not d.socket.exists() and not Path(d.data_dir / "sessiond.log").exists()
