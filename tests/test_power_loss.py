"""Power loss, as opposed to kill -9: the page cache is gone too.

After a kill -9 the kernel still holds everything the daemon wrote; after a
power cut only what was synced is there: a file's bytes once the file is
fsynced, a file's or a directory's NAME once the directory holding it is.
These tests take the crashed state from a real daemon's own system calls
(traced with strace) or build it from a real daemon's files, and start a
real daemon on it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sessiond import config
from sessiond.errors import ReadOnly
from tests.conftest import SESSIOND, Daemon, needs, run_sessiond, stored, wait_until

pytestmark = pytest.mark.local_only("the local journal's files on disk")

# strace -f -y: "PID syscall(args) = result", an fd shown as N</its/path>.
_CALL = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_O_CREAT = 0o100


@dataclass
class Created:
    """A directory entry the daemon made, and where in the trace."""

    path: Path
    line: int


def traced_start(d: Daemon, trace: Path, *args: str) -> None:
    """Start ``d`` under strace, recording what makes files, names and
    bytes durable."""
    strace = needs("strace")
    log = d.log.open("ab")
    d.proc = subprocess.Popen(
        [strace, "-f", "-y", "-s", "256", "-X", "raw", "-o", str(trace),
         "-e", "trace=mkdir,openat,fsync,fdatasync,pwrite64,pwritev2,unlink,unlinkat",
         SESSIOND, *args],
        env=d.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    log.close()
    d.wait_ready(timeout=60)


def created_entries(lines: list[str], under: Path) -> list[Created]:
    """Every directory and file that a successful mkdir or open with
    O_CREAT made under ``under`` (opening one that already existed makes
    nothing: only its first such open counts)."""
    made: list[Created] = []
    seen: set[Path] = set()
    for n, line in enumerate(lines):
        m = _CALL.match(line)
        if not m or int(m.group(3)) < 0:
            continue
        name, args = m.group(1), m.group(2)
        path_m = re.search(r'"([^"]+)"', args)
        if path_m is None:
            continue
        path = Path(path_m.group(1))
        if not path.is_relative_to(under) or path in seen:
            continue
        if name == "mkdir" or (
            name == "openat" and int(args.split(", ")[2], 0) & _O_CREAT
        ):
            seen.add(path)
            made.append(Created(path, n))
    return made


def synced_dirs(lines: list[str], before: int) -> list[tuple[int, Path]]:
    """The directories fsynced (completed) before line ``before``."""
    out = []
    for n, line in enumerate(lines[:before]):
        m = _CALL.match(line)
        if m and m.group(1) in ("fsync", "fdatasync") and int(m.group(3)) == 0:
            fd_path = re.match(r"\d+<(.*)>$", m.group(2))
            if fd_path is not None and Path(fd_path.group(1)).is_dir():
                out.append((n, Path(fd_path.group(1))))
    return out


def power_cut_copy(src: Path, dest: Path, lost: list[Path]) -> None:
    """``src``'s tree as a power cut leaves it: the names in ``lost`` gone."""
    shutil.copytree(src, dest)
    for path in sorted(lost, key=lambda p: len(p.parts)):
        gone = dest / path.relative_to(src)
        if gone.is_dir():
            shutil.rmtree(gone)
        else:
            gone.unlink(missing_ok=True)


def test_a_first_start_makes_its_data_dir_and_journal_durable_before_acknowledging(
    make_daemon: Callable[..., Daemon], tmp_path: Path,
) -> None:
    """Under ``always`` the first write of a new data dir is synced before
    it is acknowledged; so must be the names that lead to it (the data dir
    in its parent, ``data.jsonl`` in the data dir), or a power cut right
    after the acknowledgement loses the journal, and the write with it."""
    d = make_daemon(start=False)
    trace = tmp_path / "trace"
    traced_start(d, trace, "--fsync", "always")
    with d.client() as c:
        c.create(id="first", user="alice")
    assert d.ctl("shutdown").returncode == 0
    assert d.proc is not None
    d.proc.wait(30)
    lines = trace.read_text(errors="replace").splitlines()
    # The crash point: the write (and sync) of the acknowledged line has
    # just returned; its acknowledgement comes after.
    written = next(
        n for n, line in enumerate(lines)
        if _CALL.match(line) and "data.jsonl" in line and '\\"first\\"' in line
        and line.split("(", 1)[0].split()[-1] in ("pwrite64", "pwritev2")
    ) + 1
    made = [c for c in created_entries(lines[:written], d.data_dir)
            if c.path.name != "sessiond.lock"]
    assert {c.path for c in made} >= {d.data_dir, d.journal}
    syncs = synced_dirs(lines, written)
    lost = [
        c.path for c in made
        if not any(n > c.line and synced == c.path.parent for n, synced in syncs)
    ]
    crashed = Daemon(tmp_path / "after-the-cut")
    crashed.root.mkdir(mode=0o700)
    power_cut_copy(d.root / "data", crashed.data_dir, [p for p in lost if p != d.data_dir])
    if d.data_dir in lost:
        shutil.rmtree(crashed.data_dir)
    crashed.start()
    assert "first" in stored(crashed), (
        f"the acknowledged session is lost with the names no directory fsync "
        f"covered: {[str(p) for p in lost]}"
    )
    wait_until(lambda: crashed.stop() == 0, 30, "the daemon to stop")


def test_repair_cuts_the_lines_after_a_write_a_power_cut_lost(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Under ``everysec`` the lines written since the last sync can reach
    the disk in any order: a power cut may keep a later line and lose an
    earlier one, which reads back as zeros (the journal's space is
    allocated ahead). The start refuses the damage; ``--repair`` must then
    cut the journal where the lost write begins, not keep the lines after
    it: those would bring back changes without the earlier ones they may
    follow from, a state that never was. The backup keeps every byte."""
    d = make_daemon("--fsync", "everysec")
    with d.client() as c:
        for i in range(10):
            c.create(id=f"s{i}", user="alice", meta={"n": i})
        before = stored(d)
    d.kill()
    raw = d.journal.read_bytes()
    starts = [0] + [n + 1 for n, b in enumerate(raw) if b == ord("\n")]
    # The 7th line's write never reached the disk; the 8th, 9th and 10th did
    # (its zeros run into the 8th: one unreadable line, then two more).
    lost_from, lost_to = starts[6], starts[7]
    crashed = raw[:lost_from] + b"\0" * (lost_to - lost_from) + raw[lost_to:]
    d.journal.write_bytes(crashed)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    assert "--repair" in d.log_text()
    check = run_sessiond(d, "--check")
    assert check.returncode == 1
    assert f"line 7 (byte offset {lost_from}) holds zeros" in check.stdout
    repaired = run_sessiond(d, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    d.start()
    assert stored(d) == {f"s{i}": before[f"s{i}"] for i in range(6)}
    assert "power cut" in repaired.stdout and "3 lines in all" in repaired.stdout
    backups = list(d.data_dir.glob("data.jsonl.bak-*"))
    assert [b.read_bytes() for b in backups] == [crashed]


def test_a_refused_config_change_stays_refused_after_a_power_cut(
    make_daemon: Callable[..., Daemon], tmp_path: Path,
) -> None:
    """``config KEY VALUE`` writes the file first; when the change is then
    refused (here a lowered max_lifetime whose changes the journal cannot
    take), the file is put back as it was, which for a file that did not
    exist is a removal. That removal must be durable before the refusal is
    answered, or a power cut brings the refused setting back in force."""
    d = make_daemon(start=False, env={"SESSIOND_FAILPOINT": "fsync-error@2"})
    trace = tmp_path / "trace"
    traced_start(d, trace, "--fsync", "always")
    with d.client() as c:
        c.create(id="kept", ttl=3600)
        with pytest.raises(ReadOnly):
            c.create(id="refused")
    refused = d.ctl("config", "max_lifetime", "1")
    assert refused.returncode == 1 and "max_lifetime not changed" in refused.stderr
    assert not d.config.exists()
    assert d.ctl("shutdown").returncode == 0
    assert d.proc is not None
    d.proc.wait(30)
    lines = trace.read_text(errors="replace").splitlines()
    removed = max(
        n for n, line in enumerate(lines)
        if (m := _CALL.match(line)) and m.group(1) in ("unlink", "unlinkat")
        and int(m.group(3)) == 0 and f'"{d.config}"' in line
    )
    synced = [n for n, path in synced_dirs(lines, len(lines)) if path == d.config.parent]
    crashed = Daemon(tmp_path / "after-the-cut")
    crashed.root.mkdir(mode=0o700)
    shutil.copytree(d.data_dir, crashed.data_dir)
    if not any(n > removed for n in synced):
        # The removal never reached the disk: the file the change wrote
        # (as ``config`` writes it) is what the next start reads.
        config.save(crashed.config, {"max_lifetime": 1})
    crashed.start()
    assert crashed.ctl("config", "max_lifetime").stdout == "0\n"
    assert "kept" in stored(crashed)
    wait_until(lambda: crashed.stop() == 0, 30, "the daemon to stop")
