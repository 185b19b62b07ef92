"""Sessions that an import brings in expired (the legacy migration,
``sessionctl import``) are kept for ``expired_retention`` from the import,
across restarts, compactions and snapshots, and then purged as usual; the
import says how many of them were already expired."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessiond.model import US, iso, now_us
from tests.conftest import BIN, Daemon, stored, wait_until

pytestmark = pytest.mark.local_only("retention of migrated sessions across restarts of the journal")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "script.sh"
DAY = 86400 * US


def legacy(sid: str, created: int, ttl: int, *, expired: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "session", "id": sid, "user": "alice",
        "status": "expired" if expired else "active", "ttl": ttl, "meta": {"k": sid},
        "created_at": iso(created), "last_access": iso(created),
        "expires_at": iso(created + ttl * US),
    }
    if expired:
        rec["expired_at"] = iso(created + ttl * US)
    return rec


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def month_old(now: int) -> list[dict[str, Any]]:
    """One session expired 30 days ago, one whose deadline passed 30 days
    ago without the legacy tool noticing, one still active."""
    return [
        legacy("old0expired0", now - 31 * DAY, 86400, expired=True),
        legacy("old0overdue0", now - 31 * DAY, 86400, expired=False),
        legacy("still0active", now, 3600, expired=False),
    ]


def shim_get(d: Daemon, sid: str) -> subprocess.CompletedProcess[str]:
    env = {**d.env, "PATH": f"{BIN}{os.pathsep}{d.env.get('PATH', '')}"}
    env.pop("SESSIOND_PYTHON", None)
    where = d.root / "elsewhere"
    where.mkdir(exist_ok=True)
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(SCRIPT), "get", sid], env=env, cwd=where,
        capture_output=True, text=True, timeout=30, check=False,
    )


def shows_expired(d: Daemon, sid: str) -> None:
    got = shim_get(d, sid)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["session"]["status"] == "expired"
    ctl = d.ctl("get", sid, "--json")
    assert ctl.returncode == 0, ctl.stderr
    assert json.loads(ctl.stdout)["status"] == "expired"


def test_a_migrated_session_expired_long_ago_is_kept_for_retention_from_the_import(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    write_jsonl(d.root / "home" / ".session" / "data.jsonl", month_old(now_us()))
    # A week's retention: the month-old expiries would go at once.
    d.config.write_text(json.dumps({"expired_retention": 7 * 86400}))
    d.start()
    assert ("imported 3 sessions from legacy" in d.log_text()
            and "2 of them already expired" in d.log_text())
    for _ in range(2):
        shows_expired(d, "old0expired0")
        shows_expired(d, "old0overdue0")
        assert len(stored(d)) == 3
        with d.client() as c:
            assert c.stats().purges_done == 0
            c.compact()  # the import moment goes through the snapshot too
        d.restart()

    # Once a retention has passed since the import, they go as usual.
    assert d.ctl("config", "expired_retention", "1").returncode == 0
    wait_until(lambda: set(stored(d)) == {"still0active"}, 20, "the purge")
    with d.client() as c:
        assert c.stats().purges_done == 2
    d.restart()
    assert set(stored(d)) == {"still0active"}


def test_sessionctl_import_reports_the_expired_ones_and_keeps_them(daemon: Daemon) -> None:
    path = daemon.root / "data.jsonl"
    write_jsonl(path, month_old(now_us()))
    done = daemon.ctl("import", str(path), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["imported"], report["already_expired"]) == (3, 2)
    human = daemon.ctl("import", str(path))  # all present: nothing counted
    assert human.returncode == 0 and "already expired" not in human.stdout
    with daemon.client() as c:
        c.delete("old0expired0")
    human = daemon.ctl("import", str(path))
    assert human.returncode == 0
    assert "imported 1, updated 0, skipped 2" in human.stdout
    assert "1 of them already expired: kept for expired_retention from now" in human.stdout
    daemon.restart()
    shows_expired(daemon, "old0expired0")
    shows_expired(daemon, "old0overdue0")


def test_a_purge_after_an_import_counts_from_the_import_not_from_the_expiry(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Long enough for the get below on a loaded machine, short enough to wait.
    d = make_daemon(config={"expired_retention": 8})
    now = now_us()
    path = d.root / "data.jsonl"
    write_jsonl(path, [legacy("gone0soon000", now - 31 * DAY, 60, expired=True)])
    done = d.ctl("import", str(path), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["already_expired"] == 1
    got = d.ctl("get", "gone0soon000")
    assert got.returncode == 0, "purged at once: retention counted from the old expiry"
    wait_until(lambda: not stored(d), 40, "the purge, a retention after the import")
    lines = [json.loads(x) for x in d.journal_bytes().decode().splitlines()]
    assert [x["type"] for x in lines] == ["session", "delete"]
    assert lines[0]["imported_at"] >= iso(now)
