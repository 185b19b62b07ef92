"""``sessionctl version`` and ``sessionctl --version``: this client's version
and protocol, and the version, protocol and pid of the daemon that answers,
if one does; none is started to ask it. ``version --client`` asks no
daemon."""

from __future__ import annotations

import json
from collections.abc import Callable

from sessiond import PROTOCOL_VERSION, __version__
from sessiond.failpoints import FAILPOINT_ENV, PROTOCOL_V1
from tests.conftest import Daemon

AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}


def test_version_names_the_client_and_the_daemon_that_answers(daemon: Daemon) -> None:
    assert daemon.proc is not None
    r = daemon.ctl("version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == [
        f"sessionctl {__version__} (protocol {PROTOCOL_VERSION})",
        f"sessiond {__version__} (protocol {PROTOCOL_VERSION}, pid {daemon.proc.pid}, "
        f"on {daemon.socket})",
    ]
    r = daemon.ctl("version", "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout) == {
        "sessionctl": __version__,
        "protocol": PROTOCOL_VERSION,
        "sessiond": {"version": __version__, "protocol": PROTOCOL_VERSION,
                     "pid": daemon.proc.pid, "socket": str(daemon.socket)},
    }


def test_version_tells_an_older_daemon_by_the_protocol_it_speaks(
    make_daemon: Callable[..., Daemon],
) -> None:
    # After an upgrade, the daemon still running may be the one before it:
    # its version number may read the same, its protocol does not.
    d = make_daemon(env={FAILPOINT_ENV: PROTOCOL_V1})
    assert d.proc is not None
    r = d.ctl("version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines()[1] == (
        f"sessiond {__version__} (protocol 1, pid {d.proc.pid}, on {d.socket})"
    )
    r = d.ctl("version", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sessiond"]["protocol"] == 1


def test_dash_dash_version_is_the_version_command(daemon: Daemon) -> None:
    for args in (("--version",), ("--json", "--version"), ("--version", "--json")):
        by_option = daemon.ctl(*args)
        by_command = daemon.ctl("version", *(a for a in args if a != "--version"))
        assert by_option.returncode == 0 and by_option.stderr == ""
        assert by_option.stdout == by_command.stdout
        assert str(daemon.socket) in by_option.stdout


def test_version_with_no_daemon_says_none_answers_and_starts_none(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    r = d.ctl("version", env=AUTOSTART_ON)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == [
        f"sessionctl {__version__} (protocol {PROTOCOL_VERSION})",
        f"sessiond: none answers on {d.socket}",
    ]
    r = d.ctl("--version", "--json", env=AUTOSTART_ON)
    assert r.returncode == 0
    assert json.loads(r.stdout)["sessiond"] is None
    assert not d.socket.exists() and not (d.data_dir / "sessiond.log").exists()


def test_version_client_asks_no_daemon(daemon: Daemon) -> None:
    r = daemon.ctl("version", "--client", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"sessionctl": __version__, "protocol": PROTOCOL_VERSION}
    assert daemon.ctl("version", "--client").stdout == (
        f"sessionctl {__version__} (protocol {PROTOCOL_VERSION})\n"
    )


def test_version_option_takes_no_command(daemon: Daemon) -> None:
    r = daemon.ctl("--version", "ping")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("sessionctl: error: ") and "--version" in r.stderr
