"""The storage interface over records read from the shared engine.

The rules (``sessiond.rules``) run against a ``View`` exactly as against
the local store: ``peek`` gives a record as it was read (or as an earlier
request of the same batch left it), ``put`` changes the view and collects
the change, for the batch to commit with a compare and set.
"""

from __future__ import annotations

from collections.abc import Iterable

from sessiond.model import Change, Record
from sessiond.rules import Rules


class View:
    """Records of one batch, and the rules in force."""

    def __init__(self, settings: Rules, records: dict[str, Record | None]) -> None:
        self.rules = settings
        self.records = records

    @classmethod
    def of(cls, settings: Rules, records: Iterable[Record]) -> View:
        return cls(settings, {r.id: r for r in records})

    def peek(self, sid: str) -> Record | None:
        # An id nobody read (a create's new random one) counts as absent:
        # the commit's compare and set checks it is.
        return self.records.get(sid)

    def put(
        self, out: list[Change], kind: str, before: Record | None, after: Record | None
    ) -> None:
        if after is not None:
            sid = after.id
        else:
            assert before is not None
            sid = before.id
        self.records[sid] = after
        out.append(Change(kind, sid, before, after))

    def shared_meta(self, meta_json: bytes) -> bytes:
        return meta_json

    def shared_ttl(self, ttl: int) -> int:
        return ttl
