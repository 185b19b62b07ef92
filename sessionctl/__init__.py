"""Client library and CLI for sessiond.

    from sessionctl import Client
    with Client() as c:
        s = c.create(user="alice", ttl=3600, meta={"theme": "dark"})
        print(c.get(s.id).status)
"""

from sessionctl.client import Client, Pending, Pipeline
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
from sessiond.protocol import CleanupResult, CompactResult, Event, ImportResult, StatsInfo

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
