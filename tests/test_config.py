"""Settings: defaults, validation with messages that name the key, atomic
persistence; and ``sessionctl config`` applying a change live, persisting it
and refusing bad keys and values (exit 2, nothing changed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessiond import config
from sessiond.errors import ConfigError, Conflict, InvalidRequest
from tests.conftest import Daemon, Engine, running
from tests.rawwire import Raw

# -- the module, without a daemon -----------------------------------------------


def test_defaults() -> None:
    s = config.Settings()
    assert (s.default_ttl, s.fsync, s.max_lifetime) == (3600, "everysec", 0)
    assert set(config.KEYS) == set(config.as_dict(s))


def test_config_error_is_an_invalid_request_so_it_crosses_the_wire_as_invalid() -> None:
    assert issubclass(ConfigError, InvalidRequest) and ConfigError.code == "invalid"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("default_ttl", "soon", "default_ttl takes a whole number of seconds from 1 to "),
        ("default_ttl", 0, "a whole number of seconds from 1 to 3153600000"),
        ("default_ttl", True, "a whole number of seconds from 1"),
        ("default_ttl", 1.5, "a whole number of seconds from 1"),
        ("fsync", "sometimes", "fsync takes 'always', 'everysec' or 'no'"),
        ("max_frame_bytes", 10, "a whole number of bytes from 1024 to 268435456"),
        ("frame_timeout", -1, "a number of seconds above 0, up to 3600"),
        ("send_timeout", 0, "a number of seconds above 0, up to 3600"),
        ("max_lifetime", -1, "a whole number of seconds from 0 to 3153600000 (0: none)"),
        ("watch_queue_bytes", 1, "a whole number of bytes from 65536 on"),
        ("compact_growth_percent", "x", "a whole number of percent from 1 on"),
    ],
)
def test_a_wrong_value_names_the_key_and_the_value(key: str, value: Any, needle: str) -> None:
    before = config.Settings()
    with pytest.raises(ConfigError) as caught:
        config.with_value(before, key, value)
    message = str(caught.value)
    shown = repr(value) if isinstance(value, str) else json.dumps(value)
    assert message.startswith(f"invalid value {shown} for {key}: ")
    assert needle in message
    assert "`" not in message and "Expected" not in message  # msgspec's words
    assert before == config.Settings()


def test_an_unknown_key_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'ttl'; known keys: default_ttl"):
        config.with_value(config.Settings(), "ttl", 5)
    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        config.validate({"colour": "blue"})


def test_a_good_value_gives_new_settings() -> None:
    assert config.with_value(config.Settings(), "default_ttl", 60).default_ttl == 60
    assert config.with_value(config.Settings(), "frame_timeout", 5).frame_timeout == 5.0
    assert config.with_value(config.Settings(), "fsync", "always").fsync == "always"


@pytest.mark.parametrize(
    ("text", "value"),
    [("3600", 3600), ("1.5", 1.5), ("true", True), ("null", None), ('"x"', "x"),
     ("always", "always"), ("", ""), ("[1, 2]", [1, 2])],
)
def test_command_line_values_are_json_when_they_parse_else_strings(text: str, value: Any) -> None:
    assert config.parse_value(text) == value


def test_load_of_a_missing_file_is_the_defaults(tmp_path: Path) -> None:
    assert config.load(tmp_path / "absent.json") == config.Settings()


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"{ nope", "not valid JSON"), (b"[1, 2]", "must hold a JSON object"),
     (b'{"default_ttl": "x"}', "default_ttl takes a whole number of seconds from 1"),
     (b'{"fsync": "always", "max_frame_bytes": 1}',
      "invalid value 1 for max_frame_bytes: max_frame_bytes takes a whole number of bytes"),
     (b'{"colour": 1}', "unknown config key")],
)
def test_load_of_a_bad_file_names_the_file(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in str(caught.value) and needle in str(caught.value)
    assert "`" not in str(caught.value)  # msgspec's notation, put in words


def test_save_is_atomic_private_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.json"
    settings = config.with_value(config.Settings(), "default_ttl", 120)
    config.save(path, settings)
    assert config.load(path) == settings
    assert os.listdir(path.parent) == ["config.json"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    config.save(path, config.Settings())
    assert json.loads(path.read_text())["default_ttl"] == 3600


def test_layers_win_in_order_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"default_ttl": 100, "fsync": "no", "max_lifetime": 50}')
    env = {"SESSIOND_FSYNC": "everysec", "SESSIOND_MAX_LIFETIME": "70", "OTHER": "x"}
    layers = config.layered(path, env, {"fsync": "always"})
    s = layers.settings
    assert (s.default_ttl, s.max_lifetime, s.fsync, s.watch_queue) == (100, 70, "always", 10000)
    assert layers.source("default_ttl") == "file" and layers.source("max_lifetime") == "env"
    assert layers.source("fsync") == "flag" and layers.source("watch_queue") == "default"
    # A reload reads the file again; the environment and the flags still win.
    path.write_text('{"default_ttl": 200, "fsync": "no"}')
    again = config.reload(layers)
    assert (again.settings.default_ttl, again.settings.fsync) == (200, "always")
    assert again.settings.max_lifetime == 70 and again.source("default_ttl") == "file"


def test_setting_a_key_changes_that_key_alone_and_refuses_a_pinned_one(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    layers = config.layered(path, {"SESSIOND_DEFAULT_TTL": "60"}, {"fsync": "no"})
    new = layers.with_key("max_lifetime", 30)
    assert new.file == {"max_lifetime": 30} and new.settings.fsync == "no"
    assert config.persist_key(path, "max_lifetime", 30) is None
    assert json.loads(path.read_text()) == {"max_lifetime": 30}
    for key in ("fsync", "default_ttl"):
        with pytest.raises(Conflict, match=f"{key} is set by the"):
            layers.with_key(key, 120 if key == "default_ttl" else "always")
    before = config.persist_key(path, "default_ttl", 5)
    assert before == {"max_lifetime": 30}
    config.restore(path, before)
    assert json.loads(path.read_text()) == {"max_lifetime": 30}
    config.restore(path, None)
    assert not path.exists()


@pytest.mark.parametrize(
    ("key", "value", "typed", "message", "quoted"),
    [("default_ttl", 1000.0, "1e3", "invalid value 1000.0 for default_ttl: it takes",
      "invalid value 1e3 for default_ttl: it takes"),
     ("max_lifetime", 7200, "2h", "invalid value 7200 for max_lifetime: it takes",
      "invalid value '2h' for max_lifetime: it takes"),
     # Anything else is left as the daemon said it: a string was sent as typed.
     ("default_ttl", "1e3x", "1e3x", "invalid value '1e3x' for default_ttl: it takes",
      "invalid value '1e3x' for default_ttl: it takes"),
     ("default_ttl", 1000.0, "1e3", "default_ttl is set by the environment variable",
      "default_ttl is set by the environment variable")],
)
def test_a_refusal_quotes_the_value_as_typed(
    key: str, value: Any, typed: str, message: str, quoted: str
) -> None:
    assert config.as_typed(message, key, value, typed) == quoted


def test_an_environment_variable_is_validated_and_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment variable SESSIOND_FSYNC='x': invalid"):
        config.layered(tmp_path / "c.json", {"SESSIOND_FSYNC": "x"}, {})
    assert config.read_env({"SESSIOND_DEFAULT_TTL": "", "SESSIOND_SOCKET": "/s"}) == {}


def test_an_environment_variable_takes_a_duration_where_config_does() -> None:
    # Every setting in seconds, as `sessionctl config KEY 1m` reads it.
    env = {config.env_name(key): "1m" for key in config.SECONDS_KEYS}
    assert config.read_env(env) == dict.fromkeys(config.SECONDS_KEYS, 60)
    assert config.read_env({"SESSIOND_DEFAULT_TTL": "1h30m"}) == {"default_ttl": 5400}
    # Any other setting takes no duration, and a refusal quotes the value typed.
    with pytest.raises(ConfigError, match=r"SESSIOND_MAX_FRAME_BYTES='2h': invalid value '2h'"):
        config.read_env({"SESSIOND_MAX_FRAME_BYTES": "2h"})
    with pytest.raises(ConfigError, match=r"SESSIOND_DEFAULT_TTL='0s': invalid value '0s' for"):
        config.read_env({"SESSIOND_DEFAULT_TTL": "0s"})
    with pytest.raises(ConfigError, match=r"'1e309': invalid value 1e309 for idle_timeout: "):
        config.read_env({"SESSIOND_IDLE_TIMEOUT": "1e309"})
    with pytest.raises(ConfigError, match="'2x': invalid value '2x' for send_timeout: not a "
                                          "number of seconds or a duration; use whole seconds"):
        config.read_env({"SESSIOND_SEND_TIMEOUT": "2x"})


# -- through the daemon ------------------------------------------------------------


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("config"), engine) as daemon:
        yield daemon


def test_config_set_applies_live_and_persists_across_a_restart(d: Daemon) -> None:
    r = d.ctl("config", "default_ttl", "120", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"default_ttl": 120}
    with d.client() as c:
        assert c.create().ttl == 120  # live: no restart needed
    if not d.engine.shared:  # there, the namespace's settings are in the engine
        assert json.loads(d.config.read_text())["default_ttl"] == 120
    d.restart()
    r = d.ctl("config", "default_ttl")
    assert (r.returncode, r.stdout) == (0, "120\n")
    assert d.ctl("config", "default_ttl", "3600").returncode == 0


def test_config_set_takes_strings_and_floats(d: Daemon) -> None:
    assert d.ctl("config", "frame_timeout", "2.5").returncode == 0
    with d.client() as c:
        assert c.config("frame_timeout") == {"frame_timeout": 2.5}
        c.set_config("frame_timeout", 10.0)
    if d.engine.shared:
        # The one string-valued setting is the journal's: the engine's own there.
        refused = d.ctl("config", "fsync", "always")
        assert refused.returncode == 1 and "appendfsync" in refused.stderr
        return
    assert d.ctl("config", "fsync", "always").returncode == 0
    with d.client() as c:
        assert c.config("fsync") == {"fsync": "always"}
        c.set_config("fsync", "everysec")


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("default_ttl", "soon"), "invalid value 'soon' for default_ttl"),
     (("fsync", "sometimes"), "invalid value 'sometimes' for fsync"),
     (("colour", "blue"), "unknown config key 'colour'"),
     (("colour",), "unknown config key 'colour'"),
     (("max_connections", "true"), "invalid value true for max_connections"),
     (("fsync", "null"), "invalid value null for fsync"),
     (("max_frame_bytes", "99999999999999999999"),
      "invalid value '99999999999999999999' for max_frame_bytes: max_frame_bytes takes a "
      "whole number of bytes from 1024 to "),
     # Quoted as typed, not as read (1000.0, 10000.0, null, 1.5, 3153686400).
     (("default_ttl", "1e3"), "invalid value 1e3 for default_ttl: default_ttl takes a whole"),
     (("frame_timeout", "1e4"), "invalid value 1e4 for frame_timeout: frame_timeout takes a"),
     (("idle_timeout", "NaN"), "invalid value NaN for idle_timeout: idle_timeout takes a"),
     (("idle_timeout", "1e309"), "invalid value 1e309 for idle_timeout: idle_timeout takes a"),
     (("watch_queue", "1.50"), "invalid value 1.50 for watch_queue: watch_queue takes a"),
     (("max_lifetime", "36501d"), "invalid value '36501d' for max_lifetime: max_lifetime takes")],
)
def test_a_bad_key_or_value_is_exit_2_with_the_daemons_message(
    d: Daemon, args: tuple[str, ...], needle: str
) -> None:
    before = d.config.read_bytes() if d.config.exists() else None
    r = d.ctl("config", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("sessionctl: error: ") and len(r.stderr.splitlines()) == 1
    assert needle in r.stderr
    assert (d.config.read_bytes() if d.config.exists() else None) == before


@pytest.mark.parametrize(
    "fields",
    [{"op": "config_set", "id": 9, "key": "default_ttl", "value": "soon"},
     {"op": "config_set", "id": 9, "key": "colour", "value": 1},
     {"op": "config_get", "id": 9, "key": "colour"}],
)
def test_config_errors_cross_the_wire_with_code_invalid(d: Daemon, fields: dict[str, Any]) -> None:
    with Raw(d.socket) as raw:
        reply = raw.call(**fields)
    assert (reply["r"], reply["id"], reply["code"]) == ("error", 9, "invalid")


@pytest.mark.local_only("config.json holds the keys set (in shared mode the engine does)")
def test_the_settings_file_holds_the_keys_set_and_they_agree_with_the_daemon(d: Daemon) -> None:
    assert d.ctl("config", "max_lifetime", "0").returncode == 0
    on_disk = json.loads(d.config.read_text())
    with d.client() as c:
        in_force = c.config()
    # Only what was set: the defaults stay defaults, free to change.
    assert "max_lifetime" in on_disk and set(on_disk) < set(in_force)
    assert {k: in_force[k] for k in on_disk} == on_disk
