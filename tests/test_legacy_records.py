"""Legacy records the old tool wrote with odd ttls are kept, not skipped: a
float or a numeric string becomes whole seconds (a fraction rounds up), 0
or less means expired at its deadline (with ``default_ttl`` as its ttl).
And a journal that an editor saved with a byte-order mark still starts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sessionctl.results import Session
from sessiond import model
from sessiond.model import US, iso, now_us
from sessiond.records import LineError, decode_line, put_line
from tests.conftest import Daemon, run_sessiond, stored

pytestmark = pytest.mark.local_only("legacy records read by migration and replay")

BOM = b"\xef\xbb\xbf"


def legacy(sid: str, ttl: Any, created: int, *, expires: int | None = None) -> str:
    rec: dict[str, Any] = {
        "type": "session", "id": sid, "user": "u", "status": "active", "ttl": ttl,
        "meta": {}, "created_at": iso(created), "last_access": iso(created),
    }
    if expires is not None:
        rec["expires_at"] = iso(expires)
    return json.dumps(rec)


def odd_ttls(now: int) -> tuple[str, int]:
    """The file's text and the created_at of its records."""
    created = now - 60 * US
    lines = [
        legacy("zero", 0, created, expires=created),
        legacy("negative", -5, created),  # no expires_at: created + ttl
        legacy("float", 1.5, created),
        legacy("numeric", "120", created),
        legacy("fraction", " 7.2 ", created),
        legacy("plain", 300, created),
    ]
    return "\n".join(lines) + "\n", created


def assert_kept(found: dict[str, Session], created: int, default_ttl: int) -> None:
    assert set(found) == {"zero", "negative", "float", "numeric", "fraction", "plain"}
    zero, negative = found["zero"], found["negative"]
    assert (zero.status, zero.ttl, zero.expires_at_us, zero.expired_at_us) == (
        "expired", default_ttl, created, created
    )
    assert (negative.status, negative.ttl, negative.expired_at_us) == (
        "expired", default_ttl, created - 5 * US
    )
    assert {sid: found[sid].ttl for sid in ("float", "numeric", "fraction", "plain")} == {
        "float": 2, "numeric": 120, "fraction": 8, "plain": 300
    }
    assert found["numeric"].status == "active"
    assert found["numeric"].expires_at_us == created + 120 * US


def test_the_migration_keeps_records_with_odd_ttls(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    legacy_dir = d.root / "home" / ".session"
    legacy_dir.mkdir(parents=True)
    text, created = odd_ttls(now_us())
    (legacy_dir / "data.jsonl").write_bytes(BOM + text.encode())
    (legacy_dir / "config.json").write_text('{"default_ttl": 1234}')
    d.start()
    assert "imported 6 sessions from legacy" in d.log_text()
    assert_kept(stored(d), created, 1234)
    d.restart()
    assert_kept(stored(d), created, 1234)


def test_import_keeps_records_with_odd_ttls_and_names_an_unreadable_one(
    daemon: Daemon,
) -> None:
    text, created = odd_ttls(now_us())
    path = daemon.root / "data.jsonl"
    path.write_text(text)
    done = daemon.ctl("import", str(path), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # zero and negative, and float and fraction (their 2 and 8 s are past)
    assert (report["imported"], report["skipped"], report["already_expired"]) == (6, 0, 4)
    assert_kept(stored(daemon), created, 3600)

    bad = daemon.root / "bad.jsonl"
    bad.write_text("\n".join(
        legacy(f"b{i}", ttl, created) for i, ttl in enumerate(["soon", "nan", "1_0", "٣"])
    ) + "\n")
    done = daemon.ctl("import", str(bad), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["unreadable"] == 4
    assert all("is not a number of seconds" in p for p in report["problems"])


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [(1.5, 2), (0.001, 1), (2.0, 2), ("3600", 3600), ("+60", 60), ("1e2", 100), (-1.5, -1),
     ("0", 0)],
)
def test_a_ttl_becomes_whole_seconds_rounding_a_fraction_up(ttl: Any, seconds: int) -> None:
    got = decode_line(legacy("x", ttl, 0).encode())
    assert isinstance(got, model.Session) and got.ttl == seconds


@pytest.mark.parametrize("ttl", ["", "abc", "nan", "inf", "1e400", "١٢", "9" * 5000, True])
def test_a_ttl_that_is_no_number_is_an_unreadable_line(ttl: Any) -> None:
    with pytest.raises(LineError):
        decode_line(legacy("x", ttl, 0).encode())


def test_a_journal_that_begins_with_a_byte_order_mark_starts(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    now = now_us()
    first = model.Session(id="first", user="u", status="active", ttl=600, meta={"a": 1},
                          created_at=now, last_access=now, expires_at=now + 600 * US)
    d.journal.write_bytes(BOM + put_line(first) + legacy("second", 600, now).encode() + b"\n")
    check = run_sessiond(d, "--check")
    assert check.returncode == 0 and "2 readable lines" in check.stdout, check.stdout
    d.start()
    assert set(stored(d)) == {"first", "second"}
    with d.client() as c:
        c.set("first", "b", 2)
    d.kill()  # what was appended lands after the lines, the mark untouched
    d.start()
    found = stored(d)
    assert set(found) == {"first", "second"} and found["first"].meta == {"a": 1, "b": 2}
    assert d.journal_bytes().startswith(BOM)
    # A damaged line is named by its place in the file, the mark counted.
    d.stop()
    data = d.journal_bytes()
    d.journal.write_bytes(data.replace(b'"user":"u"', b'"user":"v"', 1))
    check = run_sessiond(d, "--check")
    assert check.returncode == 1
    assert f"damaged: line 1 (byte offset {len(BOM)})" in check.stdout
