"""Client library and CLI for sessiond.

    from sessionctl import Client
    with Client() as c:
        s = c.create(user="alice", ttl=3600, meta={"theme": "dark"})
        print(c.get(s.id).status)

    from sessionctl import AsyncClient          # asyncio or trio
    async with AsyncClient() as c:
        s = await c.create(user="alice")

The names below are imported on first use: every ``sessionctl`` run imports
this package, and ``sessionctl version`` or ``help`` need none of them (nor
does a program that uses ``Client`` need anyio, which ``AsyncClient``
brings).
"""

from __future__ import annotations

import sys

from sessiond import __version__ as __version__

# mypy takes a module-level TYPE_CHECKING as typing.TYPE_CHECKING; importing
# typing itself would cost ``sessionctl version`` a fifth of its time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from sessionctl.aclient import AsyncClient
    from sessionctl.apipeline import AsyncPipeline
    from sessionctl.awatch import AsyncWatch
    from sessionctl.client import Client
    from sessionctl.pipeline import Pending, Pipeline
    from sessionctl.results import Ack, Event, Session
    from sessiond.errors import (
        Busy,
        ClientClosed,
        Conflict,
        DaemonUnavailable,
        InternalError,
        InvalidRequest,
        ProtocolError,
        ReadOnly,
        SessionError,
        SessionExpired,
        SessionNotFound,
        SessionsDamaged,
        TooLarge,
        Unsupported,
    )
    from sessiond.protocol import (
        CleanupResult,
        CompactResult,
        ImportResult,
        StatsInfo,
    )

_HOMES = {
    "sessionctl.aclient": ("AsyncClient",),
    "sessionctl.apipeline": ("AsyncPipeline",),
    "sessionctl.awatch": ("AsyncWatch",),
    "sessionctl.client": ("Client",),
    "sessionctl.pipeline": ("Pending", "Pipeline"),
    "sessionctl.results": ("Ack", "Event", "Session"),
    "sessiond.errors": (
        "Busy",
        "ClientClosed",
        "Conflict",
        "DaemonUnavailable",
        "InternalError",
        "InvalidRequest",
        "ProtocolError",
        "ReadOnly",
        "SessionError",
        "SessionExpired",
        "SessionNotFound",
        "SessionsDamaged",
        "TooLarge",
        "Unsupported",
    ),
    "sessiond.protocol": ("CleanupResult", "CompactResult", "ImportResult", "StatsInfo"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "Ack",
    "AsyncClient",
    "AsyncPipeline",
    "AsyncWatch",
    "Busy",
    "CleanupResult",
    "Client",
    "ClientClosed",
    "CompactResult",
    "Conflict",
    "DaemonUnavailable",
    "Event",
    "ImportResult",
    "InternalError",
    "InvalidRequest",
    "Pending",
    "Pipeline",
    "ProtocolError",
    "ReadOnly",
    "Session",
    "SessionError",
    "SessionExpired",
    "SessionNotFound",
    "SessionsDamaged",
    "StatsInfo",
    "TooLarge",
    "Unsupported",
]


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(module)
    value = getattr(sys.modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
