"""The README's promise: one command gives a session back from a real daemon."""

from __future__ import annotations

import json

from tests.conftest import Daemon


def test_create_then_get_through_the_cli(daemon: Daemon) -> None:
    made = daemon.ctl("create", "--user", "alice", "--ttl", "3600", "--json")
    assert made.returncode == 0, made.stderr
    session = json.loads(made.stdout)
    got = daemon.ctl("get", session["id"], "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["user"] == "alice"


def test_state_survives_a_restart(daemon: Daemon) -> None:
    with daemon.client() as c:
        s = c.create(user="bob", meta={"k": "v"})
    daemon.restart()
    with daemon.client() as c:
        again = c.get(s.id)
    assert again.user == "bob" and again.meta == {"k": "v"} and again.version == s.version
