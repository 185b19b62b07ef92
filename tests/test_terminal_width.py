"""Output for people fits the terminal it is shown on, as systemctl's does.

On a terminal (a real pseudo-terminal here, of a known size), ``list``,
``get``, ``stats`` and ``watch`` (and ``config``, whose values are short) cut the widest free-text
column short with an ellipsis so that no line wraps; ``-l``/``--full``
shows everything, and output that is no terminal (a pipe, ``--json``) is
never cut. All through the real ``sessionctl`` against a real daemon.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
from collections.abc import Iterator

import pytest

from sessionctl import Client
from tests.conftest import SESSIONCTL, Daemon, wait_until
from tests.test_watch import watchers

pytestmark = pytest.mark.local_only("fitting output to a terminal is the client's alone")

LONG_META = "a long note that goes on " * 8  # 200 characters
LONG_USER = "u" * 120


def on_terminal(d: Daemon, *args: str, columns: int = 100,
                env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """``sessionctl ARGS`` with its stdout on a terminal ``columns`` wide:
    its exit status and the lines it showed there."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        # No output post-processing: the lines arrive as they were written.
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        full_env = {k: v for k, v in d.env.items() if k != "COLUMNS"}
        full_env.update(env or {})
        proc = subprocess.Popen([SESSIONCTL, *args], env=full_env, stdin=subprocess.DEVNULL,
                                stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        slave = -1
        shown = _read_all(master)
        status = proc.wait(30)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert err == "", err
        return status, shown.decode().splitlines()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def _read_all(master: int) -> bytes:
    """What the terminal shows until every writer has closed it."""
    data = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def widths(lines: list[str]) -> list[int]:
    return [len(line) for line in lines]


@pytest.fixture
def long_meta(daemon: Daemon) -> Iterator[str]:
    with daemon.client() as c:
        yield c.create(user="alice", meta={"note": LONG_META}).id


def test_list_on_a_narrow_terminal_cuts_the_meta_column_to_fit(
    daemon: Daemon, long_meta: str
) -> None:
    status, lines = on_terminal(daemon, "list", columns=100)
    assert status == 0
    row = next(line for line in lines if line.startswith(long_meta))
    assert max(widths(lines)) <= 100, lines
    assert len(row) == 100 and row.endswith("\u2026"), row
    assert "note=a long note" in row  # the start of the value is kept


def test_list_cuts_the_widest_free_column_first(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.create(user=LONG_USER, meta={"k": "v"}).id
    status, lines = on_terminal(daemon, "list", columns=100)
    assert status == 0
    row = next(line for line in lines if line.startswith(sid))
    assert len(row) <= 100, row
    assert "uuuuu\u2026" in row and row.endswith("  k=v"), row


def test_full_flag_shows_every_value_whole_on_a_terminal(daemon: Daemon, long_meta: str) -> None:
    for flag in ("-l", "--full"):
        status, lines = on_terminal(daemon, "list", flag, columns=100)
        assert status == 0
        row = next(line for line in lines if line.startswith(long_meta))
        assert row.endswith(f"note={LONG_META}".rstrip()), row
        status, lines = on_terminal(daemon, flag, "get", long_meta, columns=60)
        assert f"meta.note    {LONG_META}" in lines


def test_columns_in_the_environment_wins_over_the_terminal_size(
    daemon: Daemon, long_meta: str
) -> None:
    status, lines = on_terminal(daemon, "list", columns=200, env={"COLUMNS": "90"})
    assert status == 0
    assert max(widths(lines)) == 90, lines


def test_output_that_is_no_terminal_is_never_cut(daemon: Daemon, long_meta: str) -> None:
    piped = daemon.ctl("list", env={"COLUMNS": "40"})
    assert piped.returncode == 0
    assert f"note={LONG_META}".rstrip() in piped.stdout
    assert "\u2026" not in piped.stdout
    status, lines = on_terminal(daemon, "list", "--json", columns=40)
    assert status == 0
    assert json.loads("\n".join(lines))[0]["meta"]["note"] == LONG_META


def test_get_and_stats_fit_the_terminal(daemon: Daemon, long_meta: str) -> None:
    status, lines = on_terminal(daemon, "get", long_meta, columns=60)
    assert status == 0
    assert max(widths(lines)) <= 60, lines
    note = next(line for line in lines if line.startswith("meta.note"))
    assert len(note) == 60 and note.endswith("\u2026"), note
    # The journal's path, in a temporary directory, is longer than 40 columns.
    assert len(str(daemon.journal)) > 40
    status, lines = on_terminal(daemon, "stats", columns=40)
    assert status == 0
    journal = next(line for line in lines if line.startswith("journal "))
    assert len(journal) == 40 and journal.endswith("\u2026"), journal


def test_an_ascii_terminal_gets_three_dots(daemon: Daemon, long_meta: str) -> None:
    status, lines = on_terminal(daemon, "list", columns=100, env={"PYTHONIOENCODING": "ascii"})
    assert status == 0
    row = next(line for line in lines if line.startswith(long_meta))
    assert len(row) == 100 and row.endswith("..."), row


def test_watch_lines_fit_the_terminal(daemon: Daemon) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 80, 0, 0))
    env = {k: v for k, v in daemon.env.items() if k != "COLUMNS"}
    proc = subprocess.Popen([SESSIONCTL, "watch"], env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    try:
        wait_until(lambda: watchers(daemon) == 1, 15, "the watch to be registered")
        long_id = "i" * 128
        with Client(daemon.socket) as c:
            sid = c.create(user=LONG_USER).id
            c.create(user=LONG_USER, id=long_id)
        seen = bytearray()

        def shown() -> bool:
            if select.select([master], [], [], 0.1)[0]:
                seen.extend(os.read(master, 65536))
            return seen.count(b"\n") >= 2

        wait_until(shown, 15, "the watch to show the events")
        first, second = seen.decode().splitlines()[:2]
        assert sid in first and len(first) == 80 and first.endswith("\u2026"), first
        # The user is what is cut, never the id, however long.
        assert f" {long_id} user=u" in second and second.endswith("\u2026"), second
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        os.close(master)


def test_get_never_cuts_the_id_and_a_long_meta_key_does_not_squeeze_every_value(
    daemon: Daemon,
) -> None:
    long_key = "k" * 200
    with daemon.client() as c:
        sid = c.create(user="alice", meta={long_key: "v", "note": LONG_META}).id
    status, lines = on_terminal(daemon, "get", sid, columns=80)
    assert status == 0
    assert max(widths(lines)) <= 80, lines
    # The key column is cut to a third of the width, not the values to nothing.
    status_row = next(line for line in lines if line.startswith("status"))
    assert "active (expires in " in status_row and "\u2026" not in status_row, status_row
    key_row = next(line for line in lines if line.startswith("meta.kkk"))
    assert key_row.endswith("\u2026  v"), key_row
    status, lines = on_terminal(daemon, "get", sid, columns=30)
    assert status == 0
    assert any(line.endswith(sid) for line in lines), lines  # an id is never cut


def test_get_cuts_nothing_when_every_line_fits(daemon: Daemon) -> None:
    key = "a_fairly_long_meta_key_of_forty_chars_xx"
    with daemon.client() as c:
        sid = c.create(user="alice", meta={key: "v"}).id
    status, lines = on_terminal(daemon, "get", sid, columns=100)
    assert status == 0
    assert f"meta.{key}  v" in lines, lines
    assert not any("\u2026" in line for line in lines), lines
