"""``sessiond install-service``: the systemd user units, installed.

The units ship inside the package (``sessiond/units``). Installing copies
them into the user's unit directory with ``ExecStart=`` pointing at this
installation's ``sessiond``, reloads the user manager if one runs, and says
how to enable them. ``--uninstall`` disables and removes them.

Only the standard library (and ``sessiond.paths``, which every
``sessionctl`` run imports anyway) is imported here: ``sessionctl`` asks
``user_unit_dir`` on its autostart path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path

from sessiond.errors import SessionError
from sessiond.paths import make_private_dirs, xdg_dir

SERVICE = "sessiond.service"
SOCKET = "sessiond.socket"
UNITS = (SERVICE, SOCKET)
ENABLE_COMMAND = f"systemctl --user enable --now {SOCKET}"
SYSTEMCTL_TIMEOUT = 30.0


class ServiceError(SessionError):
    """The units cannot be installed or removed; the message says why."""

    code = "service"


def user_unit_dir() -> Path:
    """Where the systemd user manager looks for the user's own units."""
    base = xdg_dir("XDG_CONFIG_HOME")
    root = Path(base) if base else Path.home() / ".config"
    return root / "systemd" / "user"


def service_installed() -> bool:
    return (user_unit_dir() / SERVICE).exists()


def sessiond_executable() -> Path:
    """The ``sessiond`` that is running this command, as an absolute path.

    ``argv[0]`` is it when started as ``sessiond``; under ``python -m`` the
    console script beside this interpreter is; ``$PATH`` comes last because
    it may name another installation."""
    candidates: list[str] = []
    if Path(sys.argv[0]).name == "sessiond":
        candidates.append(sys.argv[0])
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "sessiond"))
    on_path = shutil.which("sessiond")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(os.path.abspath(candidate))
    raise ServiceError(
        "cannot find the sessiond executable of this installation (looked at "
        + ", ".join(candidates) + "); install the package with pip so that it has one"
    )


def exec_quote(path: Path) -> str:
    """``path`` as the first word of an ``ExecStart=`` line."""
    text = str(path)
    if any(ord(ch) < 32 or ch == "\x7f" for ch in text):
        raise ServiceError(f"cannot write a unit for a path with control characters: {text!r}")
    # % starts a specifier and $ a variable, in the command word as elsewhere.
    text = text.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def packaged_unit(name: str) -> str:
    return resources.files("sessiond").joinpath("units").joinpath(name).read_text(encoding="utf-8")


def render_service(text: str, executable: Path) -> str:
    """The packaged service with its ``ExecStart=`` aimed at ``executable``."""
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    if len(found) != 1:
        raise ServiceError(
            f"the packaged {SERVICE} has {len(found)} ExecStart= lines, not one; "
            f"the installation is broken"
        )
    lines[found[0]] = f"ExecStart={exec_quote(executable)}\n"
    return "".join(lines)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, so the manager never reads half a unit.
    0644 as systemctl writes units: they hold nothing private."""
    from sessiond.diskio import atomic_write  # not on sessionctl's autostart path

    atomic_write(path, text.encode("utf-8"), mode=0o644)


def systemctl(*args: str) -> str | None:
    """Run ``systemctl --user ARGS``; None when it worked, else why not."""
    return _systemctl(*args)[0]


def _systemctl(*args: str) -> tuple[str | None, str]:
    """``systemctl --user ARGS``: why it did not work (None when it did),
    and what it printed."""
    exe = shutil.which("systemctl")
    if exe is None:
        return "systemctl is not installed", ""
    command = " ".join(["systemctl", "--user", *args])
    try:
        done = subprocess.run(
            [exe, "--user", *args], capture_output=True, text=True, check=False,
            timeout=SYSTEMCTL_TIMEOUT, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"'{command}' did not finish within {SYSTEMCTL_TIMEOUT:g}s", ""
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        why = f"'{command}' failed: " + (said[-1] if said else f"exit status {done.returncode}")
        return why, done.stdout
    return None, done.stdout


def service_pid() -> int | None:
    """The pid of the daemon systemd runs as ``sessiond.service`` (its
    MainPID); None when the units are not installed, or no user manager
    says it runs one."""
    if not service_installed():
        return None
    problem, said = _systemctl("show", "--property=MainPID", "--value", SERVICE)
    text = said.strip()
    if problem is not None or not text.isdigit() or text == "0":
        return None
    return int(text)


def _reload(hint: str = "") -> bool:
    """``daemon-reload`` if a user manager answers; say so if none does.
    Whether one did."""
    problem = systemctl("daemon-reload")
    if problem is None:
        print("reloaded the systemd user manager")
        return True
    print(
        f"sessiond: daemon-reload skipped: {problem}\n"
        f"sessiond: no systemd user manager answered; one started later reads the units "
        f"itself{hint}",
        file=sys.stderr,
    )
    return False


def _install() -> int:
    executable = sessiond_executable()
    target = user_unit_dir()
    make_private_dirs(target)
    texts = {
        SERVICE: render_service(packaged_unit(SERVICE), executable),
        SOCKET: packaged_unit(SOCKET),
    }
    updated = False
    for name, text in texts.items():
        path = target / name
        updated = updated or path.exists()
        print(f"{'updated' if path.exists() else 'installed'} {path}")
        _write(path, text)
    print(f"  ExecStart={exec_quote(executable)}")
    reloaded = _reload(
        ".\nsessiond: on a system without one, sessionctl cannot start sessiond on the "
        "default socket while they are installed: 'sessiond install-service --uninstall' "
        "removes them"
    )
    if updated:
        print(f"A sessiond that systemd already runs keeps its old settings until "
              f"'systemctl --user restart {SERVICE}'.")
    print(
        "While these units are installed, sessionctl leaves starting sessiond on the default "
        "socket to systemd.\n"
        "Enable and start it (now and at every login) with:\n"
        f"  {ENABLE_COMMAND}"
    )
    if not reloaded:
        # Written, but not in force: a script that goes on to enable them
        # must not be told that this worked.
        print(
            f"sessiond: error: the units are written but no user manager has loaded them; "
            f"once one runs (log in to a systemd session, or 'loginctl enable-linger "
            f"$USER'), run 'systemctl --user daemon-reload && {ENABLE_COMMAND}'",
            file=sys.stderr,
        )
        return 1
    return 0


def _uninstall() -> int:
    target = user_unit_dir()
    present = [target / name for name in UNITS if (target / name).exists()]
    if not present:
        print(f"sessiond: the units are not installed in {target}; nothing to do")
        return 0
    problem = systemctl("disable", "--now", SOCKET, SERVICE)
    if problem is None:
        print(f"stopped and disabled {SOCKET} and {SERVICE}")
    else:
        print(f"sessiond: not stopped or disabled by systemd: {problem}", file=sys.stderr)
        # `systemctl disable` did not run, so remove the enablement links it
        # would have: left behind, they would dangle once the units are gone.
        for link in sorted(target.glob("*.wants/*")) + sorted(target.glob("*.requires/*")):
            if link.name in UNITS and link.is_symlink():
                link.unlink()
                print(f"removed {link}")
    for path in present:
        path.unlink()
        print(f"removed {path}")
    _reload()
    print("sessionctl starts sessiond by itself again when none answers")
    return 0


def install(uninstall: bool = False) -> int:
    """``sessiond install-service [--uninstall]``; returns the exit status."""
    try:
        return _uninstall() if uninstall else _install()
    except ServiceError as exc:
        print(f"sessiond: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"sessiond: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
