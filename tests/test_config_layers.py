"""Layered settings: defaults < config.json < environment (SESSIOND_<KEY>)
< command-line flags (--fsync). ``config KEY VALUE`` writes that key alone,
never what a flag or a variable set for one run; flags and variables win at
start and at every SIGHUP reload, a key they set cannot be changed by
``config``, and ``stats``/``config`` say where each setting came from."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable

import pytest

from sessiond import config
from sessiond.model import US, iso, now_us
from tests.conftest import SESSIONCTL, Daemon, wait_until

pytestmark = pytest.mark.local_only(
    "config.json's layer under the environment and the flags (shared mode's namespace "
    "layer: tests/test_shared.py)"
)


def stats(d: Daemon) -> dict[str, object]:
    done = d.ctl("stats", "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(done.stdout)
    return data


def file_of(d: Daemon) -> dict[str, object]:
    data: dict[str, object] = json.loads(d.config.read_text())
    return data


def test_config_set_persists_that_key_alone_so_a_one_off_flag_stays_one_off(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "no")
    assert d.ctl("config", "default_ttl", "7200").returncode == 0
    assert file_of(d) == {"default_ttl": 7200}
    assert d.ctl("config", "max_lifetime", "86400").returncode == 0
    assert file_of(d) == {"default_ttl": 7200, "max_lifetime": 86400}
    # A plain start: no trace of the flag.
    d.extra_args = []
    d.restart()
    st = stats(d)
    assert st["fsync"] == "everysec"
    assert st["config_sources"] == {
        **{k: "default" for k in config.KEYS}, "default_ttl": "file", "max_lifetime": "file"
    }


def test_config_set_keeps_the_files_other_keys_as_they_are_there(daemon: Daemon) -> None:
    # Edited by hand (not yet reloaded): kept, and not put in force by a set.
    daemon.config.write_text(json.dumps({"compact_interval": 120, "frame_timeout": 5}))
    assert daemon.ctl("config", "default_ttl", "60").returncode == 0
    assert file_of(daemon) == {"compact_interval": 120, "frame_timeout": 5, "default_ttl": 60}
    assert daemon.ctl("config", "compact_interval").stdout == "3600\n"


def test_a_flag_wins_over_the_file_at_start_and_after_every_sighup(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.config.write_text(json.dumps({"fsync": "no", "default_ttl": 100}))
    d.start("--fsync", "always")
    assert (stats(d)["fsync"], d.ctl("config", "default_ttl").stdout) == ("always", "100\n")
    d.config.write_text(json.dumps({"fsync": "no", "default_ttl": 200}))
    assert d.proc is not None
    for _ in range(2):
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: d.ctl("config", "default_ttl").stdout == "200\n", what="the reload")
        st = stats(d)
        assert st["fsync"] == "always"
        assert st["config_sources"]["fsync"] == "flag"  # type: ignore[index]
        assert st["config_sources"]["default_ttl"] == "file"  # type: ignore[index]
    assert "still set by flag or environment: fsync (flag)" in d.log_text()


def test_environment_variables_win_over_the_file(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    d.config.write_text(json.dumps({"default_ttl": 100, "fsync": "no"}))
    d.extra_env.update(SESSIOND_DEFAULT_TTL="7200", SESSIOND_FSYNC="always",
                       SESSIOND_FRAME_TIMEOUT="2.5", SESSIOND_WATCH_QUEUE="",
                       SESSIOND_EXPIRED_RETENTION="1h30m")
    d.start()
    with d.client() as c:
        assert c.create().ttl == 7200
        assert c.config("frame_timeout") == {"frame_timeout": 2.5}
        # A duration, as `sessionctl config expired_retention 1h30m` takes it.
        assert c.config("expired_retention") == {"expired_retention": 5400}
    st = stats(d)
    assert st["fsync"] == "always"
    sources = st["config_sources"]
    assert isinstance(sources, dict)
    assert (sources["default_ttl"], sources["fsync"], sources["frame_timeout"]) == (
        "env", "env", "env"
    )
    assert sources["watch_queue"] == "default"  # empty means unset
    # A flag wins over the variable.
    d.stop()
    d.start("--fsync", "everysec")
    assert stats(d)["fsync"] == "everysec"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [("SESSIOND_DEFAULT_TTL", "soon", "invalid value 'soon' for default_ttl"),
     ("SESSIOND_FSYNC", "sometimes", "invalid value 'sometimes' for fsync"),
     ("SESSIOND_MAX_FRAME_BYTES", "10", "a whole number of bytes from 1024 to"),
     ("SESSIOND_DEFAULT_TTL", "1e3", ": invalid value 1e3 for default_ttl"),
     ("SESSIOND_IDLE_TIMEOUT", "1e309", ": invalid value 1e309 for idle_timeout")],
)
def test_a_bad_environment_variable_stops_the_start_naming_it(
    make_daemon: Callable[..., Daemon], name: str, value: str, needle: str
) -> None:
    d = make_daemon(start=False, env={name: value})
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    log = d.log_text()
    assert f"environment variable {name}={value!r}" in log and needle in log
    assert not d.socket.exists()


def test_config_of_a_key_a_flag_or_a_variable_sets_is_refused_naming_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "no", env={"SESSIOND_DEFAULT_TTL": "60"})
    assert d.ctl("config", "max_lifetime", "0").returncode == 0
    before = d.config.read_bytes()
    for key, value, by in (("fsync", "always", "the command-line flag --fsync"),
                           ("default_ttl", "120", "the environment variable "
                                                  "SESSIOND_DEFAULT_TTL")):
        done = d.ctl("config", key, value)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("sessionctl: error: ") and done.stderr.count("\n") == 1
        assert f"{key} is set by {by}, which wins over config.json for this daemon's life" in (
            done.stderr
        )
        assert d.config.read_bytes() == before
    assert (stats(d)["fsync"], d.ctl("config", "default_ttl").stdout) == ("no", "60\n")
    # A bad value is still a bad value (exit 2), pinned or not.
    assert d.ctl("config", "fsync", "sometimes").returncode == 2


def test_config_and_stats_say_where_each_setting_came_from(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False, env={"SESSIOND_IDLE_TIMEOUT": "30"})
    d.config.write_text(json.dumps({"default_ttl": 100}))
    d.start("--fsync", "no")
    rows = {line.split()[0]: line.split()[1:] for line in d.ctl("config").stdout.splitlines()}
    assert rows["KEY"] == ["VALUE", "SOURCE"]
    assert (rows["fsync"], rows["default_ttl"], rows["idle_timeout"], rows["max_lifetime"]) == (
        ["no", "flag"], ["100", "file"], ["30.0", "env"], ["0", "default"]
    )
    # Scripts' shapes are as they were: values only.
    everything = json.loads(d.ctl("config", "--json").stdout)
    assert everything["fsync"] == "no" and set(everything) == set(config.KEYS)
    assert d.ctl("config", "fsync").stdout == "no\n"
    human = d.ctl("stats").stdout
    assert any(line.split() == ["fsync", "no", "(flag)"] for line in human.splitlines())
    with d.client() as c:
        assert c.config_sources("default_ttl") == ({"default_ttl": 100}, {"default_ttl": "file"})


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, {"default_ttl": 1234}),
     ({"fsync": "always"}, {"fsync": "always", "default_ttl": 1234}),
     ({"default_ttl": 99}, {"default_ttl": 99})],
)
def test_the_legacy_default_ttl_is_migrated_alone_unless_the_file_sets_one(
    make_daemon: Callable[..., Daemon],
    before: dict[str, object] | None,
    after: dict[str, object],
) -> None:
    d = make_daemon(start=False)
    if before is not None:
        d.config.write_text(json.dumps(before))
    legacy_files(d, default_ttl=1234)
    d.start("--fsync", "no")
    assert file_of(d) == after
    assert d.ctl("config", "default_ttl").stdout == f"{after['default_ttl']}\n"


def test_the_legacy_default_ttl_is_migrated_under_a_variable_that_wins_for_its_run(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False, env={"SESSIOND_DEFAULT_TTL": "60"})
    legacy_files(d, default_ttl=1234)
    d.start()
    # The file takes it, for the runs without the variable; this run keeps
    # the variable's, and says so.
    assert file_of(d) == {"default_ttl": 1234}
    assert d.ctl("config", "default_ttl").stdout == "60\n"
    assert ("default_ttl 60 is in force instead, set by the environment variable "
            "SESSIOND_DEFAULT_TTL") in d.log_text()
    del d.extra_env["SESSIOND_DEFAULT_TTL"]
    d.restart()
    assert d.ctl("config", "default_ttl").stdout == "1234\n"


def legacy_files(d: Daemon, default_ttl: int) -> None:
    """The legacy tool's files in ``d``'s home: one session, and its
    config.json setting ``default_ttl``."""
    legacy = d.root / "home" / ".session"
    legacy.mkdir(parents=True)
    now = now_us()
    (legacy / "data.jsonl").write_text(json.dumps({
        "type": "session", "id": "abc", "user": "u", "status": "active", "ttl": 60,
        "meta": {}, "created_at": iso(now), "last_access": iso(now),
        "expires_at": iso(now + 60 * US),
    }) + "\n")
    (legacy / "config.json").write_text(json.dumps({"default_ttl": default_ttl}))


def test_config_set_refuses_to_write_back_a_file_broken_by_hand(daemon: Daemon) -> None:
    daemon.config.write_text('{"fsync": "sometimes"}')
    done = daemon.ctl("config", "default_ttl", "60")
    assert done.returncode == 1 and "fix the file first" in done.stderr
    assert daemon.config.read_text() == '{"fsync": "sometimes"}'
    assert daemon.ctl("config", "default_ttl").stdout == "3600\n"


def test_config_set_on_a_file_that_is_not_json_is_refused_not_a_usage_error(
    daemon: Daemon,
) -> None:
    # A hand edit left half-done: the command typed is right, the file is
    # not, so it is a refusal (exit 1) naming the file, not a usage error
    # pointing at the command's help.
    daemon.config.write_text('{"default_ttl": ')
    done = daemon.ctl("config", "default_ttl", "60")
    assert done.returncode == 1, done.stderr
    line, = done.stderr.splitlines()
    assert line.startswith(f"sessionctl: error: config {daemon.config} is not valid JSON")
    assert "fix the file first (the setting is unchanged)" in line
    assert "sessionctl help" not in line
    assert daemon.config.read_text() == '{"default_ttl": '
    assert daemon.ctl("config", "default_ttl").stdout == "3600\n"


def test_a_reload_logs_what_changed_and_a_bad_file_keeps_the_settings_in_force(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None

    def reloaded(count: int, needle: str) -> None:
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(lambda: daemon.log_text().count("SIGHUP:") == count, what="the reload")
        last = [line for line in daemon.log_text().splitlines() if "SIGHUP:" in line][-1]
        assert needle in last, last

    daemon.config.write_text(json.dumps({"default_ttl": 120, "fsync": "always"}))
    reloaded(1, f"SIGHUP: reloaded {daemon.config}: default_ttl 3600 -> 120, "
                "fsync 'everysec' -> 'always'")
    daemon.config.write_text('{"default_ttl": 60,')  # an edit left half-done
    reloaded(2, "ERROR SIGHUP: config not reloaded, the settings in force are kept: "
                f"config {daemon.config} is not valid JSON")
    assert daemon.ctl("config", "default_ttl").stdout == "120\n"
    daemon.config.write_text(json.dumps({"fsync": "always", "default_ttl": 120}))
    reloaded(3, f"SIGHUP: reloaded {daemon.config}: no setting changed")
    assert "Traceback" not in daemon.log_text()


def test_config_listing_warns_of_a_file_edited_since_it_was_read_until_reloaded(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    # What `config KEY VALUE` writes is what is in force: no warning (a
    # float, and a duration written as seconds, read back equal).
    for key, value in (("frame_timeout", "11"), ("default_ttl", "2h")):
        assert daemon.ctl("config", key, value).returncode == 0
    listed = daemon.ctl("config")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    edited = {**file_of(daemon), "default_ttl": 60}
    daemon.config.write_text(json.dumps(edited))
    listed = daemon.ctl("config")
    assert listed.returncode == 0
    assert "default_ttl             7200      file" in listed.stdout  # what is in force
    assert listed.stderr == (
        f"sessionctl: warning: config {daemon.config} has changed since the daemon read it; "
        f"reload it (sessionctl reload, or kill -HUP {pid}) to put the file in force\n"
    )
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: daemon.ctl("config").stderr == "", what="the reload")
    assert daemon.ctl("config", "default_ttl").stdout == "60\n"
    daemon.config.write_text('{"default_ttl": 60')  # an edit left half-done
    listed = daemon.ctl("config")
    assert listed.returncode == 0 and "default_ttl             60 " in listed.stdout
    assert listed.stderr.startswith(
        f"sessionctl: warning: config {daemon.config} is not valid JSON: ")
    assert listed.stderr.endswith("; the settings read before stay in force\n")
    # A program reading --json gets the values alone, and no warning.
    as_json = daemon.ctl("config", "--json")
    assert json.loads(as_json.stdout)["default_ttl"] == 60 and as_json.stderr == ""


def test_config_writes_racing_from_many_processes_lose_no_setting(daemon: Daemon) -> None:
    wanted = {"default_ttl": 100, "expired_retention": 200, "compact_interval": 300,
              "idle_timeout": 601.0, "max_connections": 999, "watch_queue": 9999,
              "compact_growth_percent": 150, "send_timeout": 12.0}
    procs = [subprocess.Popen([SESSIONCTL, "config", key, str(value)], env=daemon.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for key, value in wanted.items()]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert file_of(daemon) == wanted  # whole JSON, every key: none lost, none torn
    listed = daemon.ctl("config", "--json")
    assert {k: json.loads(listed.stdout)[k] for k in wanted} == wanted
