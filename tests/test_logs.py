"""The daemon's log fits where it goes: under journald (``JOURNAL_STREAM``
naming its stderr) ``<N>`` priority prefixes on every line and no timestamp
of its own; with ``--log-file`` (as autostart runs it) a file rotated by
size, which its stderr follows; otherwise stderr in the usual format.

Every daemon here is a real one; journald is stood in for by a pipe whose
device and inode the test puts in ``JOURNAL_STREAM``, as systemd does for
the stream it connects.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessiond import __version__
from sessiond.errors import InternalError
from sessiond.replay import TMP_SUFFIX
from tests.conftest import SESSIOND, Daemon, wait_until

pytestmark = pytest.mark.local_only("the daemon's logs, whatever the engine")

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
PRIORITY = re.compile(r"<([0-7])>")
USUAL_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} sessiond\[(\d+)\] (\w+) ")


class PipeStderr:
    """A pipe for a daemon's stderr, read by a thread; ``journal_stream``
    is the ``DEVICE:INODE`` systemd would put in ``JOURNAL_STREAM``."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        st = os.fstat(self.write_fd)
        self.journal_stream = f"{st.st_dev}:{st.st_ino}"
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            self._chunks.append(chunk)
        os.close(self.read_fd)

    def text(self) -> str:
        return b"".join(list(self._chunks)).decode(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def close_ours(self) -> None:
        """Close our copy of the write end (the daemon holds its own), once."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def wait_closed(self) -> None:
        self._thread.join(15)
        assert not self._thread.is_alive(), "the daemon's stderr never closed"


def start_on_pipe(d: Daemon, pipe: PipeStderr, *args: str, env: dict[str, str]) -> None:
    """Start ``d`` with its stderr on ``pipe`` (conftest's ``start`` takes a file)."""
    (d.root / "run").mkdir(mode=0o700, exist_ok=True)
    (d.root / "home").mkdir(mode=0o700, exist_ok=True)
    full_env = d.env
    full_env.update(env)
    d.proc = subprocess.Popen(
        [SESSIOND, *args], env=full_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=pipe.write_fd,
    )
    pipe.close_ours()


@pytest.fixture
def pipe() -> Iterator[PipeStderr]:
    p = PipeStderr()
    yield p
    p.close_ours()  # if no daemon was started on it


# -- journald ------------------------------------------------------------


def test_under_journald_every_line_has_its_priority_and_no_timestamp(
    make_daemon: Callable[..., Daemon], pipe: PipeStderr,
) -> None:
    d = make_daemon(start=False)
    # A warning at start: temp files of an interrupted compaction.
    d.data_dir.mkdir(mode=0o700)
    (d.data_dir / ("data.jsonl" + TMP_SUFFIX)).write_bytes(b"")
    # An error with a traceback: the reply to the first create (replies:
    # 1 hello, 2 the create) cannot be encoded.
    start_on_pipe(d, pipe, env={"JOURNAL_STREAM": pipe.journal_stream,
                                "SESSIOND_FAILPOINT": "reply-encode-error@2:1"})
    wait_until(lambda: "ready on" in pipe.text(), 15, "sessiond to say it is ready")
    with d.client() as c, pytest.raises(InternalError):
        c.create(id="a")
    assert d.stop() == 0
    pipe.wait_closed()

    lines = pipe.lines()
    assert "<4>removed " in pipe.text() and "interrupted compaction" in pipe.text()
    assert d.proc is not None
    assert f"<6>sessiond {__version__} ready on {d.socket} (pid {d.proc.pid}," in pipe.text()
    # journald stamps time and pid itself: none of ours, on any line.
    for line in lines:
        assert PRIORITY.match(line), line
        assert not TIMESTAMP.search(line) and "sessiond[" not in line, line
    # Every line of the traceback is an error, not only its first.
    start = lines.index("<3>Traceback (most recent call last):")
    assert lines[start - 1].startswith("<3>internal error encoding the reply to Create")
    frames = [line for line in lines if line.lstrip("<0123456789>").startswith("  File ")]
    assert frames and all(line.startswith("<3>  File ") for line in frames)
    assert any(line.startswith("<3>OverflowError") for line in lines[start:])
    assert lines[-1] == "<6>stopped"


@pytest.mark.parametrize("stream", ["other file", "12345", "a:b", ""])
def test_a_journal_stream_that_is_not_our_stderr_keeps_the_usual_format(
    make_daemon: Callable[..., Daemon], pipe: PipeStderr, stream: str,
) -> None:
    # A process started from a shell that runs under systemd inherits
    # JOURNAL_STREAM with its stderr somewhere else: the journal is not there.
    d = make_daemon(start=False)
    if stream == "other file":
        other = os.stat(SESSIOND)
        stream = f"{other.st_dev}:{other.st_ino}"
    start_on_pipe(d, pipe, env={"JOURNAL_STREAM": stream})
    wait_until(lambda: "ready on" in pipe.text(), 15, "sessiond to say it is ready")
    assert d.stop() == 0
    pipe.wait_closed()
    lines = pipe.lines()
    assert lines and all(USUAL_LINE.match(line) for line in lines), lines
    ready = next(line for line in lines if "ready on" in line)
    match = USUAL_LINE.match(ready)
    assert d.proc is not None and match
    assert match.groups() == (str(d.proc.pid), "INFO")


# -- the log file --------------------------------------------------------


def log_state(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size)


def hup_and_wait_for_a_line(d: Daemon, log: Path) -> None:
    """SIGHUP (one line: "SIGHUP: reloaded ..."), and wait until it reached
    the log: the file grew, or it is a new file (it rotated)."""
    before = log_state(log)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: log_state(log) != before, 15, "the reload to be logged")


def test_the_log_file_rotates_by_size_keeping_the_backups_asked_for(
    make_daemon: Callable[..., Daemon],
) -> None:
    log = Path(make_daemon(start=False).root / "sessiond.log")
    d = make_daemon("--log-file", str(log), "--log-max-bytes", "600", "--log-backups", "2")
    for _ in range(20):
        hup_and_wait_for_a_line(d, log)
    assert d.stop() == 0

    kept = [log, log.with_name("sessiond.log.1"), log.with_name("sessiond.log.2")]
    assert all(p.exists() for p in kept)
    assert not log.with_name("sessiond.log.3").exists()
    for p in kept:
        assert p.stat().st_size <= 600, p
        assert p.stat().st_mode & 0o777 == 0o600, p
    # Oldest first, the kept files are the log's last lines, in order.
    text = "".join(p.read_text() for p in reversed(kept))
    lines = text.splitlines()
    assert all(USUAL_LINE.match(line) for line in lines), lines
    assert 0 < text.count("SIGHUP: reloaded") < 20  # the oldest were dropped
    assert lines[-1].endswith(" INFO stopped") and log.read_text().endswith(" INFO stopped\n")
    # Nothing went to the stderr it was started with.
    assert d.log_text() == ""


def test_a_crash_after_a_rotation_lands_in_the_current_log_file(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Whatever reaches stderr rather than the logging module (here the
    # interpreter's own report of a fatal signal) must follow the file.
    log = Path(make_daemon(start=False).root / "sessiond.log")
    d = make_daemon("--log-file", str(log), "--log-max-bytes", "300",
                    env={"PYTHONFAULTHANDLER": "1"})
    first = log.stat().st_ino
    while log.stat().st_ino == first:
        hup_and_wait_for_a_line(d, log)
    assert d.proc is not None
    assert os.readlink(f"/proc/{d.proc.pid}/fd/2") == str(log)
    d.proc.send_signal(signal.SIGSEGV)
    assert d.proc.wait(15) == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in log.read_text()
    assert "Segmentation fault" not in log.with_name("sessiond.log.1").read_text()


def test_only_the_daemon_that_holds_the_data_dir_rotates_the_log(
    make_daemon: Callable[..., Daemon],
) -> None:
    log = Path(make_daemon(start=False).root / "sessiond.log")
    d = make_daemon("--log-file", str(log))
    # A second daemon on the same data dir and log, with a size its one
    # line passes: it must not rename the file under the first.
    second = subprocess.run(
        [SESSIOND, "--log-file", str(log), "--log-max-bytes", "1"],
        env=d.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert second.returncode == 1
    assert second.stdout == "" and second.stderr == ""
    assert not log.with_name("sessiond.log.1").exists()
    text = log.read_text()
    assert "ready on" in text and "already uses data dir" in text
    hup_and_wait_for_a_line(d, log)
    assert log.read_text().count("SIGHUP: reloaded") == 1


def test_a_log_file_that_cannot_be_opened_stops_the_start_saying_why(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    missing = d.root / "no" / "such" / "dir" / "sessiond.log"
    r = subprocess.run([SESSIOND, "--log-file", str(missing)], env=d.env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1
    assert f"cannot open the log file {missing}: No such file or directory" in r.stderr
    assert not d.socket.exists() and not d.journal.exists()


@pytest.mark.parametrize("flag", ["--log-max-bytes", "--log-backups"])
@pytest.mark.parametrize("value", ["0", "-1", "1k"])
def test_a_bad_log_size_or_count_is_a_usage_error(
    make_daemon: Callable[..., Daemon], flag: str, value: str,
) -> None:
    d = make_daemon(start=False)
    r = subprocess.run([SESSIOND, flag, value], env=d.env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert f"argument {flag}: " in r.stderr and repr(value) in r.stderr
    assert not d.data_dir.exists()


# -- autostart -----------------------------------------------------------

AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}


def test_autostart_runs_the_daemon_with_its_rotating_log_file(
    make_daemon: Callable[..., Daemon], started: list[int],
) -> None:
    d = make_daemon(start=False)
    r = d.ctl("ping", "--json", env=AUTOSTART_ON)
    assert r.returncode == 0, r.stderr
    with d.client() as c:
        pid = c.ping().pid
    started.append(pid)
    log = d.data_dir / "sessiond.log"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert argv[1:3] == [b"-m", b"sessiond"]
    assert argv[argv.index(b"--log-file") + 1] == os.fsencode(log)
    assert os.readlink(f"/proc/{pid}/fd/2") == str(log)
    assert "ready on" in log.read_text()


def test_a_daemon_that_dies_before_its_log_is_set_up_still_says_why_in_it(
    make_daemon: Callable[..., Daemon], started: list[int], tmp_path: Path,
) -> None:
    # A broken installation: the daemon's first import fails, long before
    # it reads --log-file. sessionctl itself never imports anyio.
    broken = tmp_path / "broken"
    (broken / "anyio").mkdir(parents=True)
    (broken / "anyio" / "__init__.py").write_text(
        "raise ImportError('anyio broken on purpose by the test')\n"
    )
    d = make_daemon(start=False)
    r = d.ctl("ping", env={**AUTOSTART_ON, "PYTHONPATH": str(broken)})
    log = d.data_dir / "sessiond.log"
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("sessionctl: error: ") and str(log) in r.stderr
    text = log.read_text()
    assert "Traceback" in text and "anyio broken on purpose by the test" in text

