"""Durations wherever ``sessionctl`` asks for seconds: ``--ttl 90m``,
``config default_ttl 2h``, ``cleanup --before -7d``; plain integers keep
meaning seconds, and anything else is refused (exit 2, nothing changed)
with the units listed. One reader (``sessiond.timeparse.parse_duration``)
serves them all; the daemon still sees whole seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sessiond.model import US, now_us
from sessiond.timeparse import parse_before, parse_duration
from tests.conftest import Daemon, running
from tests.rawwire import snapshot

DURATIONS = [
    ("90", 90), ("45s", 45), ("90m", 5400), ("1h30m", 5400), ("2h", 7200), ("7d", 604800),
    ("1w", 604800), ("1d12h", 129600), ("1w2d3h4m5s", 788645), ("0090m", 5400),
]
NOT_DURATIONS = [
    "", "m", "1x", "1.5h", "1h30", "30m1h", "1h1h", "1H", "-5m", "+5m", "5 m", " 5m",
    "1h 30m", "\u0661m", "1e3", "9999999999999999999s",
]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("durations")) as daemon:
        yield daemon


def js(d: Daemon, *args: str) -> dict[str, object]:
    r = d.ctl(*args, "--json")
    assert r.returncode == 0, r.stderr
    value = json.loads(r.stdout)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_parse_duration_reads_seconds_and_units_largest_first(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", NOT_DURATIONS)
def test_parse_duration_refuses_anything_else_listing_the_units(text: str) -> None:
    with pytest.raises(ValueError, match=r"units: w d h m s"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "seconds"), DURATIONS[:7])
def test_create_and_refresh_take_a_duration_as_ttl(d: Daemon, text: str, seconds: int) -> None:
    made = js(d, "create", "--ttl", text)
    assert made["ttl"] == seconds
    again = js(d, "refresh", str(made["id"]), "--ttl", text)
    assert again["ttl"] == seconds


@pytest.mark.parametrize(("key", "text", "seconds"), [
    ("default_ttl", "2h", 7200),
    ("expired_retention", "7d", 604800),
    ("max_lifetime", "1w", 604800),
    ("compact_interval", "30m", 1800),
    ("idle_timeout", "10m", 600),
    ("default_ttl", "3600", 3600),  # plain integers keep meaning seconds
])
def test_config_takes_a_duration_for_settings_in_seconds(
    d: Daemon, key: str, text: str, seconds: int
) -> None:
    try:
        assert js(d, "config", key, text) == {key: seconds}
        # Whole seconds reach the daemon, and its file.
        assert json.loads(d.config.read_text())[key] == seconds
        assert js(d, "config", key) == {key: seconds}
    finally:
        d.ctl("config", key, {"default_ttl": "3600", "expired_retention": "604800",
                               "max_lifetime": "0", "compact_interval": "3600",
                               "idle_timeout": "600"}[key])


def test_a_fraction_of_a_second_still_reaches_a_setting_that_takes_one(d: Daemon) -> None:
    try:
        assert js(d, "config", "idle_timeout", "0.5") == {"idle_timeout": 0.5}
    finally:
        d.ctl("config", "idle_timeout", "600")


BAD = [
    (("create", "--ttl", "90x"), "units: w d h m s"),
    (("create", "--ttl", "0s"), "ttl must be from 1s to 36500d"),
    (("create", "--ttl", "36501d"), "ttl must be from 1s to 36500d"),
    (("refresh", "any", "--ttl", "1.5h"), "units: w d h m s"),
    (("config", "default_ttl", "1.5h"), "invalid value '1.5h' for default_ttl"),
    (("config", "expired_retention", "soon"), "units: w d h m s"),
    (("config", "default_ttl", "0s"), "default_ttl"),
    (("cleanup", "--before", "-7x"), "after - comes a duration"),
    (("cleanup", "--before", "-99999999w"), "out of range"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_duration_is_exit_2_one_line_and_changes_nothing(
    d: Daemon, args: tuple[str, ...], needle: str
) -> None:
    before = snapshot(d.socket)
    config_before = d.config.read_bytes() if d.config.exists() else None
    r = d.ctl(*args)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("sessionctl: error: ") and needle in r.stderr, r.stderr
    assert snapshot(d.socket) == before
    assert (d.config.read_bytes() if d.config.exists() else None) == config_before


def test_before_takes_a_duration_before_or_after_now() -> None:
    now = now_us()
    assert parse_before("-7d", now) == now - 7 * 86400 * US
    assert parse_before("-1h30m", now) == now - 5400 * US
    assert parse_before("+2h", now) == now + 7200 * US
    assert parse_before("-0s", now) == now


@pytest.mark.parametrize("form", [("--before", "-7d"), ("--before=-7d",)])
def test_cleanup_before_seven_days_ago_removes_the_expired_and_keeps_the_active(
    d: Daemon, form: tuple[str, ...]
) -> None:
    with d.client() as c:
        for s in c.list():
            c.delete(s.id)
        gone = c.create(user="old")
        c.expire(gone.id)
        kept = c.create(user="new", ttl=60)
    r = d.ctl("cleanup", *form, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed_ids"] == [gone.id]
    with d.client() as c:
        assert [s.id for s in c.list()] == [kept.id]


def test_cleanup_before_a_time_to_come_also_removes_what_is_due_by_then(d: Daemon) -> None:
    with d.client() as c:
        for s in c.list():
            c.delete(s.id)
        soon = c.create(ttl=1800)
        later = c.create(ttl=7200)
    r = d.ctl("cleanup", "--before", "+1h", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed_ids"] == [soon.id]
    with d.client() as c:
        assert {s.id for s in c.list()} == {soon.id, later.id}


def test_the_settings_that_take_a_duration_are_settings_in_seconds() -> None:
    from sessiond.config import KEYS, SECONDS_KEYS, Settings

    assert set(SECONDS_KEYS) <= set(KEYS)
    for key in SECONDS_KEYS:
        assert isinstance(getattr(Settings(), key), (int, float)), key
