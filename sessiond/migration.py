"""The one-time migration of the legacy tool's data, at a daemon's first start.

The first time a daemon starts with an empty journal and finds the legacy
``~/.session/data.jsonl``, it imports every readable session once (and the
legacy ``default_ttl``), logs what it imported and what it could not read,
and marks the data dir so that it never runs again. The legacy files are
only ever read (docs/legacy.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sessiond import config
from sessiond.errors import SessionError
from sessiond.legacy import legacy_default_ttl, legacy_dir, read_sessions
from sessiond.model import Change, now_us
from sessiond.store import Store

log = logging.getLogger("sessiond")

MIGRATED_MARKER = "legacy-imported"


def migrate_legacy(
    store: Store, layers: config.Layers, data_dir: Path
) -> tuple[config.Layers, list[Change], Path | None]:
    """First start with an empty journal: bring ``~/.session`` across once.

    Returns the settings' layers (a legacy default_ttl goes to the config
    file), the changes to persist, and the legacy file when it
    was imported: ``mark_migrated`` must follow once the changes are on disk,
    so that a failed first commit is retried at the next start. The legacy
    files are only ever read."""
    source = legacy_dir()
    legacy_file = source / "data.jsonl"
    if len(store) or (data_dir / MIGRATED_MARKER).exists() or not legacy_file.is_file():
        return layers, [], None
    try:
        loaded = read_sessions(legacy_file)
    except OSError as exc:
        # Serving matters more than migrating, and the file can be imported
        # later; say so rather than refuse to start.
        log.error("legacy import skipped: %s; import it with 'sessionctl import %s'",
                  exc.strerror, legacy_file)
        return layers, [], None
    # The default_ttl first: legacy records with a ttl of 0 or less are
    # kept expired, with the default_ttl in force as their ttl.
    layers = _migrate_default_ttl(store, layers, source)
    result, changes = store.import_sessions(now_us(), loaded.sessions)
    for problem in loaded.problems + loaded.refused + result.reasons:
        log.warning("legacy import: %s", problem)
    log.info(
        "imported %d sessions from legacy %s (%d of them already expired, kept for "
        "expired_retention from now; %d skipped, %d unreadable lines, reported above); "
        "the legacy files are left untouched",
        result.imported, legacy_file, result.already_expired,
        result.skipped + len(loaded.refused), len(loaded.problems),
    )
    return layers, changes, legacy_file


def _migrate_default_ttl(store: Store, layers: config.Layers, source: Path) -> config.Layers:
    try:
        ttl = legacy_default_ttl(source)
    except ValueError as exc:
        log.warning("legacy import: default_ttl not imported: %s", exc)
        return layers
    if ttl is None:
        return layers
    cfg_path = layers.path
    if "default_ttl" in layers.file:
        log.info("legacy default_ttl %d not imported: %s already sets default_ttl",
                 ttl, cfg_path)
        return layers
    try:
        # That key alone: a flag or a variable of this run must not become
        # persistent config.
        config.with_value(layers.settings, "default_ttl", ttl)
        config.persist_key(cfg_path, "default_ttl", ttl)
    except SessionError as exc:
        log.warning("legacy import: default_ttl %d not imported: %s", ttl, exc)
        return layers
    log.info("imported default_ttl %d from legacy %s", ttl, source / "config.json")
    layers = layers.with_file({**layers.file, "default_ttl": ttl})
    pinned = layers.pinned_by("default_ttl")
    if pinned is not None:
        log.info("default_ttl %d is in force instead, set by %s",
                 layers.settings.default_ttl, pinned)
    store.rules.default_ttl = layers.settings.default_ttl
    return layers


def mark_migrated(data_dir: Path, legacy_file: Path) -> None:
    """The legacy import is on disk: never run it again for this data dir."""
    (data_dir / MIGRATED_MARKER).write_text(f"{legacy_file}\n")
