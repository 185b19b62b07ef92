"""Taking a secret out of the daemon's command line, as others see it.

Every user of the machine can read a process's command line (``ps``,
``/proc/PID/cmdline``), so a password in ``--backend redis://:PASSWORD@...``
would be theirs for the daemon's whole life. The kernel shows the bytes the
command line occupies in the process's own memory (from ``arg_start`` to
``arg_end``, fields 48 and 49 of ``/proc/self/stat``); overwriting the
password there hides it from then on, as MySQL's client does with
``-pPASSWORD``. It is visible until then (the interpreter's start): the
log says so, and where to put the password instead.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("sessiond")

# Fields of /proc/PID/stat after the command's name (which ends at the last
# ")"): the first of them is field 3, so field N is at N - 3.
_ARG_START, _ARG_END = 48 - 3, 49 - 3


def hide(secret: str) -> bool:
    """Overwrite every copy of ``secret`` in this process's command line
    with ``x``; whether it was found there. Raises ``OSError`` when
    /proc cannot say where the command line is."""
    import ctypes

    wanted = os.fsencode(secret)
    if not wanted:
        return False
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    start, end = int(fields[_ARG_START]), int(fields[_ARG_END])
    area = (ctypes.c_char * (end - start)).from_address(start)
    found = False
    at = area.raw.find(wanted)
    while at >= 0:
        ctypes.memmove(start + at, b"x" * len(wanted), len(wanted))
        found = True
        at = area.raw.find(wanted, at + len(wanted))
    return found


def hide_backend_password(url: str) -> None:
    """Hide the password of ``url`` (``--backend``) from the command line,
    and warn that it was there; a failure to hide it is logged, and the
    daemon goes on (it cannot be worse than not trying)."""
    from urllib.parse import urlsplit

    try:
        secret = urlsplit(url).password
    except ValueError:
        return  # not a URL: parsing it later says why
    if not secret:
        return
    try:
        hidden = hide(secret)
    except (OSError, ValueError, IndexError) as exc:
        log.warning("the backend password in --backend's URL could not be hidden from the "
                    "command line (%s): every user of this machine can read it with ps; give "
                    "it with --backend-password-file or SESSIOND_BACKEND_PASSWORD", exc)
        return
    if hidden:
        log.warning("the backend password was given in --backend's URL: every user of this "
                    "machine could read it with ps until the daemon hid it at start; give it "
                    "with --backend-password-file or SESSIOND_BACKEND_PASSWORD")
