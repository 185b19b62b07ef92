"""systemd integration: the units, sd_notify, socket activation,
``sessiond install-service`` and autostart's deference to an installed service.

No user manager is needed: a datagram socket stands in for ``$NOTIFY_SOCKET``,
``systemd-socket-activate`` (or a small launcher) for the socket unit, and
every ``systemctl --user`` call is pointed at a runtime dir and bus address
inside the test's temporary directory, so none can reach a real manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest

from sessionctl import Client
from sessiond.service import exec_quote
from tests.conftest import SESSIONCTL, SESSIOND, START_TIMEOUT, Daemon, needs, wait_until

pytestmark = pytest.mark.local_only("the systemd units start a local daemon")

REPO_UNITS = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ("sessiond.service", "sessiond.socket")

# Binds a Unix stream socket, puts it at fd 3 and execs the command: what
# systemd does for a socket unit, as the sd_listen_fds protocol describes it.
LAUNCHER = r"""
import os, socket, sys
path, kind, *command = sys.argv[1:]
sock = socket.socket(socket.AF_UNIX, getattr(socket, kind))
sock.bind(path)
if kind == "SOCK_STREAM":
    sock.listen(16)
os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)  # dup2 onto itself leaves close-on-exec set
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(command[0], command)
"""


def isolated_env(d: Daemon, **extra: str) -> dict[str, str]:
    """The daemon's environment, with ``systemctl --user`` unable to reach
    any user manager but one living in this test's directory (there is none)."""
    runtime = d.root / "xrt"
    runtime.mkdir(mode=0o700, exist_ok=True)
    (d.root / "home").mkdir(mode=0o700, exist_ok=True)
    env = d.env
    env.update(
        XDG_RUNTIME_DIR=str(runtime),
        DBUS_SESSION_BUS_ADDRESS=f"unix:path={runtime / 'no-bus'}",
    )
    env.update(extra)
    return env


def unit_dir(d: Daemon) -> Path:
    return Path(d.env["XDG_CONFIG_HOME"]) / "systemd" / "user"


def install_service(
    d: Daemon, *args: str, manager: bool = False, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``sessiond install-service ARGS``: with ``manager``, a stand-in user
    manager answers its ``systemctl`` calls (see ``fake_systemctl``); else
    none does, as in a container."""
    if manager:
        extra.setdefault("PATH", fake_systemctl(d) + os.pathsep + os.environ["PATH"])
    return subprocess.run(
        [SESSIOND, "install-service", *args], env=isolated_env(d, **extra),
        capture_output=True, text=True, timeout=60, check=False,
    )


# A stand-in for ``systemctl --user`` with a user manager behind it: it
# logs every call (calls.jsonl), answers ``show -p MainPID`` with the pid in
# state.json, and ``stop`` by stopping that process as systemd would
# (SIGTERM, then waiting for it to exit); any other call succeeds. With
# "manager": false in state.json every call fails, as with no manager; the
# verbs listed in "fail" fail.
FAKE_SYSTEMCTL = r"""#!{python}
import json, os, signal, sys, time
here = os.path.dirname(os.path.abspath(__file__))
args = [a for a in sys.argv[1:] if a != "--user"]
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
with open(os.path.join(here, "state.json")) as f:
    state = json.load(f)
if not state.get("manager", True):
    sys.exit("Failed to connect to bus: No such file or directory")
if args[0] in state.get("fail", []):
    sys.exit(f"Job for {{args[-1]}} failed.")
pid = state.get("main_pid", 0)
if args[0] == "show":
    print(pid)
elif args[0] == "stop" and pid:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{{pid}}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.01)
    else:
        sys.exit(f"{{pid}} did not stop")
"""


def fake_systemctl(d: Daemon, **state: object) -> str:
    """A directory holding the stand-in ``systemctl`` (its state: ``state``),
    to put first on PATH."""
    where = d.root / "fake-systemctl"
    where.mkdir(exist_ok=True)
    script = where / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(python=sys.executable))
    script.chmod(0o755)
    (where / "state.json").write_text(json.dumps(state))
    return str(where)


def systemctl_calls(d: Daemon) -> list[list[str]]:
    """What the stand-in ``systemctl`` was asked, in order."""
    log = d.root / "fake-systemctl" / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


class NotifyListener:
    """A stand-in for systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def wait_for(self, line: str, d: Daemon, timeout: float = START_TIMEOUT) -> str:
        """The first message that has ``line`` among its lines."""
        assert d.proc is not None
        proc = d.proc

        def seen() -> str | None:
            for message in self.poll():
                if line in message.split("\n"):
                    return message
            if proc.poll() is not None:
                raise AssertionError(f"sessiond exited with {proc.returncode}:\n{d.log_text()}")
            return None

        found: str = wait_until(seen, timeout, f"{line} on the notify socket")
        return found

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def started_by_systemd(
    d: Daemon, address: str | None = None, **env: str
) -> Iterator[NotifyListener]:
    """``d`` started (not waited for) with a notification socket, as systemd
    starts a service: at ``address`` (else a file in ``d``'s root), with
    ``env`` besides; the listener is closed after."""
    listener = NotifyListener(address or str(d.root / "notify.sock"))
    try:
        d.extra_env.update(NOTIFY_SOCKET=listener.address, **env)
        d.start(wait=False)
        yield listener
    finally:
        listener.close()


def ping_once(path: Path, timeout: float = 5.0) -> int:
    """One connection and one round trip, no retrying: the pid that answered.

    ``timeout`` bounds the wait for the answer, which a connection queued in
    a listening socket gets once the daemon has started."""
    with Client(path, timeout=timeout) as c:
        c.ping()
        assert c.server_pid is not None
        return c.server_pid


# -- the unit files ------------------------------------------------------


def test_units_ship_as_package_data_identical_to_the_repository_files() -> None:
    packaged = resources.files("sessiond").joinpath("units")
    for name in UNITS:
        assert packaged.joinpath(name).read_text() == (REPO_UNITS / name).read_text()


def test_service_unit_is_notify_type_hardened_and_keeps_home_visible() -> None:
    text = (REPO_UNITS / "sessiond.service").read_text()
    lines = set(text.splitlines())
    for want in (
        "Type=notify", "Restart=on-failure", "UMask=0077", "NoNewPrivileges=yes",
        # Internet sockets too: shared mode reaches its backend over TCP or
        # TLS under this unit, as the README's drop-in shows.
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
    ):
        assert want in lines, want
    assert not any(line.startswith("ProtectHome=") for line in lines)
    exec_lines = [line for line in lines if line.startswith("ExecStart=")]
    assert len(exec_lines) == 1 and exec_lines[0].startswith("ExecStart=/")


def test_service_unit_reload_command_makes_the_daemon_read_its_config_again(
    make_daemon: Callable[..., Daemon],
) -> None:
    lines = (REPO_UNITS / "sessiond.service").read_text().splitlines()
    reload = [line.partition("=")[2] for line in lines if line.startswith("ExecReload=")]
    assert len(reload) == 1, reload
    d = make_daemon()
    assert d.proc is not None
    d.config.write_text(json.dumps({"default_ttl": 77}))
    # Run as systemd runs it for `systemctl --user reload sessiond`.
    command = reload[0].replace("$MAINPID", str(d.proc.pid)).split()
    subprocess.run(command, check=True, timeout=30)
    wait_until(lambda: "SIGHUP: reloaded" in d.log_text(), START_TIMEOUT, "the reload")
    with d.client() as c:
        assert c.config("default_ttl") == {"default_ttl": 77}


def test_socket_unit_listens_on_the_daemons_default_path_privately() -> None:
    lines = set((REPO_UNITS / "sessiond.socket").read_text().splitlines())
    assert {
        "ListenStream=%t/sessiond/sessiond.sock", "SocketMode=0600", "DirectoryMode=0700",
    } <= lines


def test_installed_units_pass_systemd_analyze_verify(
    make_daemon: Callable[..., Daemon],
) -> None:
    analyze = needs("systemd-analyze")  # without it the units cannot be verified
    d = make_daemon(start=False)
    assert install_service(d, manager=True).returncode == 0
    installed = [str(unit_dir(d) / name) for name in UNITS]
    done = subprocess.run(
        [analyze, "verify", "--user", *installed], env=isolated_env(d),
        capture_output=True, text=True, timeout=60, check=False,
    )
    # verify exits 0 on unknown keys and merely warns: any word about our
    # units is a failure.
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert "sessiond" not in said, said


# -- sd_notify -----------------------------------------------------------


def test_ready_is_sent_only_once_replayed_sessions_are_served(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    with d.client() as c:
        sids = [c.create(user="u").id for _ in range(50)]
    d.stop()
    with started_by_systemd(d) as listener:
        ready = listener.wait_for("READY=1", d)
        # No retrying: at the moment READY=1 arrives the daemon must answer,
        # with every replayed session, and say how many it holds.
        assert d.proc is not None and ping_once(d.socket) == d.proc.pid
        with d.client() as c:
            assert c.get(sids[-1]).user == "u"
        assert "STATUS=serving 50 sessions" in ready.split("\n")
        assert d.stop() == 0
        assert any("STOPPING=1" in m.split("\n") for m in listener.poll())


def test_no_ready_when_the_journal_cannot_be_replayed(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    d.journal.write_text('{"type": "session", "id": "a"\n{"type": "delete", "id": "b"}\n')
    with started_by_systemd(d) as listener:
        assert d.proc is not None
        assert d.proc.wait(START_TIMEOUT) == 1
        assert "line 1 (byte offset 0) is damaged" in d.log_text()
        assert not any("READY=1" in m.split("\n") for m in listener.poll())


def test_watchdog_pings_and_status_follows_the_session_count(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    # An abstract address, as systemd uses for user managers on some systems.
    address = f"@sessiond-test-{uuid.uuid4().hex}"
    with started_by_systemd(d, address, WATCHDOG_USEC="200000") as listener:
        listener.wait_for("READY=1", d)
        listener.wait_for("WATCHDOG=1", d)
        with d.client() as c:
            c.create(user="w")
        listener.wait_for("STATUS=serving 1 session", d)
        assert d.stop() == 0


@pytest.mark.parametrize(
    ("env", "said"),
    [({"WATCHDOG_USEC": "abc"}, "WATCHDOG_USEC='abc' is not a whole number"),
     ({"WATCHDOG_USEC": "0"}, "WATCHDOG_USEC='0' is not positive"),
     ({"NOTIFY_SOCKET": "vsock:2:1234"}, "NOTIFY_SOCKET='vsock:2:1234' is not a Unix socket")],
)
def test_a_bad_watchdog_or_notify_socket_stops_the_start_in_one_line_before_ready(
    make_daemon: Callable[..., Daemon], env: dict[str, str], said: str,
) -> None:
    d = make_daemon(start=False, env=env)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(START_TIMEOUT) == 1
    text = d.log_text()
    assert [line for line in text.splitlines() if " ERROR " in line] == [
        next(line for line in text.splitlines() if said in line)
    ], text
    assert "ready on" not in text and "Traceback" not in text, text


# -- socket activation ---------------------------------------------------


def _activated(d: Daemon, launcher: list[str]) -> None:
    """Start ``launcher`` (which ends by exec-ing sessiond with the socket at
    fd 3), check the daemon answers there and leaves the socket on SIGTERM."""
    (d.root / "run").mkdir(mode=0o700, exist_ok=True)
    with d.log.open("ab") as log:
        d.proc = subprocess.Popen(
            launcher, env=d.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
    proc = d.proc

    def bound() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the launcher exited with {proc.returncode}:\n{d.log_text()}")
        return d.socket.exists()

    wait_until(bound, START_TIMEOUT, "the activation socket")
    inode = os.stat(d.socket).st_ino
    # The launcher execs sessiond, so the pid that answers is the launcher's.
    assert ping_once(d.socket, START_TIMEOUT) == d.proc.pid
    assert "using the socket passed by systemd" in d.log_text()
    with d.client() as c:
        sid = c.create(user="activated").id
    assert d.stop() == 0, d.log_text()
    st = os.lstat(d.socket)
    assert stat.S_ISSOCK(st.st_mode) and st.st_ino == inode
    assert sid in d.journal.read_text()


def test_daemon_adopts_a_socket_passed_as_fd_3_and_never_unlinks_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    _activated(d, [sys.executable, "-c", LAUNCHER, str(d.socket), "SOCK_STREAM", SESSIOND])


def test_daemon_refuses_a_passed_socket_that_is_not_a_stream_socket(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    (d.root / "run").mkdir(mode=0o700, exist_ok=True)
    with d.log.open("ab") as log:
        d.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(d.socket), "SOCK_DGRAM", SESSIOND],
            env=d.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
    assert d.proc.wait(START_TIMEOUT) == 1
    assert "not a Unix stream socket" in d.log_text()
    assert "Traceback" not in d.log_text()


def test_daemon_serves_under_systemd_socket_activate(
    make_daemon: Callable[..., Daemon],
) -> None:
    activate = needs("systemd-socket-activate")
    d = make_daemon(start=False)
    # systemd-socket-activate gives the child only the variables named here.
    names = ["SESSIOND_SOCKET", "SESSIOND_DATA_DIR", "SESSIOND_CONFIG", "HOME",
             "XDG_CONFIG_HOME", "PATH"]
    passed = [arg for name in names for arg in ("-E", name)]
    _activated(d, [activate, "-l", str(d.socket), *passed, SESSIOND])


# -- install-service and autostart ---------------------------------------


def test_install_service_writes_both_units_and_uninstall_removes_them(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    done = install_service(d, manager=True)
    assert done.returncode == 0, done.stderr
    target = unit_dir(d)
    service = (target / "sessiond.service").read_text().splitlines()
    repo = (REPO_UNITS / "sessiond.service").read_text().splitlines()
    assert len(service) == len(repo)
    changed = [(a, b) for a, b in zip(repo, service, strict=True) if a != b]
    assert changed == [(next(x for x in repo if x.startswith("ExecStart=")),
                        f"ExecStart={exec_quote(Path(SESSIOND))}")]
    assert (target / "sessiond.socket").read_text() == (REPO_UNITS / "sessiond.socket").read_text()
    assert done.stdout.splitlines()[-1].strip() == "systemctl --user enable --now sessiond.socket"
    assert ["daemon-reload"] in systemctl_calls(d)

    again = install_service(d, "--uninstall", manager=True)
    assert again.returncode == 0, again.stderr
    assert not any((target / name).exists() for name in UNITS)
    assert ["disable", "--now", "sessiond.socket", "sessiond.service"] in systemctl_calls(d)


def test_install_service_without_a_user_manager_writes_the_units_and_fails_saying_what_to_run(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    done = install_service(d)
    # No user manager answers here: the units are written all the same, the
    # skipped reload is reported with its reason, and the status says that
    # they are not in force yet.
    assert done.returncode == 1, done
    assert all((unit_dir(d) / name).exists() for name in UNITS)
    assert "daemon-reload skipped: " in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("sessiond: error: the units are written but no user manager")
    assert ("run 'systemctl --user daemon-reload && systemctl --user enable --now "
            "sessiond.socket'") in last


def test_uninstall_removes_enablement_links_systemctl_could_not(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    assert install_service(d).returncode == 1  # written; no manager to load them
    wants = unit_dir(d) / "sockets.target.wants"
    wants.mkdir()
    (wants / "sessiond.socket").symlink_to(unit_dir(d) / "sessiond.socket")
    done = install_service(d, "--uninstall")
    assert done.returncode == 0, done.stderr
    assert not (wants / "sessiond.socket").is_symlink()


def _kill_stray_daemon(d: Daemon) -> None:
    """If autostart wrongly spawned a daemon, do not leave it running."""
    lock = d.data_dir / "sessiond.lock"
    if lock.exists():
        pid = lock.read_text().strip()
        if pid.isdigit():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("systemctl", ["missing", "no user manager"])
def test_autostart_leaves_an_installed_service_to_systemd(
    make_daemon: Callable[..., Daemon], systemctl: str,
) -> None:
    d = make_daemon(start=False)
    assert install_service(d, manager=True).returncode == 0
    extra: dict[str, str] = {"SESSIONCTL_NO_AUTOSTART": ""}
    if systemctl == "missing":
        empty = d.root / "empty-path"
        empty.mkdir()
        extra["PATH"] = str(empty)
    elif shutil.which("systemctl") is None:
        pytest.skip("systemctl is not installed")
    env = isolated_env(d, **extra)
    # The units own the default socket, the one their socket unit listens on.
    del env["SESSIOND_SOCKET"]
    default = Path(env["XDG_RUNTIME_DIR"]) / "sessiond" / "sessiond.sock"
    try:
        done = subprocess.run(
            [SESSIONCTL, "ping"], env=env, capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert done.returncode == 3, done
        assert "systemd user service" in done.stderr
        assert "install-service --uninstall" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        # Nothing was spawned behind systemd's back.
        assert not default.exists()
        assert not (d.data_dir / "sessiond.lock").exists()
    finally:
        _kill_stray_daemon(d)


def test_install_service_writes_the_units_without_systemctl_and_fails_saying_so(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    empty = d.root / "empty-path"
    empty.mkdir()
    done = install_service(d, PATH=str(empty))
    assert done.returncode == 1, done.stderr
    assert "daemon-reload skipped: systemctl is not installed" in done.stderr
    assert "systemctl --user daemon-reload && " in done.stderr.splitlines()[-1]
    assert all((unit_dir(d) / name).exists() for name in UNITS)
