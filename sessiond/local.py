"""The local engine: sessions in this process, persisted in its journal.

One machine's daemon, as it has always been: the in-memory store, the
journal and its compactions, and the expiry timer, wired together. The
server (``sessiond.server``) holds an engine and knows only what every
engine offers (``server.Engine``); the shared engine over Redis or Valkey
is the other (``sessiond.shared``).
"""

from __future__ import annotations

from typing import Any

import anyio.abc

from sessiond.config import Settings
from sessiond.dispatch import Dispatcher
from sessiond.events import Hub
from sessiond.journal import Journal
from sessiond.live import Live
from sessiond.protocol import StatsInfo
from sessiond.store import Store
from sessiond.timers import Compactor, ExpiryTimer
from sessiond.trim import Trimmer


class LocalEngine:
    """The store, its journal and their timers."""

    def __init__(self, store: Store, journal: Journal, live: Live) -> None:
        self.store = store
        self.journal = journal
        self.hub = Hub()
        self.dispatcher = Dispatcher(store, journal, self.hub, live, _no_stats)
        self.expiry = ExpiryTimer(store, self.dispatcher.commit)
        self.compactor = Compactor(store, journal, live)
        self.trimmer = Trimmer(store)
        self.dispatcher.noticers += [self.expiry.notice, self.compactor.notice,
                                     self.trimmer.notice]
        # A failed write turns the journal read-only: start what ends that
        # now, not when the compactor's timer next fires.
        journal.readonly.on_failure = self.compactor.wake
        live.listen(self._settings_changed)

    def _settings_changed(self, settings: Settings) -> None:
        self.journal.policy = settings.fsync
        self.expiry.wake()
        self.compactor.wake()

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self.journal.run_flusher)
        tg.start_soon(self.journal.run_syncer)
        tg.start_soon(self.expiry.run)
        tg.start_soon(self.compactor.run)
        tg.start_soon(self.trimmer.run)

    async def figures(self, now: int) -> dict[str, Any]:
        return {
            **self.store.stats(now),
            **self.expiry.figures(),
            **self.journal.figures(),
            **self.compactor.figures(),
            "watchers": len(self.hub.watchers),
        }

    async def stop(self) -> None:
        """Everything written so far on disk."""
        await self.journal.sync()

    def sessions(self) -> int:
        return len(self.store)

    def describe(self) -> str:
        return f"journal {self.journal.path}, fsync {self.journal.policy}"


async def _no_stats(now: int) -> StatsInfo:
    raise AssertionError("the server gives the dispatcher its stats")
