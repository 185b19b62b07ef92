"""A compaction that cannot be done is not tried again at every commit, and
one of the daemon's own accord is not begun without the room it needs.

A disk with room for the journal's appends (the space it reserves ahead of
its lines) but none for a rewrite. Before, the compactor tried the rewrite
the journal's growth asks for after every commit while writes came in:
dozens of failed rewrites a second, each writing a temp file into what room
there was (which the appends then lacked) and costing most of a core. It
now puts an automatic compaction off while the filesystem has less free
than about twice the rewritten journal (the new file, its snapshot and
room to spare), and backs off while it must (1 s doubled up to 30 s), as
it does while compactions fail; it compacts again once there is room.
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


def test_a_compaction_without_room_is_put_off_and_backs_off_instead_of_running_at_every_commit(
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
        put_off = d.log_text().count("automatic compaction of")
        assert put_off >= 1, d.log_text()
        # Backing off from 1 s, doubled: far fewer than one a commit.
        assert put_off <= 2 + seconds, f"{put_off} compactions put off in {seconds:.1f}s"
        # Not even begun: no temp file took the appends' room.
        assert "compaction failed" not in d.log_text()
        assert not any(p.name.endswith(".tmp") for p in data.iterdir()), list(data.iterdir())
        line = next(x for x in d.log_text().splitlines() if "automatic compaction of" in x)
        assert f"automatic compaction of {data / 'data.jsonl'} put off: it needs about " in line
        assert "bytes free (the new journal and its snapshot" in line
        assert line.endswith("looking again in 1s")
        before = c.stats().compactions
        filler.unlink()

        def compacted() -> bool:
            c.set("s0", "n", "again")
            return c.stats().compactions > before

        wait_until(compacted, timeout=60, what="a compaction once there is room")
        assert c.get("s0").meta["n"] == "again"
