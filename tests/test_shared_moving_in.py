"""Moving a local daemon's sessions into shared mode, as the README says:
``sessionctl export`` from the local daemon, then ``sessionctl import``
against the shared one; every session comes across as it was (expired
ones too), and importing the file again changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, Engine

pytestmark = pytest.mark.shared_only("moving local sessions into the shared engine")


def _sessions(d: Daemon) -> dict[str, dict[str, object]]:
    r = d.ctl("list", "--json")
    assert r.returncode == 0, r.stderr
    return {s["id"]: s for s in json.loads(r.stdout)}


def test_an_export_of_a_local_daemon_imported_into_a_shared_one_comes_across_whole(
    make_daemon: Callable[..., Daemon], tmp_path: Path,
) -> None:
    local = Daemon(tmp_path / "local", engine=Engine("local"))
    local.root.mkdir()
    local.start()
    try:
        with local.client() as c:
            for i in range(20):
                s = c.create(user=f"u{i % 3}", ttl=600 + i, meta={"i": str(i)})
                if i % 4 == 0:
                    c.set(s.id, "more", "x")
                if i % 5 == 0:
                    c.expire(s.id)
        exported = tmp_path / "sessions.jsonl"
        r = local.ctl("export", "--format", "jsonl", "--output", str(exported))
        assert r.returncode == 0, r.stderr
        before = _sessions(local)
    finally:
        assert local.stop() == 0

    shared = make_daemon()
    r = shared.ctl("import", str(exported))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("imported 20, updated 0, skipped 0"), r.stdout
    after = _sessions(shared)
    assert after == before
    assert list(after) == list(before)  # creation order kept

    # Rerun (an interrupted import): nothing changes.
    again = shared.ctl("import", str(exported), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["imported"] == 0
    assert _sessions(shared) == before
