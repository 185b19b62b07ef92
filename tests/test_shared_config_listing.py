"""Shared mode: ``sessionctl config`` warns of a config file edited since
the daemon read it, as in local mode, and says that the namespace's
settings, which sit above the file, still win over it; ``config KEY VALUE``
(which writes the namespace's settings, not the file) raises no warning."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.shared_only("the namespace's layer above the config file")


def test_config_listing_warns_of_a_hand_edit_under_the_namespaces_settings(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(config={"default_ttl": 100})
    assert d.proc is not None
    assert d.ctl("config", "default_ttl", "200").returncode == 0
    listed = d.ctl("config")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    assert "default_ttl             200       namespace" in listed.stdout
    d.config.write_text(json.dumps({"default_ttl": 300}))
    listed = d.ctl("config")
    assert listed.returncode == 0
    assert listed.stderr == (
        f"sessionctl: warning: config {d.config} has changed since the daemon read it; reload "
        f"it (sessionctl reload, or kill -HUP {d.proc.pid}) to put the file in force (the "
        f"namespace's settings "
        f"still win over it)\n"
    )
