"""A compaction that fails is not tried again at every commit.

A disk with room for the journal's appends (the space it reserves ahead of
its lines) but none for a rewrite: the compaction the journal's growth asks
for fails. Before, the compactor tried again after every commit while
writes came in: dozens of failed rewrites a second, each writing a temp
file into what room there was (which the appends then lacked) and costing
most of a core. It now backs off while compactions fail, 1 s doubled up
to 30 s, and compacts again once there is room.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import tmpfs
from tests.conftest import Daemon, wait_until
from tests.tmpfs import fill

pytestmark = pytest.mark.local_only("the journal's compaction on a filesystem of the test's")

SETS = 200


@pytest.fixture
def roomy_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (room for the journal's reserved space), unmounted
    after the test."""
    yield from tmpfs.mounted(tmp_path, "8m")


def test_a_failing_compaction_backs_off_instead_of_running_at_every_commit(
    make_daemon: Callable[..., Daemon], roomy_fs: Path
) -> None:
    data = roomy_fs / "data"
    d = make_daemon(env={"SESSIOND_DATA_DIR": str(data)})
    with d.client() as c:
        # No compaction yet: the journal's first write reserved room ahead
        # of its lines, which the appends below go into.
        for i in range(100):
            c.create(id=f"s{i}", user="u", meta={"pad": "x" * 500})
        filler = fill(roomy_fs)
        # Any growth asks for a compaction (the config file is elsewhere).
        c.set_config("compact_growth_percent", 1)
        c.set_config("compact_min_bytes", 0)
        began = time.monotonic()
        # Each set is a commit whose growth asks for a compaction; each
        # is acknowledged (its line goes into the space reserved ahead).
        for n in range(SETS):
            c.set("s0", "n", n)
        seconds = time.monotonic() - began
        failed = d.log_text().count("compaction failed")
        assert failed >= 1, d.log_text()
        # Backing off from 1 s, doubled: far fewer than one a commit.
        assert failed <= 2 + seconds, f"{failed} failed compactions in {seconds:.1f}s"
        assert not any(p.name.endswith(".tmp") for p in data.iterdir()), list(data.iterdir())
        before = c.stats().compactions
        filler.unlink()

        def compacted() -> bool:
            c.set("s0", "n", "again")
            return c.stats().compactions > before

        wait_until(compacted, timeout=60, what="a compaction once there is room")
        assert c.get("s0").meta["n"] == "again"
