"""``cleanup --before``: what a typed moment means, through the real
``sessionctl`` and the real shim.

``sessionctl`` takes ISO 8601 (extended or basic, date or date-time, ``Z`` or
an offset, no zone meaning UTC), ``@SECONDS`` and ``now``, and refuses
anything else (exit 2) listing those forms: ``20261201`` once meant a moment
in 1970. The shim keeps the legacy reading (docs/legacy.md): the same, and
bare Unix seconds unless the digits are eight, a basic date.

Every case runs a real cleanup on sessions whose deadlines bracket the
moment meant, and checks exactly which went.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from sessiond.model import US, Session, now_us
from tests.conftest import Daemon
from tests.test_shim import legacy_error, pretty, shim


def at(text: str) -> int:
    """Microseconds of an extended ISO 8601 UTC time, read by the standard
    library (not by the parser under test)."""
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * US + moment.microsecond


# Active sessions with deadlines around 2099-12-01T09:30:00Z, and one that
# has expired already (every cleanup removes it).
DEADLINES = {
    "d1-nov30": at("2099-11-30T23:59:59"),
    "d2-midnight": at("2099-12-01T00:00:00"),
    "d3-just-before": at("2099-12-01T09:29:59.500000"),
    "d4-exactly": at("2099-12-01T09:30:00"),
    "d5-later": at("2099-12-01T10:00:00"),
    "d6-next-year": at("2100-01-01T00:00:00"),
}
EXPIRED = "d0-expired"
TARGET_SECONDS = at("2099-12-01T09:30:00") // US

MIDNIGHT = {EXPIRED, "d1-nov30"}
HALF_PAST = {EXPIRED, "d1-nov30", "d2-midnight", "d3-just-before"}
JUST_AFTER = HALF_PAST | {"d4-exactly"}
NOW = {EXPIRED}

# Forms both tools take, and which sessions a cleanup before them removes.
SHARED_FORMS = [
    ("2099-12-01", MIDNIGHT),
    ("20991201", MIDNIGHT),  # basic date: a date, never seconds
    ("2099-12-01T09:30:00Z", HALF_PAST),
    ("2099-12-01t09:30:00z", HALF_PAST),
    ("2099-12-01 09:30:00Z", HALF_PAST),
    ("2099-12-01T09:30Z", HALF_PAST),
    ("2099-12-01T09:30", HALF_PAST),  # no zone: UTC
    ("2099-12-01T09", {EXPIRED, "d1-nov30", "d2-midnight"}),
    ("20991201T093000Z", HALF_PAST),
    ("20991201T0930", HALF_PAST),
    ("2099-12-01T10:30:00+01:00", HALF_PAST),
    ("20991201T040000-0530", HALF_PAST),
    ("2099-12-01T11:30+02", HALF_PAST),
    ("2099-12-01T09:30:00.000001Z", JUST_AFTER),
    ("2099-12-01T09:30:00,5Z", JUST_AFTER),
    ("2099-12-01T09:30:00.123456789Z", JUST_AFTER),
    ("2100-01-01T00:00:00.000001Z", set(DEADLINES) | {EXPIRED}),
    (f"@{TARGET_SECONDS}", HALF_PAST),
    ("now", NOW),
]
CLI_REFUSED = [
    "2026",  # once 1970-01-01T00:33:46
    "1700000000",  # bare seconds: @1700000000 says it
    "1_700_000_000",
    "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",  # Arabic-Indic digits
    "@\u0661\u0667\u0660\u0660",
    "@-5",
    "@1.5",
    "@",
    "",
    " 2099-12-01",
    "yesterday",
    "NOW",
    "2099-13-01",
    "2099-02-30",
    "2099-12-01T24:00",
    "2099-12-01T09:30.5",
    "2099-12-01Z",
    "2099-12-01T09:30:00+25:00",
    "2099-W48-2",
    "1e400",
    "10000-01-01",
]
OUT_OF_RANGE = ["1969-12-31T23:59:59Z", "9999-12-31T23:30-01:00", "@253402300800"]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("time-input"))
    daemon.start()
    yield daemon
    if daemon.stop() != 0:
        daemon.kill()


def fresh(d: Daemon) -> None:
    """Only the bracketing sessions, whatever the last case left."""
    now = now_us()
    with d.client() as c:
        for s in c.list():
            c.delete(s.id)
        sessions = [
            Session(id=sid, user="when", status="active", ttl=3600, meta={},
                    created_at=now, last_access=now, expires_at=deadline)
            for sid, deadline in DEADLINES.items()
        ]
        sessions.append(Session(
            id=EXPIRED, user="when", status="expired", ttl=60, meta={},
            created_at=now - 120 * US, last_access=now - 120 * US, expires_at=now - 60 * US,
        ))
        result = c.import_sessions(sessions)
        assert result.imported == len(sessions), result.reasons


def held(d: Daemon) -> set[str]:
    with d.client() as c:
        return {s.id for s in c.list()}


ALL = set(DEADLINES) | {EXPIRED}


@pytest.mark.parametrize(("text", "removed"), SHARED_FORMS, ids=[t for t, _ in SHARED_FORMS])
def test_sessionctl_cleanup_before_removes_exactly_what_is_due_by_then(
    d: Daemon, text: str, removed: set[str]
) -> None:
    fresh(d)
    r = d.ctl("cleanup", "--before", text, "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["removed_ids"]) == removed
    assert held(d) == ALL - removed


def _refused_by_sessionctl(d: Daemon, text: str) -> str:
    fresh(d)
    r = d.ctl("cleanup", "--before", text)
    assert r.returncode == 2, (text, r.stdout, r.stderr)
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("sessionctl: error: --before: ")
    assert held(d) == ALL
    return r.stderr


@pytest.mark.parametrize("text", CLI_REFUSED)
def test_sessionctl_refuses_any_other_time_listing_the_forms_and_removes_nothing(
    d: Daemon, text: str
) -> None:
    message = _refused_by_sessionctl(d, text)
    for form in ("ISO 8601", "2026-12-01T09:30:00Z", "no zone means UTC", "@SECONDS", "now"):
        assert form in message, message


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_sessionctl_refuses_a_time_outside_1970_to_9999(d: Daemon, text: str) -> None:
    message = _refused_by_sessionctl(d, text)
    assert "out of range" in message, message


def test_sessionctl_help_cleanup_lists_the_forms(d: Daemon) -> None:
    r = d.ctl("help", "cleanup")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for form in ("ISO 8601", "no zone means UTC", "@SECONDS", "now"):
        assert form in text, r.stdout


# -- the shim: the legacy reading ----------------------------------------------

LEGACY_FORMS = SHARED_FORMS + [
    (str(TARGET_SECONDS), HALF_PAST),  # bare seconds, as the shim always took them
    ("0", NOW),
    ("2026", NOW),  # not a date (a year alone is not one): Unix seconds, in 1970
]
LEGACY_REFUSED = [
    "20991399",  # eight digits are a basic date, and this is no date
    "1_700_000_000",
    "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",
    "-5",
    "yesterday",
    "2099-12-01T24:00",
    "",
]


@pytest.mark.parametrize(("text", "removed"), LEGACY_FORMS, ids=[t for t, _ in LEGACY_FORMS])
def test_the_shims_cleanup_before_keeps_the_legacy_reading(
    d: Daemon, text: str, removed: set[str]
) -> None:
    fresh(d)
    data = pretty(shim(d, "cleanup", "--before", text))
    assert set(data["removed_ids"]) == removed
    assert held(d) == ALL - removed


@pytest.mark.parametrize("text", LEGACY_REFUSED)
def test_the_shim_refuses_an_unreadable_time_in_the_legacy_shape(
    d: Daemon, text: str
) -> None:
    fresh(d)
    message = legacy_error(shim(d, "cleanup", "--before", text))
    assert message.startswith("--before: ")
    for form in ("ISO 8601", "no zone means UTC", "Unix seconds", "now"):
        assert form in message, message
    assert held(d) == ALL
