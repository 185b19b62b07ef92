"""Client library and CLI for sessiond.

    from sessionctl import Client
    with Client() as c:
        s = c.create(user="alice", ttl=3600, meta={"theme": "dark"})
        print(c.get(s.id).status)

The names below are imported on first use: every ``sessionctl`` run imports
this package, and ``sessionctl version`` or ``help`` need none of them.
"""

from __future__ import annotations

import sys

# mypy takes a module-level TYPE_CHECKING as typing.TYPE_CHECKING; importing
# typing itself would cost ``sessionctl version`` a fifth of its time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from sessionctl.client import Client
    from sessionctl.pipeline import Pending, Pipeline
    from sessiond.errors import (
        Busy,
        Conflict,
        DaemonUnavailable,
        InternalError,
        InvalidRequest,
        ProtocolError,
        ReadOnly,
        SessionError,
        SessionExpired,
        SessionNotFound,
        TooLarge,
        Unsupported,
    )
    from sessiond.model import Session
    from sessiond.protocol import (
        CleanupResult,
        CompactResult,
        Event,
        ImportResult,
        StatsInfo,
    )

_HOMES = {
    "sessionctl.client": ("Client",),
    "sessionctl.pipeline": ("Pending", "Pipeline"),
    "sessiond.errors": (
        "Busy",
        "Conflict",
        "DaemonUnavailable",
        "InternalError",
        "InvalidRequest",
        "ProtocolError",
        "ReadOnly",
        "SessionError",
        "SessionExpired",
        "SessionNotFound",
        "TooLarge",
        "Unsupported",
    ),
    "sessiond.model": ("Session",),
    "sessiond.protocol": ("CleanupResult", "CompactResult", "Event", "ImportResult", "StatsInfo"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "Busy",
    "CleanupResult",
    "Client",
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
