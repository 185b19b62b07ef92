"""The one-time migration of the legacy tool's data, at a daemon's first start.

The first time a daemon starts with an empty journal and finds the legacy
``~/.session/data.jsonl``, it imports every readable session once (and the
legacy ``default_ttl``), logs what it imported and what it could not read,
and marks the data dir so that it never runs again. The legacy files are
only ever read (docs/legacy.md).

A migration that a stop (SIGTERM, a kill, a crash) interrupts is finished at
the next start: a ``legacy-importing`` marker is made durable before the
first session reaches the journal, and only a migration wholly on disk turns
it into the ``legacy-imported`` marker. Its presence is what tells a journal
holding part of an import from one holding the user's own sessions (which
is never imported into). Importing again is safe: the sessions already in
the journal are left as they are, the rest are imported.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sessiond import config
from sessiond.diskio import atomic_write, fsync_dir
from sessiond.errors import SessionError, StartError
from sessiond.failpoints import MIGRATION_COMMITTED, failpoint
from sessiond.journal import Journal
from sessiond.legacy import Loaded, legacy_default_ttl, legacy_dir, read_sessions
from sessiond.model import DEFAULT_USER, now_us
from sessiond.paths import others_could_write
from sessiond.records import journal_lines
from sessiond.store import Store

log = logging.getLogger("sessiond")

MIGRATED_MARKER = "legacy-imported"
# Made durable before the first imported session reaches the journal, and
# renamed to MIGRATED_MARKER once the whole import is there.
BEGUN_MARKER = "legacy-importing"
# Sessions per journal write of the import: a legacy file of millions of
# lines is never turned into one buffer of journal lines.
COMMIT_SESSIONS = 10_000


def migrate_legacy(
    store: Store, layers: config.Layers, data_dir: Path, journal: Journal
) -> tuple[config.Layers, Path | None]:
    """First start with an empty journal, or a start after an interrupted
    migration: bring ``~/.session`` across, committing the imported
    sessions to ``journal``.

    Returns the settings' layers (a legacy default_ttl goes to the config
    file) and the legacy file when it was imported: ``mark_migrated`` must
    follow once whatever else the start writes is on disk. The legacy files
    are only ever read. Raises ``StartError`` when the begun marker cannot
    be written, ``JournalError``/``OSError`` as ``append_at_start`` does."""
    source = legacy_dir()
    legacy_file = source / "data.jsonl"
    begun = data_dir / BEGUN_MARKER
    resuming = begun.exists() and not (data_dir / MIGRATED_MARKER).exists()
    if not resuming and (len(store) or (data_dir / MIGRATED_MARKER).exists()):
        return layers, None
    if not legacy_file.is_file():
        if resuming:
            _abandon(begun, legacy_file, len(store), "it is no longer a file")
        return layers, None
    try:
        # Another user who could write the file could have put sessions of
        # their choosing in it (an id an application then trusts): not
        # imported, as OpenSSH reads no key file others can write.
        for path in (legacy_file, source / "config.json"):
            unsafe = _others_could_write(path)
            if unsafe is None:
                continue
            if resuming:
                _abandon(begun, legacy_file, len(store), f"{path} {unsafe}")
            else:
                log.error("legacy import skipped: %s %s, so another user could have "
                          "written it; fix that, then import it with 'sessionctl import %s'",
                          path, unsafe, legacy_file)
            return layers, None
        loaded = read_sessions(legacy_file)
    except OSError as exc:
        if resuming:
            _abandon(begun, legacy_file, len(store), exc.strerror or str(exc))
            return layers, None
        # Serving matters more than migrating, and the file can be imported
        # later; say so rather than refuse to start.
        log.error("legacy import skipped: %s; import it with 'sessionctl import %s'",
                  exc.strerror, legacy_file)
        return layers, None
    if resuming:
        log.warning("resuming the migration of legacy %s interrupted at an earlier start: "
                    "%d sessions of it are already in the journal", legacy_file, len(store))
    else:
        _begin(begun, legacy_file)
    # The default_ttl first: legacy records with a ttl of 0 or less are
    # kept expired, with the default_ttl in force as their ttl.
    layers = _migrate_default_ttl(store, layers, source)
    sessions = loaded.sessions
    present = 0
    if resuming:
        # Nobody was served since: a session in the journal is this file's,
        # imported (and perhaps expired) before the stop.
        sessions = [s for s in sessions if s.id not in store]
        present = len(loaded.sessions) - len(sessions)
    result, changes = store.import_sessions(now_us(), sessions)
    for problem in loaded.problems + loaded.refused + result.reasons:
        log.warning("legacy import: %s", problem)
    _note_rewritten(loaded)
    for start in range(0, len(changes), COMMIT_SESSIONS):
        journal.append_at_start(journal_lines(changes[start:start + COMMIT_SESSIONS]))
        failpoint(MIGRATION_COMMITTED)
    log.info(
        "imported %d sessions from legacy %s (%d of them already expired, kept for "
        "expired_retention from now; %d skipped, %d unreadable lines, reported above%s); "
        "the legacy files are left untouched",
        result.imported, legacy_file, result.already_expired,
        result.skipped + len(loaded.refused), len(loaded.problems),
        f"; {present} imported before the interruption" if resuming else "",
    )
    return layers, legacy_file


def _others_could_write(path: Path) -> str | None:
    """``paths.others_could_write``, with no file no concern. Raises
    ``OSError``."""
    try:
        return others_could_write(path)
    except FileNotFoundError:
        return None


def _note_rewritten(loaded: Loaded) -> None:
    """Say what the import made of records other than as the file has them:
    nothing of the user's data changes without a word in the log. The
    counts are the file's, as ``sessionctl import`` reports them."""
    if loaded.repeated:
        log.warning("legacy import: %d lines repeat the id of an earlier line; the last "
                    "line of each id is imported, in the place of its first", loaded.repeated)
    # The user the legacy tool gave a session created without one: no
    # session of the daemon is without one.
    if loaded.without_user:
        log.info("legacy import: %d records of the file have an empty user; the sessions "
                 "they make are user %s", loaded.without_user, DEFAULT_USER)


def _begin(begun: Path, legacy_file: Path) -> None:
    try:
        atomic_write(begun, f"{legacy_file}\n".encode())
    except OSError as exc:
        # Without it, a stop during the import would lose sessions silently.
        raise StartError(
            f"cannot record the start of the legacy migration in {begun}: {exc.strerror}"
        ) from exc


def _abandon(begun: Path, legacy_file: Path, present: int, why: str) -> None:
    """An interrupted migration that cannot be finished. The daemon serves
    from now on, so the marker goes: a later resume would bring back the
    sessions deleted meanwhile."""
    log.error("the migration of legacy %s interrupted at an earlier start cannot be "
              "finished (%s): %d sessions of it are in the journal; import the rest with "
              "'sessionctl import %s'", legacy_file, why, present, legacy_file)
    try:
        begun.unlink()
    except OSError as exc:
        raise StartError(f"cannot remove {begun}: {exc.strerror}") from exc


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
    """The legacy import is on disk: never run it again for this data dir.
    Raises ``StartError``."""
    begun, done = data_dir / BEGUN_MARKER, data_dir / MIGRATED_MARKER
    try:
        begun.replace(done)  # atomically: begun or done, never neither
        fsync_dir(data_dir)
    except OSError as exc:
        raise StartError(f"cannot mark the legacy migration done in {done}: "
                         f"{exc.strerror}") from exc
