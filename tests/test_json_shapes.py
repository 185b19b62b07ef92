"""One JSON shape per thing. A session is the same object, the same fields
in the same order, in ``get``, ``list``, ``create``, ``refresh`` (and every
command that shows one), in ``watch`` events and in the Client's
``Session``; ``stats --json`` says yes or no with booleans where the table
does; ``export`` writes the legacy record shape, as its help says, and
refuses ``--json`` with ``--format csv`` on stdout.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from sessiond.errors import ReadOnly
from sessiond.model import Session
from tests.conftest import SESSIONCTL, Daemon, wait_until

SESSION_FIELDS = list(Session.__struct_fields__)


def js(d: Daemon, *args: str) -> Any:
    r = d.ctl(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_session_has_one_shape_wherever_it_is_shown(daemon: Daemon) -> None:
    watch = subprocess.Popen([SESSIONCTL, "watch", "--json"], env=daemon.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with daemon.client() as c:
            wait_until(lambda: c.stats().watchers == 1, 15, "the watch to start")
        made = js(daemon, "create", "--user", "shape", "--meta", "k=v")
        sid = made["id"]
        shown = {
            "create": made,
            "get": js(daemon, "get", sid),
            "list": js(daemon, "list", "--user", "shape")[0],
            "set": js(daemon, "set", sid, "k2", "v2"),
            "unset": js(daemon, "unset", sid, "k2"),
            "refresh": js(daemon, "refresh", sid),
            "expire": js(daemon, "expire", sid),
        }
        with daemon.client() as c:
            client = c.get(sid)
        for name, session in shown.items():
            assert list(session) == SESSION_FIELDS, name
        assert shown["list"] == shown["get"]
        assert shown["expire"]["expired_at"] is not None
        assert shown["get"]["expired_at"] is None  # there, as null, before it expires
        assert client.id == sid and client.version == shown["expire"]["version"]
        assert watch.stdout is not None
        events = [json.loads(watch.stdout.readline()) for _ in range(len(shown) - 2)]
        assert [e["event"] for e in events] == [
            "created", "updated", "updated", "updated", "expired"
        ]
        for event in events:
            assert list(event) == ["event", "id", "at", "session"]
            assert list(event["session"]) == SESSION_FIELDS
        assert events[-1]["session"] == shown["expire"]
    finally:
        watch.send_signal(signal.SIGINT)
        watch.communicate(timeout=30)


@pytest.mark.local_only("read-only mode is the journal's, after a failed fsync")
def test_stats_json_says_read_only_with_a_boolean_and_its_reason(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always", env={"SESSIOND_FAILPOINT": "fsync-error"})
    healthy = js(d, "stats")
    assert healthy["read_only"] is False and healthy["read_only_reason"] is None
    keys = list(healthy)
    assert keys[keys.index("read_only") + 1] == "read_only_reason"
    with d.client() as c, pytest.raises(ReadOnly):
        c.create()
    broken = js(d, "stats")
    assert broken["read_only"] is True
    assert isinstance(broken["read_only_reason"], str) and "fsync" in broken["read_only_reason"]
    table = d.ctl("stats").stdout
    assert f"yes: {broken['read_only_reason']}" in table


def test_export_writes_the_legacy_record_and_says_so(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.create(id="rec")
    records = json.loads(daemon.ctl("export").stdout)
    assert list(records[0]) == ["type", *(f for f in SESSION_FIELDS if f != "expired_at")]
    assert records[0]["type"] == "session"
    text = " ".join(daemon.ctl("help", "export").stdout.split())
    assert "the legacy tool's session record" in text
    assert '"type": "session" first, "expired_at" only once expired' in text
    assert "--json with --format csv is refused (exit 2)" in text


def test_export_refuses_json_with_csv_on_stdout(daemon: Daemon, tmp_path: Any) -> None:
    r = daemon.ctl("export", "--format", "csv", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("sessionctl: error: --json and --format csv contradict")
    assert r.stderr.rstrip().endswith("(see 'sessionctl help export')")
    # To a file, --json shapes the summary: nothing contradicts.
    target = tmp_path / "out.csv"
    done = js(daemon, "export", "--format", "csv", "--output", str(target))
    assert done == {"exported": 0, "file": str(target)}
    assert target.read_text() == "id,user,status,ttl,created_at,last_access,expires_at\n"
