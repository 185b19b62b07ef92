"""What ``sessionctl import`` says of a file whose records do not come in
as they are written: ids repeated, users missing. On every engine: the
user a record lacks is given by the rules both engines run."""

from __future__ import annotations

import json
from pathlib import Path

from sessiond.legacy import read_sessions
from sessiond.model import now_us
from tests.conftest import Daemon, stored
from tests.test_legacy_records import legacy


def odd_records(path: Path, *more: str) -> Path:
    """A legacy file at ``path``: an id on two lines (ttl 60, then 90), a
    record with an empty user, one with no user field, then ``more``."""
    created = now_us()
    blank = json.loads(legacy("blank", 60, created))
    blank["user"] = ""
    missing = json.loads(legacy("missing", 60, created))
    del missing["user"]
    lines = [legacy("twice", 60, created), json.dumps(blank), json.dumps(missing),
             legacy("twice", 90, created), *more]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_says_how_many_records_repeat_an_id_or_have_no_user(daemon: Daemon) -> None:
    # The migration's log says both; a hand import says them to its caller.
    path = odd_records(daemon.root / "odd.jsonl")
    done = daemon.ctl("import", str(path), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["imported"], report["repeated_ids"], report["without_user"]) == (3, 1, 2)
    found = stored(daemon)
    assert (found["blank"].user, found["missing"].user, found["twice"].ttl) == (
        "anonymous", "anonymous", 90
    )
    again = daemon.ctl("import", str(path))
    assert again.returncode == 0, again.stderr
    assert "1 record repeated the id of an earlier one: the last record of each id was " \
        "taken" in again.stdout
    assert "2 records had no user: given user anonymous" in again.stdout


def test_the_reader_counts_the_records_without_a_user_once_for_every_caller(
    tmp_path: Path,
) -> None:
    # The migration's log and sessionctl import both read the count off
    # what the file's reader returns, as they read the repeated ids.
    path = odd_records(tmp_path / "odd.jsonl", legacy("named", 60, now_us()))
    loaded = read_sessions(path)
    assert (len(loaded.sessions), loaded.repeated, loaded.without_user) == (4, 1, 2)
