"""A path that starts with ``~user`` for a user who does not exist (in
``--socket``, ``SESSIOND_SOCKET``, ``SESSIOND_DATA_DIR``, ``SESSIOND_CONFIG``
or ``Client(path)``) is refused in one line naming it: exit 2 from
``sessionctl``, ``InvalidRequest`` from Python, and one logged line (exit 1)
from ``sessiond``, which resolves its paths with the same functions.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from sessionctl import AsyncClient, Client, InvalidRequest
from tests.conftest import SESSIONCTL, SESSIOND

pytestmark = pytest.mark.local_only("paths are resolved alike whatever the engine")

NOBODY = "nosuchuser-sessiond"
PATH = f"~{NOBODY}/x.sock"
SAID = f"'{PATH}': no user {NOBODY}"


@pytest.fixture(autouse=True)
def no_such_user() -> None:
    try:
        pwd.getpwnam(NOBODY)
    except KeyError:
        return
    pytest.skip(f"a user {NOBODY} exists here")


def run(program: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return subprocess.run([program, *args], env={**full, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--socket", PATH], {}, ""),
    ([], {"SESSIOND_SOCKET": PATH}, "SESSIOND_SOCKET="),
    ([], {"SESSIOND_DATA_DIR": PATH}, "SESSIOND_DATA_DIR="),
], ids=["flag", "socket-variable", "data-dir-variable"])
def test_sessionctl_refuses_an_unknown_user_in_one_line_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    # Nothing answers on the socket: the data dir is read to say why.
    env = {"SESSIOND_SOCKET": str(tmp_path / "none.sock"), **env}
    r = run(SESSIONCTL, *args, "--no-autostart", "ping", **env)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"sessionctl: error: cannot expand {named}{SAID}"), r.stderr


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--socket", PATH], {}, ""),
    (["--check"], {"SESSIOND_CONFIG": PATH}, "SESSIOND_CONFIG="),
], ids=["flag", "config-variable"])
def test_sessiond_refuses_an_unknown_user_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    r = run(SESSIOND, "--data-dir", str(tmp_path / "data"), *args, **env)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"ERROR cannot expand {named}{SAID}" in r.stderr


def test_python_clients_raise_invalid_request() -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(InvalidRequest, match=f"^cannot expand {SAID}$"):
            make(PATH, autostart=False)
