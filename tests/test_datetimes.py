"""Timestamps in the Python API are aware ``datetime``s in UTC; the wire, the
daemon and the command line keep integer microseconds.

A ``Session``'s created_at, last_access, expires_at and expired_at, and an
``Event``'s at, are datetimes made from the microseconds the wire carries
(kept as ``created_at_us`` ...); ``cleanup(before=)`` takes an aware
datetime and refuses a naive one; the CLI and the shim print the same ISO
text with microseconds and ``Z`` as before; and a client Session encodes
to the very bytes of the daemon's own.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from importlib.metadata import version

import msgspec
import pytest

import sessionctl
import sessiond
from sessionctl import Client, Event, InvalidRequest, Session
from sessionctl.connection import decode
from sessiond import model
from sessiond.limits import TIME_MAX, TIME_MIN
from sessiond.model import US, iso, now_us
from sessiond.protocol import HEADER, Import, frame
from tests.conftest import Daemon, as_read, wait_until
from tests.test_protocol import SAMPLES, read_golden

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STAMPS = ("created_at", "last_access", "expires_at", "expired_at")


@pytest.fixture
def c(daemon: Daemon) -> Iterator[Client]:
    with daemon.client() as client:
        yield client


def moment(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def test_a_sessions_timestamps_are_aware_utc_datetimes_of_its_microseconds(c: Client) -> None:
    before = datetime.now(UTC)
    s = c.create(user="dt", ttl=90)
    after = datetime.now(UTC)
    for name in STAMPS[:3]:
        when = getattr(s, name)
        assert isinstance(when, datetime) and when.tzinfo is UTC, name
        assert when == moment(getattr(s, f"{name}_us")), name
    assert before - timedelta(seconds=1) <= s.created_at <= after + timedelta(seconds=1)
    assert s.expires_at - s.created_at == timedelta(seconds=90)
    assert isinstance(s.ttl, int) and s.ttl == 90  # ttl stays seconds
    assert s.expired_at is None and s.expired_at_us is None
    done = c.expire(s.id)
    assert done.expired_at == moment(done.expired_at_us or 0) and done.expired_at >= s.created_at


def test_the_ends_of_what_a_journal_holds_become_datetimes(c: Client) -> None:
    # Years 1 and 9999, the range sessiond stores (sessiond.limits).
    old = Session(id="year-one", user="u", status="expired", ttl=60, meta={},
                  created_at_us=TIME_MIN, last_access_us=TIME_MIN, expires_at_us=TIME_MIN,
                  expired_at_us=TIME_MIN)
    assert c.import_sessions([old]).imported == 1
    got = c.get("year-one")
    assert got.created_at == datetime(1, 1, 1, tzinfo=UTC)
    assert moment(TIME_MAX) == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_an_events_at_is_an_aware_datetime(daemon: Daemon, c: Client) -> None:
    events: list[Event] = []
    watch = c.watch(user="evented")

    def read() -> None:
        for event in watch:
            events.append(event)
            return

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: c.stats().watchers == 1, 10, "the watch to start")
    with daemon.client() as other:
        made = other.create(user="evented")
    reader.join(15)
    watch.close()
    assert [(e.kind, e.sid) for e in events] == [("created", made.id)]
    assert events[0].at.tzinfo is UTC and events[0].at == moment(events[0].at_us)
    assert made.created_at <= events[0].at


def test_cleanup_before_takes_an_aware_datetime_in_any_zone(c: Client) -> None:
    due = c.create(user="due", ttl=60)
    later = c.create(user="due", ttl=86400)
    # The same moment, one microsecond past the deadline, said in UTC+05:30.
    zone = timezone(timedelta(hours=5, minutes=30))
    when = (due.expires_at + timedelta(microseconds=1)).astimezone(zone)
    assert when.utcoffset() == timedelta(hours=5, minutes=30)
    r = c.cleanup(before=when, dry_run=True)
    assert due.id in r.removed_ids and later.id not in r.removed_ids
    at_deadline = c.cleanup(before=due.expires_at, dry_run=True)
    assert due.id not in at_deadline.removed_ids  # before, not at
    r = c.cleanup(before=when)
    assert due.id in r.removed_ids and [s.id for s in c.list(user="due")] == [later.id]


@pytest.mark.parametrize(
    ("before", "needle"),
    [
        (datetime(2030, 1, 1),
         "must be a timezone-aware datetime, not the naive '2030-01-01T00:00:00'"),
        (2_000_000_000_000_000, "before must be a datetime, not int"),
        ("2030-01-01", "before must be a datetime, not str"),
    ],
    ids=["naive", "microseconds", "text"],
)
def test_cleanup_refuses_a_naive_datetime_or_a_number_and_removes_nothing(
    c: Client, before: object, needle: str
) -> None:
    s = c.create(user="kept", ttl=60)
    with pytest.raises(InvalidRequest) as caught:
        c.cleanup(before=before)  # type: ignore[arg-type]
    assert needle in str(caught.value) and "timezone.utc" in str(caught.value)
    assert c.get(s.id).status == "active"


# -- the command line prints what it printed ----------------------------------


def test_the_cli_prints_iso_text_with_microseconds_and_z(daemon: Daemon, c: Client) -> None:
    s = c.create(user="printed", meta={"k": "v"})
    c.expire(s.id)
    s = c.get(s.id)
    texts = {name: iso(getattr(s, f"{name}_us")) for name in STAMPS}
    for name, text in texts.items():
        # 2026-11-24T09:13:42.067680Z: the datetime, to the microsecond.
        assert text == getattr(s, name).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    got = json.loads(daemon.ctl("get", s.id, "--json").stdout)
    assert {name: got[name] for name in STAMPS} == texts
    listed = json.loads(daemon.ctl("list", "--user", "printed", "--json").stdout)
    assert {name: listed[0][name] for name in STAMPS} == texts
    human = daemon.ctl("get", s.id).stdout
    assert f"created      {texts['created_at']} (" in human
    assert f"expires      {texts['expires_at']}\n" in human
    assert f"expired      {texts['expired_at']}\n" in human
    rows = list(csv.reader(io.StringIO(daemon.ctl("export", "--format", "csv").stdout)))
    row = next(r for r in rows if r[0] == s.id)
    assert row[4:] == [texts["created_at"], texts["last_access"], texts["expires_at"]]
    line = next(json.loads(t) for t in daemon.ctl("export", "--format", "jsonl").stdout
                .splitlines() if json.loads(t)["id"] == s.id)
    assert {name: line[name] for name in STAMPS} == texts


def test_cli_watch_prints_each_events_moment_as_iso_text(daemon: Daemon) -> None:
    from tests.test_watch import CtlWatch, watchers

    w = CtlWatch(daemon, "--json")
    try:
        wait_until(lambda: watchers(daemon) == 1, 15, "sessionctl watch to start")
        with daemon.client() as c:
            made = c.create(user="watched")
        lines = w.lines.until(lambda line: made.id in line, 15)
    finally:
        w.interrupt()
    event = json.loads(lines[-1])
    assert event["event"] == "created" and event["at"].endswith("Z") and len(event["at"]) == 27
    stamp = datetime.strptime(event["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert stamp >= made.created_at
    assert event["session"]["created_at"] == iso(made.created_at_us)


# -- the wire keeps integer microseconds ---------------------------------------


def test_a_client_session_encodes_to_the_daemons_bytes() -> None:
    request = SAMPLES["request.import"]
    theirs = [as_read(s) for s in request.sessions]
    ours = Import(id=request.id, sessions=theirs)  # type: ignore[arg-type]
    assert frame(ours).hex() == read_golden()["request.import"]
    assert msgspec.to_builtins(theirs[1])["expired_at"] == request.sessions[1].expired_at


@pytest.mark.parametrize(
    "name",
    ["response.session", "response.page", "response.event", "response.ack",
     "response.ack.expired"],
)
def test_the_client_reads_the_golden_replies_to_the_same_microseconds(name: str) -> None:
    raw = bytes.fromhex(read_golden()[name])
    reply = decode(raw[HEADER:], "the golden file")
    daemon_side = SAMPLES[name]
    assert msgspec.to_builtins(reply) == msgspec.to_builtins(daemon_side)


def test_sessions_listed_from_one_daemon_import_into_another(
    make_daemon: Callable[..., Daemon],
) -> None:
    source, target = make_daemon(), make_daemon()
    with source.client() as c:
        made = [c.create(user="moved", meta={"n": n}) for n in range(5)]
        c.expire(made[2].id)
        listed = c.list(user="moved")
    with target.client() as c:
        assert c.import_sessions(listed).imported == 5
        assert c.list(user="moved") == [c.get(s.id) for s in made]
        assert [s.created_at for s in c.list(user="moved")] == [s.created_at for s in made]


def test_the_daemons_own_sessions_keep_their_integers() -> None:
    now = now_us()
    held = model.Session(id="x", user="u", status="active", ttl=60, meta={}, created_at=now,
                         last_access=now, expires_at=now + 60 * US)
    assert isinstance(held.created_at, int) and as_read(held).created_at == moment(now)


def test_the_package_says_its_version() -> None:
    assert sessionctl.__version__ == sessiond.__version__ == version("sessiond")


def test_an_ack_gives_datetimes_as_a_session_does() -> None:
    from sessionctl import Ack
    from sessionctl.results import AckReply

    reply = decode(bytes.fromhex(read_golden()["response.ack.expired"])[HEADER:], "golden")
    assert isinstance(reply, AckReply) and isinstance(reply.ack, Ack)
    ack = reply.ack
    assert ack.expires_at == moment(ack.expires_at_us) and ack.expires_at.tzinfo is UTC
    assert ack.expired_at == moment(ack.expires_at_us + 1) and ack.status == "expired"
