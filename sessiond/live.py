"""The settings in force while the daemon runs, and how they change.

``Live`` holds the layers of settings (``sessiond.config``) and the
settings they make; the parts of the server read ``live.settings`` when
they need a value, so a change is in force at their next use, and those
that must act on one (the journal's fsync policy, the timers that sleep on
a setting) are told. A change comes from ``sessionctl config KEY VALUE``
(``set_key``) or a reload (SIGHUP); both go through the dispatcher's
``adopt``, which also persists what the store's rules change with them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from sessiond import config
from sessiond.errors import ConfigError, Conflict, ReadOnly
from sessiond.rules import Rules

log = logging.getLogger("sessiond.server")

Adopt = Callable[[config.Layers], Awaitable[None]]


class Live:
    """The settings in force, and whom to tell when they change."""

    def __init__(self, layers: config.Layers) -> None:
        self.layers = layers
        self.settings = layers.settings
        self._listeners: list[Callable[[config.Settings], None]] = []
        # One change of settings at a time: each reads the layers the one
        # before it left.
        self.lock = anyio.Lock()

    def listen(self, listener: Callable[[config.Settings], None]) -> None:
        """Call ``listener`` with the new settings after every change."""
        self._listeners.append(listener)

    def put(self, layers: config.Layers) -> None:
        self.layers = layers
        self.settings = layers.settings
        for listener in self._listeners:
            listener(layers.settings)


def rules_of(settings: config.Settings) -> Rules:
    """The settings the rules of sessions depend on."""
    return Rules(
        default_ttl=settings.default_ttl,
        max_lifetime=settings.max_lifetime,
        expired_retention=settings.expired_retention,
    )


async def set_key(live: Live, key: str, value: Any, adopt: Adopt) -> dict[str, Any]:
    """Validate, persist that one key atomically, then put it in force.

    Raises ``ConfigError`` (a bad key or value), ``Conflict`` (a flag or an
    environment variable sets the key, or the config file, edited by hand,
    is not valid), ``ReadOnly`` (the config file
    cannot be written, or the changes the new value makes, such as a
    lowered max_lifetime's, could not be persisted: the file and the
    settings are as they were)."""
    async with live.lock:
        new = live.layers.with_key(key, value)
        value = getattr(new.settings, key)
        path = live.layers.path
        before = await anyio.to_thread.run_sync(config.persist_key, path, key, value)
        try:
            await adopt(new)
        except ReadOnly as exc:
            await anyio.to_thread.run_sync(config.restore, path, before)
            raise ReadOnly(f"{key} not changed: {exc}") from exc
        log.info("config %s set to %r", key, value)
        return {key: value}


@dataclass(frozen=True)
class Reloaded:
    """What a reload did: the file read, the settings it changed (key ->
    [before, after]) and the keys a layer above the file still sets
    (``config.above_file``)."""

    path: str
    changed: dict[str, list[Any]]
    above: dict[str, str]

    def __str__(self) -> str:
        return config.describe_reload(self.path, self.changed, self.above)


Above = Callable[[config.Layers], Awaitable[config.Layers]]


async def reload(live: Live, adopt: Adopt, above: Above | None = None) -> Reloaded:
    """Read the config file again and put it in force (SIGHUP, ``sessionctl
    reload``): flags and environment variables still win, and in shared
    mode the namespace's settings (``above`` lays them over the file's).
    Raises ``Conflict`` (the file, or the namespace's settings, are not
    valid: nothing changes, the message says so) or ``ReadOnly`` as
    ``set_key`` does."""
    async with live.lock:
        before = live.settings
        try:
            layers = await anyio.to_thread.run_sync(config.reload, live.layers)
            if above is not None:
                layers = await above(layers)
        except ConfigError as exc:
            raise Conflict(f"config not reloaded, the settings in force are kept: {exc}") from exc
        await adopt(layers)
        return Reloaded(str(layers.path), config.changes(before, live.settings),
                        config.above_file(live.layers))
