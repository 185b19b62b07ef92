"""Shared mode: the sessions of many machines in Redis or Valkey.

With ``--backend URL`` each host's daemon keeps its socket, its protocol and
every command, and stores a namespace's sessions in the engine instead of
its journal: ``SharedEngine`` is to ``sessiond.local.LocalEngine`` what the
engine is to the journal. Its parts: the link to the engine
(``sessiond.shared.link``), the namespace's keys and scripts
(``engine``, ``scripts``, ``hashes``), the dispatcher that runs the rules on
what a batch read (``dispatch``, ``view``, ``scans``), the events' stream
(``watch``) and timed expiry under a lease (``reaper``).

Imported only when a backend is configured: redis-py is an optional
dependency (``pip install '.[shared]'``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio.abc

from sessiond import config
from sessiond.errors import (
    BackendUnavailable,
    ConfigError,
    InternalError,
    ReadOnly,
    SessionError,
    StartError,
)
from sessiond.live import Live
from sessiond.shared import scans
from sessiond.shared.dispatch import SharedDispatcher
from sessiond.shared.engine import LAYOUT, SharedStore
from sessiond.shared.link import Link
from sessiond.shared.reaper import Reaper
from sessiond.shared.url import Backend
from sessiond.shared.watch import NamespaceReader

log = logging.getLogger("sessiond.shared")

# Settings are read again this often, besides on every change's event: a
# change is in force everywhere within about a second even if its event
# was missed (the stream trimmed, the daemon reconnecting).
SETTINGS_POLL = 1.0
# Policies under which the engine may drop keys to make room: sessions
# would vanish without a trace. (volatile-* drop only keys with a time to
# live, which sessions do not have.)
EVICTING = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
# The engine's maxmemory-policy and persistence are looked at again this
# often (seconds): an evicting policy set on the server after the start is
# said, and stats shows the persistence in force.
POLICY_POLL = 5.0


class SharedEngine:
    """The namespace's store in the engine, and this daemon's part of it."""

    def __init__(self, store: SharedStore, live: Live) -> None:
        self.store = store
        self.live = live
        self.dispatcher = SharedDispatcher(store, live)
        self.reaper = Reaper(store, live)
        self.reader = NamespaceReader(store, self._reload, self.reaper.hint)
        store.on_deadline = self.reaper.hint
        live.listen(self._settings_changed)
        self._follow(live.settings)
        self._sessions = 0
        self.appendfsync: str | None = None
        self._unreadable: str | None = None  # why the settings cannot be read, said once
        self._unknown: list[str] = []  # keys of the namespace's settings left out, said once
        self.evicting: str | None = None  # the engine's evicting policy, said once

    def _settings_changed(self, settings: config.Settings) -> None:
        self._follow(settings)
        self.reaper.wake()

    def _follow(self, settings: config.Settings) -> None:
        """The settings the engine's parts read as they go."""
        self.store.maxlen = settings.event_retention
        self.store.link.replicas = settings.replicas
        self.store.link.replicas_timeout = settings.replicas_timeout

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self.reaper.run)
        tg.start_soon(self.reader.run)
        tg.start_soon(self._poll_settings)

    async def _poll_settings(self) -> None:
        polled = time.monotonic()
        while True:
            await anyio.sleep(SETTINGS_POLL)
            await self._reload()
            if time.monotonic() - polled >= POLICY_POLL:
                polled = time.monotonic()
                await self._check_policy()

    async def _check_policy(self) -> None:
        """Say (once while it lasts) that the engine was set to a
        maxmemory-policy that can evict sessions after this daemon
        started, which refuses to start on one: sessions would vanish
        without a trace when its memory is full. The persistence that
        ``stats`` shows is read again too (``CONFIG SET appendonly``)."""
        try:
            policy = await self.store.engine_setting("maxmemory-policy")
            await self.read_persistence()
        except SessionError:
            return  # the engine is away, or refuses CONFIG: said elsewhere, or at start
        if policy in EVICTING and policy != self.evicting:
            log.error("the shared engine %s now runs with maxmemory-policy %s, which can evict "
                      "sessions to make room (they would vanish without a trace); set it back "
                      "to noeviction on the server", self.store.link.node, policy)
            self.evicting = policy
        elif policy not in EVICTING and self.evicting is not None:
            log.info("the shared engine %s runs with maxmemory-policy %s again: sessions are "
                     "not evicted", self.store.link.node, policy)
            self.evicting = None

    async def _reload(self) -> None:
        """The namespace's settings read again (another daemon changed one,
        or the poll). One this daemon cannot read (a bad value written in
        the engine by hand, the config key of another type) is said, once,
        and the settings in force are kept: it must not stop the daemon,
        nor with it every daemon of the namespace, which all read it. A key
        it does not know (a newer sessiond's) is said once and left out."""
        try:
            layers, unknown = await scans.namespace_layers(self.store, self.live.layers)
        except BackendUnavailable:
            return  # the engine is away: the reaper says so, and requests fail
        except SessionError as exc:
            if self._unreadable != str(exc):
                log.error("settings not reloaded, those in force kept: %s", exc)
                self._unreadable = str(exc)
            return
        if self._unreadable is not None:
            log.info("the namespace's settings are readable again")
            self._unreadable = None
        self._said_unknown(unknown)
        if layers != self.live.layers:
            await self.dispatcher.adopt(layers)

    def _said_unknown(self, unknown: list[str]) -> None:
        if unknown and unknown != self._unknown:
            log.warning(_UNKNOWN, self.store.config, ", ".join(unknown))
        self._unknown = unknown

    async def read_persistence(self) -> None:
        """The engine's persistence, as ``stats`` shows it. Raises
        ``SessionError`` when the engine cannot be asked."""
        appendonly = await self.store.engine_setting("appendonly")
        fsync = await self.store.engine_setting("appendfsync")
        self.appendfsync = "none (appendonly no)" if appendonly == "no" else fsync

    async def figures(self, now: int) -> dict[str, Any]:
        """Stats: the namespace's counts from the engine, this daemon's
        figures, and the engine's health (the counts are zeros while it is
        away: stats answers whatever the engine does)."""
        store = self.store
        shown = f"{store.link.node} namespace {store.namespace}"
        base: dict[str, Any] = {
            **self.reaper.figures(),
            "journal_path": shown,
            "journal_bytes": 0,
            "fsync": f"engine: appendfsync {self.appendfsync or 'unknown'}",
            "compacted_bytes": 0,
            "last_compaction_at": None,
            "last_compaction_seconds": None,
            "compactions": 0,
            "write_errors": 0,
            "watchers": len(self.dispatcher.watchers),
            "backend": shown,
        }
        try:
            _, counters, users, soon = await store.stats()
        except SessionError as exc:
            return {**base, **_no_counts(), "read_only": None, "backend_ok": False,
                    "backend_error": str(exc)}
        total = counters.get("total", 0)
        active = counters.get("active", 0)
        self._sessions = total
        return {
            **base,
            "total_sessions": total,
            "active": active,
            "expired": total - active,
            "unique_users": users,
            "average_ttl_seconds": round(counters.get("ttl_sum", 0) / total, 1) if total else 0.0,
            "due_next_minute": soon,
            "expiries_done": counters.get("expiries", 0),
            "purges_done": counters.get("purges", 0),
            "read_only": store.link.refusing,
            "backend_ok": True,
            "backend_error": None,
        }

    async def stop(self) -> None:
        await self.reaper.release()
        await self.store.link.close()

    def sessions(self) -> int:
        return self._sessions

    def describe(self) -> str:
        return f"shared engine {self.store.link.node}, namespace {self.store.namespace}"


_UNKNOWN = ("the namespace's settings (%s) hold keys this sessiond does not know, left out "
            "(a newer sessiond's?): %s")


def _no_counts() -> dict[str, Any]:
    return {
        "total_sessions": 0, "active": 0, "expired": 0, "unique_users": 0,
        "average_ttl_seconds": 0.0, "due_next_minute": 0, "expiries_done": 0,
        "purges_done": 0,
    }


async def _check_layout(store: SharedStore) -> None:
    """Refuse a namespace whose keys are laid out otherwise than this
    sessiond reads them."""
    try:
        layout = await store.layout()
    except ReadOnly as exc:
        # A new namespace on an engine refusing writes: nothing to read
        # otherwise, and every write will say why.
        log.warning("the namespace's layout is not marked: %s", exc)
        return
    if layout != LAYOUT:
        raise StartError(
            f"the namespace {store.namespace} on the shared engine {store.link.node} holds "
            f"sessions in layout {layout} of the keys, and this sessiond reads layout "
            f"{LAYOUT}: run the sessiond that wrote it to export them, and import them into "
            f"a new namespace"
        )


async def open_engine(backend: Backend, namespace: str, layers: config.Layers) -> SharedEngine:
    """Reach the engine, check that it keeps what it is given, and read the
    namespace's settings. Raises ``StartError`` saying what is wrong."""
    for key in scans.ENGINE_OWNED:
        pinned = layers.pinned_by(key)
        if pinned is not None:
            raise StartError(
                f"{key} is refused in shared mode ({pinned}): the shared engine persists the "
                f"sessions, by its own {scans.ENGINE_OWNED[key]}; set that on the server"
            )
    store = SharedStore(Link(backend, "sd:{" + namespace + "}:counters"), namespace)
    try:
        await store.link.locate()
        policy = await store.engine_setting("maxmemory-policy")
        if policy in EVICTING:
            raise StartError(
                f"the shared engine {store.link.node} runs with maxmemory-policy {policy}, "
                f"which can evict sessions to make room; set it to noeviction (or a "
                f"volatile-* policy) on the server"
            )
        await _check_layout(store)
        if policy is None:
            log.warning("the shared engine %s does not say its maxmemory-policy (CONFIG GET "
                        "refused): make sure it cannot evict keys", store.link.node)
        found, unknown = await scans.namespace_layers(store, layers)
        live = Live(found)
        ignored = sorted(k for k in scans.ENGINE_OWNED if k in layers.file)
        if ignored:
            log.warning("%s: %s have no effect in shared mode (the engine persists the "
                        "sessions by its own settings)", layers.path, ", ".join(ignored))
        engine = SharedEngine(store, live)
        engine._said_unknown(unknown)
        await engine.read_persistence()
    except BackendUnavailable as exc:
        await store.link.close()
        raise StartError(str(exc)) from exc
    except (ConfigError, InternalError) as exc:
        # A bad value of the namespace's settings, a key of it holding
        # another type (the link's words name it): one line, not a trace.
        await store.link.close()
        raise StartError(str(exc)) from exc
    log.info("sessions are in the shared engine %s, namespace %s", store.link.node, namespace)
    return engine
