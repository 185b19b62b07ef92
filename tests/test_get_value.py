"""``sessionctl get ID KEY``: one metadata value alone, for scripts, as
``config KEY`` prints one setting; a key the session lacks is exit 1."""

from __future__ import annotations

import json

from tests.conftest import Daemon


def test_get_with_a_key_prints_its_value_alone(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.create(user="alice", meta={"theme": "dark", "n": 3, "tags": ["a", "b"],
                                           "note": "line\nbreak"}).id
    assert daemon.ctl("get", sid, "theme").stdout == "dark\n"
    # A value that is not a string reads as the JSON it is; one that holds a
    # control character is escaped, as every value for people is.
    assert daemon.ctl("get", sid, "n").stdout == "3\n"
    assert daemon.ctl("get", sid, "tags").stdout == '["a","b"]\n'
    assert daemon.ctl("get", sid, "note").stdout == "line\\nbreak\n"
    as_json = daemon.ctl("get", sid, "note", "--json")
    assert json.loads(as_json.stdout) == {"note": "line\nbreak"}


def test_get_with_a_key_the_session_lacks_is_exit_1_on_stderr(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.create(meta={"theme": "dark"}).id
    done = daemon.ctl("get", sid, "lang")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"sessionctl: error: session {sid} has no metadata key 'lang'\n"
    # And a session that is not there, as before.
    gone = daemon.ctl("get", "nosuch", "theme")
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_get_with_a_key_and_touch_slides_the_deadline(daemon: Daemon) -> None:
    with daemon.client() as c:
        s = c.create(ttl=600, meta={"theme": "dark"})
    assert daemon.ctl("get", s.id, "theme", "--touch").stdout == "dark\n"
    with daemon.client() as c:
        assert c.get(s.id).expires_at_us > s.expires_at_us
