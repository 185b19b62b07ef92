"""Keeping others out, and staying whole across starts and signals.

Every test ends by checking that the daemon (or its successor) still answers
a normal client with its state intact.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from sessionctl import Client
from sessiond.errors import Busy, DaemonUnavailable
from sessiond.peers import LOG_EVERY, Refusals
from tests.conftest import SESSIONCTL, Daemon, wait_until
from tests.isolation import OTHER_UID
from tests.rawwire import request, seed, snapshot, write_config


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def answers(socket_path: Path) -> bool:
    try:
        with Client(socket_path, timeout=5) as c:
            c.ping()
        return True
    except DaemonUnavailable:
        return False


def exits_refusing(d: Daemon, *fragments: str) -> str:
    """Start ``d``, expect it to refuse (exit 1), return its log."""
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(15) == 1, d.log_text()
    text = d.log_text()
    for fragment in fragments:
        assert fragment in text, text
    return text


# -- the socket directory, the socket and the files ---------------------------


def test_socket_directory_is_created_0700_and_socket_0600_even_with_umask_0(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    sock = d.root / "fresh" / "sessiond.sock"
    d.extra_env["SESSIOND_SOCKET"] = str(sock)
    d.start(wait=False, preexec_fn=lambda: os.umask(0))
    wait_until(lambda: answers(sock), 15, "the daemon on a fresh socket directory")
    assert mode(sock.parent) == 0o700
    assert stat.S_ISSOCK(os.lstat(sock).st_mode) and mode(sock) == 0o600
    assert mode(d.data_dir) == 0o700
    assert d.stop() == 0


@pytest.mark.local_only("the journal's and the config file's modes")
def test_journal_config_and_lock_are_0600_even_with_umask_0(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.start(preexec_fn=lambda: os.umask(0))
    ids = seed(d.socket)
    with d.client() as c:
        c.set_config("default_ttl", 7200)
    for path in (d.journal, d.config, d.data_dir / "sessiond.lock"):
        assert mode(path) == 0o600, path
    with d.client() as c:
        c.compact()
    # Compaction renames a new file over the journal: it must be 0600 too.
    assert mode(d.journal) == 0o600
    with d.client() as c:
        assert sorted(s.id for s in c.list()) == sorted(ids)


def test_autostart_log_is_0600_even_with_umask_0(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    (d.root / "run").mkdir(mode=0o700)
    (d.root / "home").mkdir(mode=0o700)
    env = d.env
    env["SESSIONCTL_NO_AUTOSTART"] = "0"
    done = subprocess.run(
        [SESSIONCTL, "create", "--user", "auto"], env=env, capture_output=True, text=True,
        timeout=30, check=False, preexec_fn=lambda: os.umask(0),
    )
    assert done.returncode == 0, done.stderr
    with d.client() as c:
        pid = c.ping().pid
    try:
        log_path = d.data_dir / "sessiond.log"
        assert log_path.exists()
        assert mode(log_path) == 0o600
        assert mode(d.journal) == 0o600
        assert mode(d.socket) == 0o600
        with d.client() as c:
            assert [s.user for s in c.list()] == ["auto"]
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not answers(d.socket), 10, "the autostarted daemon to stop")


def _group_writable(d: Daemon, where: Path) -> None:
    where.mkdir(mode=0o700)
    where.chmod(0o770)


def _world_readable(d: Daemon, where: Path) -> None:
    where.mkdir(mode=0o700)
    where.chmod(0o705)


def _symlink(d: Daemon, where: Path) -> None:
    real = d.root / "elsewhere"
    real.mkdir(mode=0o700)
    where.symlink_to(real)


def _other_owner(d: Daemon, where: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another uid")
    where.mkdir(mode=0o700)
    os.chown(where, OTHER_UID, -1)


UNSAFE = {
    "group-writable": (_group_writable, "open to group or others"),
    "world-readable": (_world_readable, "open to group or others"),
    "symlink": (_symlink, "is a symlink"),
    "other-owner": (_other_owner, f"owned by uid {OTHER_UID}"),
}


def test_a_data_dir_whose_lock_cannot_be_opened_is_refused_in_words(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A read-only file system or a lock that is not a file: one line that
    says which data dir cannot be used and why, not a bare OS error."""
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    (d.data_dir / "sessiond.lock").mkdir()
    text = exits_refusing(
        d, f"cannot use data dir {d.data_dir}: its lock file sessiond.lock cannot be opened",
        "Is a directory",
    )
    assert "Errno" not in text


@pytest.mark.parametrize("which", ["socket", "data"])
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_directory_is_refused_naming_it(
    make_daemon: Callable[..., Daemon], case: str, which: str
) -> None:
    d = make_daemon(start=False)
    where = d.socket.parent if which == "socket" else d.data_dir
    prepare, why = UNSAFE[case]
    prepare(d, where)
    exits_refusing(d, "unsafe permissions", str(where), why)
    assert not d.socket.exists()
    # Once the directory is fixed the same daemon starts and serves.
    if where.is_symlink():
        where.unlink()
    else:
        os.chown(where, os.getuid(), -1)
        where.chmod(0o700)
    d.start()
    seed(d.socket)
    assert len(snapshot(d.socket)[0]) == 3


# Run as root, then as OTHER_UID: SO_PEERCRED reports the effective uid;
# keeping the filesystem uid lets the script through the 0700 directory, so
# that the daemon's own check is what stops it.
AS_OTHER_UID = (
    "import ctypes, os, socket, sys\n"
    f"os.setgroups([]); os.setegid({OTHER_UID}); os.seteuid({OTHER_UID})\n"
    "ctypes.CDLL(None).setfsuid(0)\n"
)


def as_other_uid(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid (CI runs this test as root)")
    return subprocess.run(
        [sys.executable, "-c", AS_OTHER_UID + script, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_peer_of_another_uid_is_refused_told_why_and_logged(daemon: Daemon) -> None:
    seed(daemon.socket)
    before = snapshot(daemon.socket)
    script = (
        "s = socket.socket(socket.AF_UNIX); s.settimeout(10)\n"
        "s.connect(sys.argv[1])\n"
        # The daemon may close before the request is even sent: refused at once.
        "try:\n"
        "    s.sendall(bytes.fromhex(sys.argv[2]))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    pass\n"
        "data = b''\n"
        # The daemon hangs up on a request it did not read: the stream ends,
        # or is reset, after what it sent.
        "try:\n"
        "    while chunk := s.recv(65536):\n"
        "        data += chunk\n"
        "except ConnectionResetError:\n"
        "    pass\n"
        "print('uid', os.geteuid(), 'reply', data.hex())\n"
    )
    create = request(op="create", id=1, user="intruder")
    done = as_other_uid(script, str(daemon.socket), create.hex())
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[:3] == ["uid", str(OTHER_UID), "reply"], done.stdout
    # One frame, the daemon's last word (id 0), then the end of the stream.
    reply = bytes.fromhex(words[3])
    assert int.from_bytes(reply[:4], "big") == len(reply) - 4
    body = msgspec.msgpack.decode(reply[4:])
    assert (body["r"], body["id"], body["code"]) == ("error", 0, "unavailable"), body
    assert body["message"].startswith(
        f"refused: this sessiond serves uid {os.getuid()}; you are uid {OTHER_UID}"
    )
    wait_until(lambda: f"refused a connection from uid {OTHER_UID}" in daemon.log_text(),
               10, "the refusal to be logged")
    assert snapshot(daemon.socket) == before


@pytest.mark.local_only("the peer check is the server's, the same in front of every engine")
def test_a_client_of_another_uid_says_whose_daemon_it_is_and_the_log_notes_it_once(
    daemon: Daemon,
) -> None:
    script = (
        "from sessionctl import Client\n"
        "from sessionctl.cli import main\n"
        "from sessiond.errors import SessionError\n"
        "for _ in range(4):\n"
        "    try:\n"
        "        Client(sys.argv[1], autostart=False).ping()\n"
        "    except SessionError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "sys.exit(main(['--socket', sys.argv[1], '--no-autostart', 'get', 'abc']))\n"
    )
    done = as_other_uid(script, str(daemon.socket))
    # The client sees whose daemon it is before it sends a byte
    # (tests/test_client_refuses_foreign_server.py); the daemon refuses the
    # connection all the same.
    said = (f"refused: what listens on {daemon.socket} runs as uid {os.getuid()}, not as you "
            f"(uid {OTHER_UID}): it is not your sessiond (each user runs a daemon of their "
            f"own, on a socket of their own), and nothing was sent to it")
    assert done.stdout.splitlines() == [f"DaemonUnavailable {said}"] * 4, done
    # The CLI: one line, exit 3, as for a daemon it cannot use.
    assert (done.returncode, done.stderr) == (3, f"sessionctl: error: {said}\n")
    # Five refusals, one line: a peer in a loop cannot fill the owner's log.
    wait_until(lambda: f"refused a connection from uid {OTHER_UID}" in daemon.log_text(),
               10, "the refusal to be logged")
    assert daemon.log_text().count(f"refused a connection from uid {OTHER_UID}") == 1
    assert answers(daemon.socket)


def test_refusals_of_a_uid_are_logged_once_a_minute_with_a_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    refusals = Refusals(1000, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="sessiond.server"):
        for uid in (1001, 1001, 1001, 1002):
            refusals.note(uid)
        now[0] = LOG_EVERY - 1
        refusals.note(1001)
        now[0] = LOG_EVERY + 1
        refusals.note(1001)
        refusals.note(1001)
    assert [r.getMessage() for r in caplog.records] == [
        "refused a connection from uid 1001 (only uid 1000 may connect)",
        "refused a connection from uid 1002 (only uid 1000 may connect)",
        "refused a connection from uid 1001 (only uid 1000 may connect); 3 more from it "
        "since the last such line, not logged",
    ]


# -- one daemon per data dir; stale sockets ----------------------------------


def test_second_daemon_on_the_same_data_dir_is_refused_naming_the_holder(
    make_daemon: Callable[..., Daemon],
) -> None:
    first = make_daemon()
    seed(first.socket)
    before = snapshot(first.socket)
    assert first.proc is not None
    # Same data dir, same socket: the lock is taken before the socket is
    # touched, so the first daemon's socket must survive.
    second = make_daemon(start=False, root=first.root)
    exits_refusing(second, f"another sessiond (pid {first.proc.pid})", str(first.data_dir))
    # Same data dir, another socket.
    third = make_daemon(start=False, root=first.root)
    third.extra_env["SESSIOND_SOCKET"] = str(first.root / "run" / "other.sock")
    exits_refusing(third, f"another sessiond (pid {first.proc.pid})")
    assert first.socket.exists()
    assert snapshot(first.socket) == before


def test_second_daemon_on_the_same_socket_is_refused(make_daemon: Callable[..., Daemon]) -> None:
    first = make_daemon()
    seed(first.socket)
    before = snapshot(first.socket)
    second = make_daemon(start=False)
    second.extra_env["SESSIOND_SOCKET"] = str(first.socket)
    exits_refusing(second, "in use by another running sessiond", str(first.socket))
    assert snapshot(first.socket) == before


def test_stale_socket_of_a_killed_daemon_is_replaced(daemon: Daemon) -> None:
    seed(daemon.socket)
    before = snapshot(daemon.socket)[0]
    daemon.kill()
    assert stat.S_ISSOCK(os.lstat(daemon.socket).st_mode), "kill -9 leaves its socket behind"
    daemon.start()
    assert "replacing stale socket" in daemon.log_text()
    assert snapshot(daemon.socket)[0] == before


# -- signals ---------------------------------------------------------------


def test_sigterm_during_a_burst_of_writes_exits_0_within_5s_losing_nothing_acknowledged(
    daemon: Daemon,
) -> None:
    seeded = seed(daemon.socket)
    acked: list[str] = []
    surprises: list[BaseException] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        try:
            with daemon.client(timeout=30) as c:
                while True:
                    sid = c.create(user=f"burst{n}", ttl=86400, meta={"n": n}).id
                    with lock:
                        acked.append(sid)
        except (DaemonUnavailable, Busy):
            return  # the daemon went away or told us it is stopping: expected
        except BaseException as exc:  # reported by the assertion below
            surprises.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) >= 300, 30, "a burst of acknowledged writes")
        assert daemon.proc is not None
        stopped_at = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        status = daemon.proc.wait(10)
        took = time.monotonic() - stopped_at
    finally:
        for t in threads:
            t.join(30)
    assert status == 0, daemon.log_text()
    assert took < 5.0, f"took {took:.2f}s to stop"
    assert not surprises, surprises
    assert not daemon.socket.exists()
    daemon.start()
    with daemon.client() as c:
        present = {s.id for s in c.list()}
    missing = (set(acked) | set(seeded)) - present
    assert not missing, f"{len(missing)} acknowledged sessions lost"


@pytest.mark.local_only(
    "SIGHUP reloads config.json (shared mode reads the namespace's: tests/test_shared.py)"
)
def test_sighup_reloads_config_and_does_not_kill(daemon: Daemon) -> None:
    assert daemon.proc is not None
    seed(daemon.socket)
    before = snapshot(daemon.socket)
    write_config(daemon.config, idle_timeout=42, max_connections=77)
    daemon.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        with daemon.client() as c:
            return bool(c.config()["max_connections"] == 77)

    wait_until(reloaded, 10, "SIGHUP to reload the config")
    with daemon.client() as c:
        assert c.config("idle_timeout") == {"idle_timeout": 42.0}
    # A broken config is reported and the running settings are kept.
    daemon.config.write_text("{not json")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: config not reloaded" in daemon.log_text(), 10,
               "the bad config to be reported")
    assert daemon.proc.poll() is None
    with daemon.client() as c:
        assert c.config()["max_connections"] == 77
    after = snapshot(daemon.socket)
    assert after[0] == before[0]
    assert {k: v for k, v in after[1].items() if k != "config"} == {
        k: v for k, v in before[1].items() if k != "config"}
    assert daemon.stop() == 0
