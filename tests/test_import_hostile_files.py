"""``sessionctl import`` of files that are no export: nested past any
parser's depth, one JSON object instead of an array, a device, a directory.
Each gets one clear message and a documented exit status, and nothing is
imported; never a traceback, a hang or memory without bound. Through the
real CLI against a real daemon.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, running, stored


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("hostile")) as daemon:
        yield daemon


def record(sid: str, **fields: object) -> dict[str, object]:
    return {"type": "session", "id": sid, "user": "u", "status": "active", "ttl": 3600,
            "meta": {}, "created_at": "2026-01-01T00:00:00Z", **fields}


def assert_one_error_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessionctl: error: "), stderr


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    json.dumps([record("deep")])[:-2] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}]",
], ids=["array", "meta"])
def test_a_json_export_nested_too_deeply_is_unreadable_not_a_crash(
    d: Daemon, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    r = d.ctl("import", str(path))
    assert r.returncode == 1, r.stderr
    assert_one_error_line(r.stderr)
    assert "nested too deeply" in r.stdout
    assert "deep" not in stored(d)


@pytest.mark.parametrize("text", [
    json.dumps({"sessions": [record("wrapped")]}),
    json.dumps(record("pretty"), indent=2),
], ids=["wrapper", "pretty-record"])
def test_a_file_of_one_json_object_is_named_as_such_once(
    d: Daemon, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "object.json"
    path.write_text(text + "\n")
    r = d.ctl("import", "--json", str(path))
    assert r.returncode == 1, r.stderr
    assert_one_error_line(r.stderr)
    out = json.loads(r.stdout)
    assert out["imported"] == 0 and out["unreadable"] == 1, out
    (problem,) = out["problems"]
    assert "holds one JSON object" in problem and "array of records" in problem, problem
    assert not {"wrapped", "pretty"} & set(stored(d))


def test_a_one_line_record_is_still_a_jsonl_file(d: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record("one-line")) + "\n")
    r = d.ctl("import", str(path))
    assert r.returncode == 0, r.stderr
    assert "one-line" in stored(d)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_device_is_refused_before_it_is_read(d: Daemon, device: str) -> None:
    if not os.path.exists(device):
        pytest.fail(f"{device} is missing on this system")
    # Read, /dev/zero would take memory until the process dies.
    r = d.ctl("import", device, timeout=60)
    assert r.returncode == 2, r.stderr
    assert_one_error_line(r.stderr)
    assert f"cannot read {device}: is a character device, not a file" in r.stderr
    assert r.stdout == ""


def test_a_directory_is_refused(d: Daemon, tmp_path: Path) -> None:
    r = d.ctl("import", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert_one_error_line(r.stderr)
    assert "is a directory, not a file" in r.stderr


def test_a_pipe_is_read_to_its_end(d: Daemon) -> None:
    lines = "".join(json.dumps(record(f"piped-{i}")) + "\n" for i in range(3))
    # subprocess gives the input through a pipe: /dev/stdin is a FIFO.
    r = d.ctl("import", "/dev/stdin", input=lines)
    assert r.returncode == 0, r.stderr
    assert {"piped-0", "piped-1", "piped-2"} <= set(stored(d))


def test_a_repeated_key_in_a_record_takes_its_last_value(d: Daemon, tmp_path: Path) -> None:
    # As Python's json and jq read it; the same rule as a repeated id.
    path = tmp_path / "dup.json"
    path.write_text('[{"id": "dup-a", "id": "dup-b", "user": "a", "user": "b", '
                    '"created_at": "2026-01-01T00:00:00Z", "meta": {"k": 1, "k": 2}}]\n')
    r = d.ctl("import", str(path))
    assert r.returncode == 0, r.stderr
    held = stored(d)
    assert "dup-a" not in held
    assert held["dup-b"].user == "b" and held["dup-b"].meta == {"k": 2}
