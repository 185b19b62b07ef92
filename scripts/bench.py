#!/usr/bin/env python3
"""The project's one benchmark: every speed and memory target, each measured
against an anchor taken in the same run on the same machine.

    python scripts/bench.py [--quick] [--rounds N] [--json FILE]
                            [--only CASE[,CASE...]] [--no-redis] [--allow-slow-anchor]

Run it with the project's virtual environment (the ``sessiond`` and
``sessionctl`` executables are looked up next to ``sys.executable``); for
the Redis anchor, install the extra: ``pip install -e '.[bench]'`` (redis-py
with hiredis). It starts its own ``sessiond`` processes and, when
``redis-server`` and redis-py are installed, its own ``redis-server``
processes, all on temporary Unix sockets and directories, and stops every
one of them on exit, Ctrl-C or error. It writes nowhere but its temporary
directory (and the --json file).

Anchors: Redis (``appendonly yes``, ``appendfsync everysec``; a second
server with ``appendfsync always`` for the fsync case) driven by redis-py
with hiredis; a bare ``python -c "import msgspec, socket"`` for the CLI's
start-up; and the legacy tool's published figures for the shim, which are
reference figures, not measured here. Every figure is the median over
interleaved rounds (ours, anchor, ours, anchor, ...) with the lowest and
highest round as its spread; a target the spread straddles is UNSURE.

Exit status: 0 when no judged target failed, 1 when one failed or a case
errored, 2 on bad usage or a refused anchor, 130 when interrupted. Speed
and memory targets live here only, never in the unit tests. The code is the
package beside this file, ``benchkit``.
"""

from __future__ import annotations

import sys

from benchkit.main import main

if __name__ == "__main__":
    sys.exit(main())
