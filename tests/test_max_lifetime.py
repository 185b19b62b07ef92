"""Lowering ``max_lifetime`` brings every session within the new cap at
once (live, at SIGHUP and at start), persisted like any change, so that
``get``, ``list``, ``get --touch`` and ``refresh`` agree; the timer expires
a capped session at its cap. A journal that refuses those changes leaves
the settings, the file and the sessions as they were."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from sessiond.errors import ReadOnly
from sessiond.model import US, iso, now_us
from tests.conftest import Daemon, stored, wait_until

CAP = 1800


def legacy(sid: str, created: int, ttl: int) -> dict[str, Any]:
    return {
        "type": "session", "id": sid, "user": "u", "status": "active", "ttl": ttl,
        "meta": {}, "created_at": iso(created), "last_access": iso(created),
        "expires_at": iso(created + ttl * US),
    }


def import_aged(d: Daemon) -> dict[str, int]:
    """``old`` (an hour old, due in an hour) and ``young`` (ten minutes
    old, due in fifty): their creation moments."""
    now = now_us()
    created = {"old": now - 3600 * US, "young": now - 600 * US}
    path = d.root / "aged.jsonl"
    path.write_text(
        json.dumps(legacy("old", created["old"], 7200)) + "\n"
        + json.dumps(legacy("young", created["young"], 3600)) + "\n"
    )
    done = d.ctl("import", str(path))
    assert done.returncode == 0, done.stderr
    return created


def js(d: Daemon, *args: str) -> Any:
    done = d.ctl(*args, "--json")
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


def assert_capped(d: Daemon, created: dict[str, int]) -> None:
    """Every way of reading says the same: ``old`` expired at its cap,
    ``young`` due at its cap."""
    old_end, young_end = iso(created["old"] + CAP * US), iso(created["young"] + CAP * US)
    listed = {s["id"]: s for s in js(d, "list")}
    for old in (js(d, "get", "old"), listed["old"], js(d, "get", "old", "--touch")):
        assert (old["status"], old["expired_at"], old["expires_at"]) == (
            "expired", old_end, old_end
        )
    for young in (js(d, "get", "young"), listed["young"], js(d, "get", "young", "--touch"),
                  js(d, "refresh", "young")):
        assert (young["status"], young["expires_at"]) == ("active", young_end)
    refused = d.ctl("refresh", "old")
    assert refused.returncode == 1 and "add --revive" in refused.stderr
    refused = d.ctl("refresh", "old", "--revive")
    assert refused.returncode == 1 and "reached max_lifetime" in refused.stderr


def test_every_read_agrees_right_after_max_lifetime_is_lowered(daemon: Daemon) -> None:
    created = import_aged(daemon)
    assert daemon.ctl("config", "max_lifetime", str(CAP)).returncode == 0
    assert_capped(daemon, created)
    # Persisted as changes: a kill loses none of it.
    daemon.kill()
    daemon.start()
    assert_capped(daemon, created)


def test_the_timer_expires_a_capped_session_at_its_cap(daemon: Daemon) -> None:
    now = now_us()
    path = daemon.root / "soon.jsonl"
    path.write_text(json.dumps(legacy("soon", now - 10 * US, 3600)) + "\n")
    assert daemon.ctl("import", str(path)).returncode == 0
    with daemon.client() as c:
        c.set_config("max_lifetime", 14)
        # Nobody reads the session: only the timer can expire it.
        wait_until(lambda: c.stats().expiries_done == 1, 20, "the timer")
        s = c.get("soon")
    assert s.status == "expired" and s.expired_at_us == s.expires_at_us == now - 10 * US + 14 * US


@pytest.mark.local_only('a cap lowered in config.json, or refused by the journal')
def test_a_cap_lowered_while_the_daemon_was_down_applies_at_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    created = import_aged(d)
    d.stop()
    d.config.write_text(json.dumps({"max_lifetime": CAP}))
    d.start()
    assert_capped(d, created)
    lines = d.journal_bytes().count(b"\n")
    d.restart()  # nothing more to do: nothing more written
    assert d.journal_bytes().count(b"\n") == lines
    assert_capped(d, created)


@pytest.mark.local_only('a cap lowered in config.json, or refused by the journal')
def test_a_cap_lowered_by_sighup_applies_at_once(daemon: Daemon) -> None:
    created = import_aged(daemon)
    daemon.config.write_text(json.dumps({"max_lifetime": CAP}))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: daemon.ctl("config", "max_lifetime").stdout == f"{CAP}\n",
               what="the reload")
    assert_capped(daemon, created)


@pytest.mark.local_only('a cap lowered in config.json, or refused by the journal')
def test_a_lowered_cap_the_journal_refuses_changes_nothing(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always", env={"SESSIOND_FAILPOINT": "fsync-error@2"})
    import_aged(d)
    with d.client() as c:
        with pytest.raises(ReadOnly):
            c.create()
        before = stored(d)
    refused = d.ctl("config", "max_lifetime", str(CAP))
    assert refused.returncode == 1
    assert "max_lifetime not changed" in refused.stderr
    assert not d.config.exists()
    assert d.ctl("config", "max_lifetime").stdout == "0\n"
    assert stored(d) == before
    # A setting that changes no session still applies.
    assert d.ctl("config", "default_ttl", "60").returncode == 0
    assert json.loads(d.config.read_text()) == {"default_ttl": 60}
