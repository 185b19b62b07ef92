"""An import never brings back a session that was deleted before its id
was made again, whatever its version: the new session is not a version of
it. On every engine (the rule is ``rules.admit``, which both run)."""

from __future__ import annotations

import json

from tests.conftest import Daemon, stored


def test_import_of_an_old_export_leaves_a_session_made_again_under_its_id(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.create(id="s", ttl=600, meta={"secret": "old"})
        c.set("s", "a", 1)
        c.set("s", "b", 2)
    export = daemon.root / "old.jsonl"
    done = daemon.ctl("export", "--format", "jsonl", "--output", str(export))
    assert done.returncode == 0, done.stderr
    with daemon.client() as c:
        c.delete("s")
        again = c.create(id="s", ttl=600, meta={"fresh": "yes"})

    done = daemon.ctl("import", str(export), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["imported"], report["updated"], report["skipped"]) == (0, 0, 1)
    assert "earlier session under this id" in report["reasons"][0]
    assert stored(daemon)["s"] == again
