"""``sessionctl reload`` (and ``Client.reload``): the daemon reads its config
file again, as on SIGHUP, and answers once the file is in force, saying what
changed; a file that is not valid changes nothing and is an error here. On
every engine: in shared mode the file sits under the namespace's settings,
and a reload (or a SIGHUP) reads it again too."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from sessiond.errors import Conflict
from tests.conftest import Daemon, wait_until

SHARED = pytest.mark.shared_only("the namespace's settings, above the config file")


def test_reload_puts_an_edited_file_in_force_and_says_what_changed(daemon: Daemon) -> None:
    daemon.config.write_text(json.dumps({"default_ttl": 120, "compact_interval": 60}))
    done = daemon.ctl("reload")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"reloaded {daemon.config}: default_ttl 3600 -> 120, "
                           f"compact_interval 3600 -> 60\n")
    assert daemon.ctl("config", "default_ttl").stdout == "120\n"
    # In force: the listing no longer warns of the edit, new sessions take it.
    assert daemon.ctl("config").stderr == ""
    with daemon.client() as c:
        assert c.create().ttl == 120
    again = daemon.ctl("reload", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout) == {"file": str(daemon.config), "changed": {}, "above": {}}
    assert "reload request: reloaded" in daemon.log_text()


def test_reload_of_a_file_that_is_not_valid_fails_and_keeps_the_settings(
    daemon: Daemon,
) -> None:
    daemon.config.write_text(json.dumps({"default_ttl": 120}))
    assert daemon.ctl("reload").returncode == 0
    for broken in ('{"default_ttl": 60', json.dumps({"default_ttl": -5})):
        daemon.config.write_text(broken)
        done = daemon.ctl("reload")
        assert (done.returncode, done.stdout) == (1, "")
        line, = done.stderr.splitlines()
        assert line.startswith("sessionctl: error: config not reloaded, the settings in "
                               f"force are kept: config {daemon.config}"), line
        assert daemon.ctl("config", "default_ttl").stdout == "120\n"
    with daemon.client() as c, pytest.raises(Conflict, match="config not reloaded"):
        c.reload()


def test_reload_names_the_settings_a_variable_still_sets(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(env={"SESSIOND_IDLE_TIMEOUT": "90"}, config={"default_ttl": 100})
    d.config.write_text(json.dumps({"default_ttl": 200, "idle_timeout": 30}))
    with d.client() as c:
        done = c.reload()
    assert done.file == str(d.config)
    assert done.changed == {"default_ttl": [100, 200]}
    assert done.above == {"idle_timeout": "env"}
    assert d.ctl("config", "idle_timeout").stdout == "90.0\n"
    shown = d.ctl("reload").stdout
    assert shown.endswith("no setting changed; still set by flag or environment: "
                          "idle_timeout (env)\n"), shown


def test_reload_without_a_daemon_is_exit_3_and_starts_none(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    done = d.ctl("reload", env={"SESSIONCTL_NO_AUTOSTART": ""})
    assert (done.returncode, done.stdout) == (3, "")
    assert "there is nothing to reload" in done.stderr
    assert not d.socket.exists()


@SHARED
def test_sighup_reads_the_config_file_again_in_shared_mode(daemon: Daemon) -> None:
    # The file sits under the namespace's settings; a key the namespace does
    # not set comes from it, and a reload must read it again.
    assert daemon.proc is not None
    daemon.config.write_text(json.dumps({"default_ttl": 150}))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: daemon.ctl("config", "default_ttl").stdout == "150\n", 10,
               "the file's default_ttl in force")
    assert f"SIGHUP: reloaded {daemon.config}: default_ttl 3600 -> 150" in daemon.log_text()
    assert daemon.ctl("config").stderr == ""


@SHARED
def test_reload_says_the_namespaces_settings_win_over_the_file(daemon: Daemon) -> None:
    assert daemon.ctl("config", "default_ttl", "200").returncode == 0
    daemon.config.write_text(json.dumps({"default_ttl": 300, "compact_interval": 60}))
    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"reloaded {daemon.config}: compact_interval 3600 -> 60; the namespace's settings "
        f"win over the file's: default_ttl (change them with sessionctl config)\n")
    assert daemon.ctl("config", "default_ttl").stdout == "200\n"
