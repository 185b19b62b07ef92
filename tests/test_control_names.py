"""A ``user`` or a meta key holding a C0 control character (U+0000 to
U+001F) or DEL is refused at create and set, changing nothing; values may
hold anything. Data that entered before the rule (a journal, an import, the
legacy migration) still loads, so that an existing journal still starts."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from sessiond import rules
from sessiond.errors import InvalidRequest
from sessiond.model import US, Session, iso, now_us
from sessiond.records import put_line
from sessiond.store import Store
from tests.conftest import Daemon, stored

BAD_NAMES = ["a\x1b[2Jb", "line\nbreak", "tab\there", "nul\x00", "del\x7f", "\x01"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_control_character_in_a_user_or_a_meta_key_is_refused(
    daemon: Daemon, name: str
) -> None:
    with daemon.client() as c:
        sid = c.create(user="alice", meta={"k": "v"}).id
    before = stored(daemon)
    journal = daemon.journal_bytes()
    # (A NUL cannot be passed in argv: that one goes by the client alone.)
    cli = [] if "\x00" in name else [
        ["create", "--user", name], ["create", "--meta", f"{name}=v"], ["set", sid, name, "v"]
    ]
    for args in cli:
        done = daemon.ctl(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "control character U+" in done.stderr and done.stderr.count("\n") == 1
    with daemon.client() as c:
        for call in (lambda: c.create(user=name), lambda: c.create(meta={"fine": 1, name: 2}),
                     lambda: c.set(sid, name, "v")):
            with pytest.raises(InvalidRequest, match="control character"):
                call()
    assert stored(daemon) == before and daemon.journal_bytes() == journal


def test_values_may_hold_control_characters_and_other_scripts_are_names(
    daemon: Daemon,
) -> None:
    with daemon.client() as c:
        s = c.create(user="Zoë \u202e", meta={"日本": "\x1b[31mred\n"})
        s = c.set(s.id, "ключ", "\x00\x7f")
    assert s.user == "Zoë \u202e" and s.meta == {"日本": "\x1b[31mred\n", "ключ": "\x00\x7f"}


@pytest.mark.local_only("a journal written before the daemon starts")
def test_names_with_control_characters_that_entered_before_still_load(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    now = now_us()
    old = Session(id="old", user="a\nb", status="active", ttl=600, meta={"k\x1b": 1},
                  created_at=now, last_access=now, expires_at=now + 600 * US)
    d.journal.write_bytes(put_line(old))
    legacy = d.root / "home" / ".session" / "data.jsonl"
    legacy.parent.mkdir(parents=True)
    record = {"type": "session", "id": "legacy", "user": "x\ty", "status": "active",
              "ttl": 600, "meta": {"\x7f": 1}, "created_at": iso(now)}
    legacy.write_text(json.dumps(record) + "\n")
    d.start()  # the journal is not empty: no migration, but it starts
    assert stored(d)["old"].user == "a\nb"
    # An import of such data, and the migration on an empty data dir.
    done = d.ctl("import", str(legacy))
    assert done.returncode == 0 and "imported 1" in done.stdout, done.stdout
    fresh = make_daemon(start=False, root=d.root / "fresh")
    (fresh.root / "home").mkdir(parents=True, exist_ok=True)
    (fresh.root / "home" / ".session").symlink_to(legacy.parent)
    fresh.start()
    assert stored(fresh)["legacy"].meta == {"\x7f": 1}
    # Such a key can still be removed (and the session changed otherwise).
    with d.client() as c:
        assert c.unset("old", "k\x1b").meta == {}
        assert c.set("legacy", "ok", 1).user == "x\ty"


def test_the_store_checks_names_it_is_given_not_those_it_holds() -> None:
    store = Store()
    with pytest.raises(InvalidRequest, match=r"U\+000A"):
        rules.create(store, 0, user="a\nb")
    with pytest.raises(InvalidRequest, match="meta key 'k\\\\x7f' holds the control"):
        rules.create(store, 0, meta={"k\x7f": 1})
    assert len(store) == 0
