"""``sessionctl shutdown``: the daemon it talks to stops, as on SIGTERM,
after answering; through systemd when systemd's units run that daemon.

A stand-in ``systemctl`` (``tests.test_systemd.fake_systemctl``) plays the
user manager: it says which pid runs ``sessiond.service`` and stops it as
systemd would. No real user manager is reached.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest

from sessiond import __version__
from tests.conftest import SESSIONCTL, Daemon
from tests.rawwire import Raw, request
from tests.test_systemd import (
    fake_systemctl,
    install_service,
    isolated_env,
    systemctl_calls,
)

AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}
SHOW = ["show", "--property=MainPID", "--value", "sessiond.service"]
STOP = ["stop", "sessiond.socket", "sessiond.service"]


def test_shutdown_stops_the_daemon_after_answering_and_loses_nothing(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    made = [daemon.ctl("create", "--user", "kept").stdout.strip() for _ in range(3)]
    r = daemon.ctl("shutdown")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout == f"stopped sessiond {__version__} (pid {pid}) on {daemon.socket}\n"
    # It has exited by the time shutdown returns (only its parent, this
    # test, has yet to reap it), cleanly, and said why in its log.
    assert daemon.proc.wait(10) == 0
    assert "received a shutdown request" in daemon.log_text()
    assert not daemon.socket.exists()
    daemon.start()
    with daemon.client() as c:
        assert {s.id for s in c.list(user="kept")} == set(made)


def test_shutdown_json_says_which_daemon_stopped_and_how(daemon: Daemon) -> None:
    assert daemon.proc is not None
    r = daemon.ctl("shutdown", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["stopped"] == daemon.proc.pid and data["by"] == "request"
    assert data["socket"] == str(daemon.socket)
    assert daemon.proc.wait(10) == 0


def test_the_shutdown_request_is_answered_in_order_before_the_connection_closes(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None
    with Raw(daemon.socket) as raw:
        # Pipelined: what comes before it is answered, then it, then the
        # daemon stops reading and closes.
        raw.send(request(op="create", id=1, sid="before") + request(op="shutdown", id=2))
        first, second = raw.read_frame(), raw.read_frame()
        assert first is not None and first["r"] == "session" and first["id"] == 1
        assert second == {"r": "stopping", "id": 2, "pid": daemon.proc.pid}
        assert raw.at_eof()
    assert daemon.proc.wait(10) == 0
    daemon.start()
    with daemon.client() as c:
        assert c.get("before").id == "before"


def test_shutdown_with_no_daemon_is_exit_3_and_starts_none(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    r = d.ctl("shutdown", env=AUTOSTART_ON)
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr == (
        f"sessionctl: error: no sessiond answers on {d.socket} (No such file or directory): "
        f"there is nothing to stop\n"
    )
    assert not d.socket.exists() and not (d.data_dir / "sessiond.log").exists()


def _ctl_with_systemd(d: Daemon, *args: str, **state: object) -> tuple[int, str, str]:
    """``sessionctl ARGS`` with the units installed and the stand-in
    ``systemctl`` first on PATH, in the state given."""
    assert install_service(d, manager=True).returncode == 0
    env = isolated_env(d, PATH=fake_systemctl(d, **state) + os.pathsep + os.environ["PATH"])
    done = subprocess.run([SESSIONCTL, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    return done.returncode, done.stdout, done.stderr


def test_shutdown_goes_through_systemd_when_the_units_run_the_daemon(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    status, out, err = _ctl_with_systemd(daemon, "shutdown", main_pid=pid)
    assert status == 0, err
    assert out.endswith(
        f"(pid {pid}) on {daemon.socket} through systemd (sessiond.socket and "
        f"sessiond.service stopped)\n"
    )
    calls = systemctl_calls(daemon)
    # Both units: the socket alone would start the service again at the
    # next connection.
    assert calls[-2:] == [SHOW, STOP]
    assert daemon.proc.wait(10) == 0
    log = daemon.log_text()
    assert "received SIGTERM" in log and "received a shutdown request" not in log


def test_shutdown_asks_the_daemon_itself_when_systemd_runs_another(daemon: Daemon) -> None:
    assert daemon.proc is not None
    status, _, err = _ctl_with_systemd(daemon, "shutdown", main_pid=0)
    assert status == 0, err
    assert SHOW in systemctl_calls(daemon) and STOP not in systemctl_calls(daemon)
    assert daemon.proc.wait(10) == 0
    assert "received a shutdown request" in daemon.log_text()


def test_a_failed_stop_through_systemd_is_exit_1_and_the_daemon_runs_on(daemon: Daemon) -> None:
    assert daemon.proc is not None
    status, out, err = _ctl_with_systemd(daemon, "shutdown", main_pid=daemon.proc.pid,
                                         fail=["stop"])
    assert status == 1 and out == ""
    assert err.startswith("sessionctl: error: sessiond (pid ")
    assert "runs as the systemd user service sessiond.service" in err
    assert len(err.splitlines()) == 1
    # No quiet fallback to asking the daemon: systemd's socket would only
    # start it again.
    with daemon.client() as c:
        assert c.ping().pid == daemon.proc.pid


@pytest.mark.parametrize("where", ["before", "after"])
def test_shutdown_takes_the_socket_option(daemon: Daemon, where: str) -> None:
    assert daemon.proc is not None
    args = ["--socket", str(daemon.socket)]
    argv = [*args, "shutdown"] if where == "before" else ["shutdown", *args]
    r = daemon.ctl(*argv, env={"SESSIOND_SOCKET": str(daemon.root / "elsewhere.sock")})
    assert r.returncode == 0, r.stderr
    assert daemon.proc.wait(10) == 0
