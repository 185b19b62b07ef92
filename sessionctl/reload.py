"""``sessionctl reload``: have the daemon read its config file again.

What SIGHUP does (and ``systemctl --user reload sessiond``), as a request
answered once the file is in force: what changed is printed, and a file
that is not valid is an error here (exit 1, the settings in force kept)
instead of a line in the daemon's log. A daemon that is not running is
exit status 3: it reads the file when it starts, and ``reload`` never
starts one.
"""

from __future__ import annotations

import msgspec

from sessionctl import render
from sessionctl.handlers import emit
from sessionctl.registry import EXIT_OK, Args, CommandFailed
from sessionctl.shutdown import connect_running
from sessiond.config import describe_reload
from sessiond.errors import Unsupported
from sessiond.paths import socket_location


def h_reload(args: Args) -> int:
    where = socket_location(args.socket)
    with connect_running(where, "reload") as c:
        try:
            done = c.reload()
        except Unsupported:
            raise CommandFailed(
                f"sessiond {c.server_version} (pid {c.server_pid}) on {where} does not know "
                f"the reload request; reload it with 'kill -HUP {c.server_pid}'"
            ) from None
    emit(args, msgspec.to_builtins(done),
         lambda: render.escape(describe_reload(done.file, done.changed, done.above)))
    return EXIT_OK
