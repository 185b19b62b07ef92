"""Versions stay within 1..MAX_VERSION (2**63 - 1) wherever a record
enters: ``sessionctl import``, the legacy migration, journal replay and the
snapshot. At the top, a change a client asks for is refused (delete and
create again); an expiry keeps the version, so the daemon goes on serving.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sessiond import snapshot
from sessiond.limits import MAX_VERSION
from sessiond.model import US, Session, iso, now_us
from sessiond.records import put_line
from tests.conftest import Daemon, run_sessiond, stored, wait_until

pytestmark = pytest.mark.local_only(
    "versions out of range in journal lines and snapshots, and at the local store's limit"
)

TOO_BIG = [MAX_VERSION + 1, 2**64 - 1, 2**64]


def legacy_line(sid: str, version: int, *, ttl: int = 3600, created: int | None = None) -> str:
    created = now_us() if created is None else created
    return json.dumps({
        "type": "session", "id": sid, "user": "alice", "status": "active", "ttl": ttl,
        "meta": {"n": sid}, "created_at": iso(created), "last_access": iso(created),
        "expires_at": iso(created + ttl * US), "version": version,
    })


def import_json(d: Daemon, path: Path) -> tuple[int, dict[str, Any], str]:
    done = d.ctl("import", str(path), "--json")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def test_import_skips_versions_out_of_range_by_id_and_imports_the_rest(daemon: Daemon) -> None:
    path = daemon.root / "versions.jsonl"
    lines = [legacy_line("good-1", 1)]
    lines += [legacy_line(f"big-{i}", v) for i, v in enumerate(TOO_BIG)]
    lines += [legacy_line("zero", 0), legacy_line("top", MAX_VERSION), legacy_line("good-2", 7)]
    path.write_text("\n".join(lines) + "\n")

    status, report, stderr = import_json(daemon, path)
    # Skipped with their reasons, as the rules skip records: not unreadable.
    assert status == 0, stderr
    assert (report["imported"], report["skipped"], report["unreadable"]) == (3, 4, 0)
    reasons = sorted(report["reasons"])
    assert [r.split(":")[0] for r in reasons] == ["big-0", "big-1", "big-2", "zero"]
    assert all("is out of range" in r and str(MAX_VERSION) in r for r in reasons)
    assert {sid: s.version for sid, s in stored(daemon).items()} == {
        "good-1": 1, "top": MAX_VERSION, "good-2": 7
    }

    human = daemon.ctl("import", str(path))
    assert human.returncode == 0 and "Traceback" not in human.stderr
    assert "skipped big-2: version 18446744073709551616 is out of range" in human.stdout


def test_the_migration_skips_versions_out_of_range_and_imports_the_rest(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    legacy = d.root / "home" / ".session" / "data.jsonl"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("\n".join(
        [legacy_line("good", 1), legacy_line("big-1", 2**64 - 1), legacy_line("big-2", 2**64)]
    ) + "\n")
    d.start()
    assert list(stored(d)) == ["good"]
    log = d.log_text()
    assert "imported 1 sessions from legacy" in log and "2 skipped" in log
    assert f"big-1: version {2**64 - 1} is out of range" in log
    assert f"big-2: version {2**64} is out of range" in log
    d.restart()
    assert list(stored(d)) == ["good"]


@pytest.mark.parametrize("version", TOO_BIG)
def test_a_journal_line_with_a_version_out_of_range_is_named_as_damaged(
    make_daemon: Callable[..., Daemon], version: int
) -> None:
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    now = now_us()
    good = Session(id="good", user="u", status="active", ttl=60, meta={}, created_at=now,
                   last_access=now, expires_at=now + 60 * US)
    d.journal.write_bytes(put_line(good) + put_line(msgspec.structs.replace(
        good, id="bad", version=version
    )))

    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    log = d.log_text()
    assert "line 2 (byte offset" in log and f"version {version} is out of range" in log

    check = run_sessiond(d, "--check")
    assert check.returncode == 1
    assert "damaged: line 2" in check.stdout and "[id bad]" in check.stdout
    assert f"version {version} is out of range" in check.stdout


def test_an_expiry_at_the_highest_version_keeps_it_and_the_daemon_keeps_serving(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    path = d.root / "top.jsonl"
    path.write_text(legacy_line("top", MAX_VERSION, ttl=2) + "\n" + legacy_line("other", 3) + "\n")
    status, report, _ = import_json(d, path)
    assert status == 0 and report["imported"] == 2
    # The timer gets there (nobody reads it meanwhile).
    with d.client() as c:
        wait_until(lambda: c.stats().expiries_done == 1, 20, "the timer to expire it")
    for _ in range(2):
        listed = d.ctl("list", "--json")
        assert listed.returncode == 0, listed.stderr
        by_id = {s["id"]: s for s in json.loads(listed.stdout)}
        assert (by_id["top"]["status"], by_id["top"]["version"]) == ("expired", MAX_VERSION)
        exported = d.ctl("export", "--format", "jsonl")
        assert exported.returncode == 0, exported.stderr
        assert f'"version":{MAX_VERSION}' in exported.stdout
        d.restart()


def test_a_change_asked_for_at_the_highest_version_is_refused_and_changes_nothing(
    daemon: Daemon,
) -> None:
    path = daemon.root / "top.jsonl"
    path.write_text(legacy_line("top", MAX_VERSION) + "\n")
    assert import_json(daemon, path)[0] == 0
    before = stored(daemon)
    journal = daemon.journal_bytes()
    for args in (["set", "top", "k", "v"], ["unset", "top", "n"], ["refresh", "top"],
                 ["get", "top", "--touch"], ["expire", "top"]):
        done = daemon.ctl(*args)
        assert done.returncode == 1, (args, done.stderr)
        assert "the highest there is" in done.stderr
        assert "help" not in done.stderr
        assert "delete it and create it again" in done.stderr
    assert stored(daemon) == before and daemon.journal_bytes() == journal
    assert daemon.ctl("delete", "top").returncode == 0


def test_a_snapshot_with_a_version_out_of_range_is_ignored_for_the_journal(
    daemon: Daemon,
) -> None:
    with daemon.client() as c:
        for i in range(5):
            c.create(id=f"s{i}")
        c.set("s0", "k", "v")
        c.compact()
    before = stored(daemon)
    assert daemon.stop() == 0
    snap = snapshot.snapshot_path(daemon.journal)
    data = snap.read_bytes()
    # The header's own length (after the magic and the format): stripping
    # the zeros that pad it would cut a header that ends in a zero byte.
    _, _, head_length, _ = struct.unpack_from("<8sIII", data)
    header = msgspec.msgpack.decode(data[20 : 20 + head_length], type=snapshot.Header)
    body = data[snapshot.HEAD_BYTES :]
    length = int.from_bytes(body[:4], "little")
    chunk = msgspec.msgpack.decode(body[4 : 4 + length])
    chunk[6][0] = 2**64 - 1  # the first record's version
    raw = msgspec.msgpack.encode(chunk)
    body = len(raw).to_bytes(4, "little") + raw + body[4 + length :]
    header.body_crc, header.body_bytes = zlib.crc32(body), len(body)
    head_raw = msgspec.msgpack.encode(header)
    head = struct.pack("<8sIII", snapshot.MAGIC, snapshot.FORMAT, len(head_raw),
                       zlib.crc32(head_raw))
    snap.write_bytes((head + head_raw).ljust(snapshot.HEAD_BYTES, b"\0") + body)

    daemon.start()
    assert "chunk 1 is damaged" in daemon.log_text()
    assert "replaying the journal in full" in daemon.log_text()
    assert stored(daemon) == before

