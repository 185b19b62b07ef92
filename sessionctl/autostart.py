"""Start a daemon when none answers, as tmux and gpg-agent do.

If the systemd user units are installed, the daemon is systemd's to run:
we ask systemd to start it rather than starting a second, unmanaged one.
Otherwise we start ``sessiond`` detached, with its log in the data dir, and
wait (up to 5 s) until it answers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from sessiond.errors import DaemonUnavailable

WAIT_SECONDS = 5.0
NO_AUTOSTART_ENV = "SESSIONCTL_NO_AUTOSTART"


def unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def service_installed() -> bool:
    return (unit_dir() / "sessiond.service").exists()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(os.fspath(path))
        except OSError:
            return False
        return True


def start_daemon(path: Path) -> None:
    """Make a daemon answer on ``path`` or raise ``DaemonUnavailable``."""
    if service_installed():
        _start_with_systemd(path)
        return
    from sessiond.paths import data_dir, private_dir

    data = private_dir(data_dir())
    log_path = data / "sessiond.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessiond.daemon", "--socket", os.fspath(path)],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if _answers(path):
            return
        code = proc.poll()
        if code is not None and not _answers(path):
            # It may have lost a race to another autostarted daemon: give
            # that one the rest of the wait.
            if code != 0 and _wait_for(path, deadline):
                return
            raise DaemonUnavailable(
                f"sessiond exited with status {code} before answering on {path}; "
                f"see {log_path}"
            )
        time.sleep(0.02)
    raise DaemonUnavailable(
        f"sessiond did not answer on {path} within {WAIT_SECONDS:g}s; see {log_path}"
    )


def _wait_for(path: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if _answers(path):
            return True
        time.sleep(0.05)
    return False


def _start_with_systemd(path: Path) -> None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise DaemonUnavailable(
            "the sessiond user service is installed but systemctl is missing; "
            "run 'sessiond install-service --uninstall' to let sessionctl start it"
        )
    done = subprocess.run(
        [systemctl, "--user", "start", "sessiond.socket", "sessiond.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or ["no reason given"]
        raise DaemonUnavailable(
            f"could not start the sessiond user service: {why[0]}; "
            f"see 'journalctl --user -u sessiond'"
        )
    if not _wait_for(path, time.monotonic() + WAIT_SECONDS):
        raise DaemonUnavailable(
            f"the sessiond user service started but nothing answers on {path}; "
            f"see 'journalctl --user -u sessiond'"
        )
