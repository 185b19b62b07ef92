"""Where ``sessionctl``'s stdout goes wrong, it says so as Unix tools do.

A reader that goes away (``| head -1``) ends the command quietly with
status 0, as it ends ``ls`` or ``systemctl``; a stdout that cannot take the
output (a full disk: ``> /dev/full``) is one error line and status 1, help
included; a closed stdout changes nothing. Never a traceback. All through
the real ``sessionctl`` against a real daemon.
"""

from __future__ import annotations

import subprocess

import pytest

from sessionctl import Client
from tests.conftest import SESSIONCTL, Daemon

pytestmark = pytest.mark.local_only("what the client does with its stdout is the client's alone")


def to_full_disk(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    with open("/dev/full", "w") as full:
        return subprocess.run([SESSIONCTL, *args], env=d.env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=30, check=False)


def assert_one_error_line(r: subprocess.CompletedProcess[str], what: str) -> None:
    assert r.returncode == 1, (what, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, (what, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessionctl: error: "), (what, r.stderr)
    # Says what failed, as coreutils' "write error" does: not a bare errno text.
    assert lines[0] == "sessionctl: error: cannot write the output: No space left on device", (
        what, r.stderr)


def test_help_to_a_full_disk_is_one_error_line_and_status_1(daemon: Daemon) -> None:
    for args in (["--help"], ["-h"], ["list", "--help"], ["config", "-h"], ["help"],
                 ["help", "list"]):
        assert_one_error_line(to_full_disk(daemon, *args), " ".join(args))


def test_every_kind_of_output_to_a_full_disk_is_one_error_line(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.create(user="alice").id
    for args in (["list"], ["list", "--json"], ["list", "--ids"], ["get", sid], ["stats"],
                 ["config"], ["config", "default_ttl"], ["export"],
                 ["export", "--format", "csv"], ["ping"], ["version"], ["completion", "bash"]):
        assert_one_error_line(to_full_disk(daemon, *args), " ".join(args))


def test_a_reader_that_goes_away_ends_the_command_quietly(daemon: Daemon) -> None:
    # Far more than a pipe holds, so that the command is still writing when
    # the reader leaves.
    with Client(daemon.socket) as c, c.pipeline(returning="ack") as p:
        for i in range(3000):
            p.create(user=f"user{i}", meta={"note": "x" * 100})
    for args in (["list"], ["list", "--json"], ["export"], ["export", "--format", "csv"],
                 ["completion", "zsh"], ["--help"]):
        proc = subprocess.Popen([SESSIONCTL, *args], env=daemon.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()  # what `head -1` takes, then it leaves
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.wait(30) == 0, (args, err)
        assert err == "", (args, err)


def test_a_closed_stdout_changes_nothing(daemon: Daemon) -> None:
    # ``sessionctl create >&-``, as a shell runs it.
    r = subprocess.run(["sh", "-c", 'exec "$0" create --user bob >&-', SESSIONCTL],
                       env=daemon.env, stderr=subprocess.PIPE, text=True, timeout=30,
                       check=False)
    assert r.returncode == 1 and r.stderr == (
        "sessionctl: error: standard output is closed; nothing was done\n")
    with daemon.client() as c:
        assert [s for s in c.iter_sessions() if s.user == "bob"] == []
