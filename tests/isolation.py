"""What the tests of another user's reach share: a uid that is not ours, a
skip where nothing can be given to it, and a start that must be refused."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Daemon

OTHER_UID = 65534  # nobody


def needs_root(what: str = "a file") -> None:
    """Skip unless root, who alone can give ``what`` to another uid."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root, to give {what} to another uid (CI runs as root)")


def refused(d: Daemon, *fragments: str) -> str:
    """Start ``d``, expect it to refuse (exit 1) saying ``fragments``; its log."""
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1, d.log_text()
    text = d.log_text()
    for fragment in fragments:
        assert fragment in text, text
    return text
