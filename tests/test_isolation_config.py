"""The config file is read only when it is the user's alone.

Its ``backend`` key says where the sessions are kept, and
``backend_password_file`` what is read as a password: another user who
could write it (a file left 0666, a directory open to others, a file of
theirs at the path) could have the next start send every session to a
server of theirs. Such a file is refused, at start, at a reload and by
``sessionctl config KEY VALUE``, with what to fix, as OpenSSH refuses a
``~/.ssh/config`` that others can write.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tests import isolation
from tests.conftest import Daemon, wait_until
from tests.isolation import OTHER_UID, needs_root

pytestmark = pytest.mark.local_only("the config file is read the same in front of every engine")

SETTINGS = '{"default_ttl": 600}\n'


def refused(d: Daemon, *fragments: str) -> None:
    isolation.refused(d, *fragments)
    assert not d.socket.exists()


def test_a_config_file_others_can_write_is_refused_at_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.config.write_text(SETTINGS)
    d.config.chmod(0o666)
    refused(d, f"config {d.config} is writable by group or others (mode 666",
            "could send your sessions to a server of theirs")
    d.config.chmod(0o644)
    d.start()
    with d.client() as c:
        assert c.create().ttl == 600


def test_a_config_file_of_another_uid_is_refused_at_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    needs_root()
    d = make_daemon(start=False)
    d.config.write_text(SETTINGS)
    os.chown(d.config, OTHER_UID, OTHER_UID)
    refused(d, f"config {d.config} is owned by uid {OTHER_UID}")


def test_a_config_file_in_a_directory_others_can_write_is_refused_at_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    shared = d.root / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = shared / "config.json"
    config.write_text(SETTINGS)
    d.extra_env["SESSIOND_CONFIG"] = str(config)
    refused(d, f"config {config} is where another user could replace it (unsafe permissions: "
               f"{shared}, above {config}, is writable by group or others",
            "so it is not read")


def test_a_config_file_opened_to_others_later_is_neither_reloaded_nor_written(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.config.write_text(SETTINGS)
    d.start()
    d.config.write_text('{"default_ttl": 5}\n')
    d.config.chmod(0o666)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "is writable by group or others" in d.log_text(), 15,
               "the reload refused")
    assert "SIGHUP: reloaded" not in d.log_text()
    r = d.ctl("config", "default_ttl", "900")
    assert r.returncode == 1, r
    assert "is writable by group or others" in r.stderr
    assert d.config.read_text() == '{"default_ttl": 5}\n'
    with d.client() as c:
        assert c.create().ttl == 600
