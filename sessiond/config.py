"""Settings: defaults, layers, validation, and atomic persistence of
``config.json``.

The settings in force are layered, as PostgreSQL's are: defaults, then the
config file, then the environment (``SESSIOND_<KEY>``), then command-line
flags (``--fsync``); each layer wins over those before it, at start and at
every reload. Every key can be changed live with ``sessionctl config KEY
VALUE``: the new value is validated as a whole settings object before it is
applied or written, so a bad value changes nothing, and only that key is
written to the file (a flag or a variable given for one run never becomes
permanent). A key that a flag or a variable sets cannot be changed that
way: for the daemon's life, they win.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from sessiond.errors import ConfigError, Conflict, ReadOnly
from sessiond.limits import MAX_TTL

Seconds = Annotated[int, msgspec.Meta(ge=0, le=MAX_TTL)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every setting, with its default. Durations are in seconds."""

    default_ttl: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL)] = 3600
    max_lifetime: Seconds = 0
    expired_retention: Seconds = 7 * 86400
    fsync: Literal["always", "everysec", "no"] = "everysec"
    compact_growth_percent: Positive = 100
    # Redis's auto-aof-rewrite-min-size: a small journal rewritten at every
    # doubling means a compaction every few thousand writes under load, each
    # with its fsyncs and thread work; 64 MiB replays in a fraction of a second.
    compact_min_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1024 * 1024
    compact_interval: Seconds = 3600
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    frame_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    # How long a client may leave its replies unread before it is dropped.
    send_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    idle_timeout: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 600.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    max_reply_queue_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 4 * 1024 * 1024
    watch_queue: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    # Shared mode: events the engine keeps for watchers that fall behind or
    # come back after their daemon restarted (its stream's MAXLEN, about).
    event_retention: Annotated[int, msgspec.Meta(ge=10, le=100_000_000)] = 100_000
    # Shared mode: a change is acknowledged once this many of the engine's
    # replicas have it (Redis's WAIT), or refused as of unknown outcome
    # after replicas_timeout seconds. 0: acknowledged once the engine's
    # primary has it (replication is asynchronous, as Redis's is).
    replicas: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    replicas_timeout: Annotated[float, msgspec.Meta(ge=0.001, le=60)] = 1.0
    # A watcher's queue in bytes of encoded events: a stalled watcher holds
    # this (and one send's worth) at most, whatever the sessions' size.
    watch_queue_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 4 * 1024 * 1024
    # Bytes that frames still arriving may hold, across all connections (a
    # frame announcing more than SMALL_FRAME_BYTES reserves its size when
    # its header arrives): past it, a new large frame is refused as busy.
    frame_buffer_bytes: Annotated[int, msgspec.Meta(ge=1024 * 1024)] = 64 * 1024 * 1024


KEYS = tuple(Settings.__struct_fields__)
# Settings that mean something only in shared mode, and would be a silent
# no-op on the local journal: refused there, with why.
SHARED_ONLY = {
    "replicas": "the local journal has no replicas to wait for",
    "replicas_timeout": "the local journal has no replicas to wait for",
}


DEFAULTS = Settings()


def local_refusal(settings: Settings) -> str | None:
    """Why ``settings`` cannot be in force in local mode (``None``: they
    can): a shared-mode key set to anything but its default."""
    for key, why in SHARED_ONLY.items():
        if getattr(settings, key) != getattr(DEFAULTS, key):
            return (
                f"{key} is a setting of shared mode (sessiond --backend): {why}; "
                f"leave it at {getattr(DEFAULTS, key)!r}"
            )
    return None
ENV_PREFIX = "SESSIOND_"
# Where a setting in force came from, lowest layer first.
DEFAULT, FILE, ENV, FLAG = "default", "file", "env", "flag"
# In shared mode the file's place is taken by the namespace's settings,
# which the engine holds for every daemon of the namespace.
NAMESPACE = "namespace"


def env_name(key: str) -> str:
    """The environment variable that overrides ``key``."""
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


@dataclass(frozen=True)
class Layers:
    """The settings in force (``settings``) and the layers they are made of,
    lowest first: the config file's own keys (as the file holds them), in
    shared mode the namespace's (``namespace``, which the engine holds for
    every daemon of it; ``None`` in local mode), the environment's and the
    command line's."""

    path: Path
    settings: Settings = field(default_factory=Settings)
    file: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    namespace: dict[str, Any] | None = None

    def source(self, key: str) -> str:
        if key in self.flags:
            return FLAG
        if key in self.env:
            return ENV
        if self.namespace is not None and key in self.namespace:
            return NAMESPACE
        return FILE if key in self.file else DEFAULT

    def sources(self) -> dict[str, str]:
        """The source of every setting in force."""
        return {key: self.source(key) for key in KEYS}

    def pinned_by(self, key: str) -> str | None:
        """The flag or variable that sets ``key`` for this daemon's life."""
        if key in self.flags:
            return f"the command-line flag {flag_name(key)}"
        if key in self.env:
            return f"the environment variable {env_name(key)}"
        return None

    def _with(self, file: dict[str, Any], namespace: dict[str, Any] | None) -> Layers:
        settings = merge({**file, **(namespace or {})}, self.env, self.flags)
        return Layers(self.path, settings, file, self.env, self.flags, namespace)

    def with_file(self, file: dict[str, Any]) -> Layers:
        """These layers with another config file's keys (a reload)."""
        return self._with(file, self.namespace)

    def with_namespace(self, namespace: dict[str, Any]) -> Layers:
        """These layers with the namespace's settings as the engine now
        holds them (shared mode)."""
        return self._with(self.file, namespace)

    def with_key(self, key: str, value: Any) -> Layers:
        """These layers with ``key`` set where ``config KEY VALUE`` sets it
        (the namespace's settings in shared mode, else the config file's),
        validated. Raises ``ConfigError`` for an unknown key or a bad value,
        ``Conflict`` when a flag or a variable sets the key."""
        settings = with_value(self.settings, key, value)
        pinned = self.pinned_by(key)
        if pinned is not None:
            where = self.path.name if self.namespace is None else "the namespace's settings"
            raise Conflict(
                f"{key} is set by {pinned}, which wins over {where} for this "
                f"daemon's life; restart sessiond without it to change {key} here"
            )
        value = getattr(settings, key)
        if self.namespace is None:
            return self._with({**self.file, key: value}, None)
        return self._with(self.file, {**self.namespace, key: value})


def layered(path: Path, environ: Mapping[str, str], flags: dict[str, Any]) -> Layers:
    """The settings of a daemon that starts: defaults < ``path`` < environment
    < ``flags``. Raises ``ConfigError`` naming the file or the variable that
    is wrong."""
    env = read_env(environ)
    for key, value in flags.items():
        with_value(Settings(), key, value)
    file = read_file(path)
    return Layers(path, merge(file, env, flags), file, env, flags)


def pending(layers: Layers) -> str | None:
    """Why the config file, as it now is, is not what is in force (``None``:
    it is): edited (or written by ``config`` beside a hand edit) since it
    was read, or no longer readable or valid. For ``config``'s listing, as
    systemctl warns of a unit file changed on disk; a small file, read in
    a moment."""
    try:
        on_disk = read_file(layers.path)
    except ConfigError as exc:
        return f"{exc}; the settings read before stay in force"
    if on_disk == layers.file:
        return None
    # In shared mode the namespace's settings sit above the file's.
    above = "" if layers.namespace is None else " (the namespace's settings still win over it)"
    return (f"config {layers.path} has changed since the daemon read it; reload it "
            f"(sessionctl reload, or kill -HUP {os.getpid()}) to put the file in force{above}")


def reload(layers: Layers) -> Layers:
    """``layers`` with the config file read again (SIGHUP, ``sessionctl
    reload``): the environment and the flags still win. Raises
    ``ConfigError``."""
    return layers.with_file(read_file(layers.path))


def changes(before: Settings, after: Settings) -> dict[str, list[Any]]:
    """The settings that differ: key -> [value before, value after]."""
    old = as_dict(before)
    return {key: [old[key], value] for key, value in as_dict(after).items()
            if old[key] != value}


def above_file(layers: Layers) -> dict[str, str]:
    """What keeps a reload from putting the file's value of a key in force:
    every key a flag or a variable sets (for the daemon's life), and each
    key the file sets that the namespace's settings set too (shared mode);
    key -> that layer."""
    return {key: source for key, source in layers.sources().items()
            if source in (FLAG, ENV) or (source == NAMESPACE and key in layers.file)}


def describe_reload(path: str, changed: Mapping[str, list[Any]], above: Mapping[str, str]) -> str:
    """A reload in one line, for the log and ``sessionctl reload``, as
    PostgreSQL logs one: whether the edit took is seen at once."""
    what = ", ".join(f"{key} {_shown(was)} -> {_shown(now)}" for key, (was, now) in changed.items())
    text = f"reloaded {path}: {what or 'no setting changed'}"
    pinned = ", ".join(f"{key} ({source})" for key, source in above.items() if source != NAMESPACE)
    if pinned:
        text += f"; still set by flag or environment: {pinned}"
    shared = ", ".join(key for key, source in above.items() if source == NAMESPACE)
    if shared:
        text += (f"; the namespace's settings win over the file's: {shared} "
                 f"(change them with sessionctl config)")
    return text


def merge(file: dict[str, Any], env: dict[str, Any], flags: dict[str, Any]) -> Settings:
    return validate({**file, **env, **flags})


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Each ``SESSIOND_<KEY>`` set (an empty one counts as unset), its value
    read as ``config KEY VALUE`` reads one (``read_value``: a duration for
    the settings in seconds), and validated. Raises ``ConfigError`` naming
    the variable."""
    values: dict[str, Any] = {}
    for key in KEYS:
        name = env_name(key)
        raw = environ.get(name, "")
        if not raw:
            continue
        try:
            value = read_value(key, raw)
            values[key] = getattr(with_value(Settings(), key, value, typed=raw), key)
        except ConfigError as exc:
            raise ConfigError(f"environment variable {name}={raw!r}: {exc}") from exc
    return values


def read_file(path: Path) -> dict[str, Any]:
    """The config file's own settings, validated (``{}`` when there is
    none); its start keys (``START_KEYS``) are left to ``start_options``.
    Raises ``ConfigError`` naming the file."""
    data = read_config(path)
    if data is None:
        return {}
    settings = {k: v for k, v in data.items() if k not in START_KEYS}
    try:
        validate(settings)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc
    return settings


# Read once at start, not settings in force: where the sessions are.
START_KEYS = ("backend", "namespace", "backend_password_file")


def start_options(path: Path) -> dict[str, str]:
    """The config file's start keys (``backend``, ``namespace``,
    ``backend_password_file``), each a string. Raises ``ConfigError``."""
    data = read_config(path) or {}
    found = {k: data[k] for k in START_KEYS if k in data}
    for key, value in found.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config {path}: {key} must be a non-empty string")
    return found


def persist_key(path: Path, key: str, value: Any) -> dict[str, Any] | None:
    """Set ``key`` in the config file, leaving its other keys as they are
    there now (a hand edit not yet reloaded is kept). Returns what the file
    held before (``None``: there was none), for ``restore``. Raises
    ``Conflict`` (the file, edited by hand, is not valid: nothing is
    written), ``ReadOnly`` (it cannot be written)."""
    # The value was valid; the file is what is wrong, so this is a refusal
    # (exit 1), not a usage error: ``config KEY VALUE`` itself was right.
    try:
        before = read_config(path)
    except ConfigError as exc:
        raise Conflict(f"{exc}; fix the file first (the setting is unchanged)") from exc
    if before is not None:
        try:
            validate({k: v for k, v in before.items() if k not in START_KEYS})
        except ConfigError as exc:
            # Written back as it is, the file would stop the next start.
            raise Conflict(
                f"config {path}: {exc}; fix the file first (the setting is unchanged)"
            ) from exc
    save(path, {**(before or {}), key: value})
    return before


def restore(path: Path, before: dict[str, Any] | None) -> None:
    """Put back what ``persist_key`` replaced. Raises ``ReadOnly``."""
    if before is not None:
        save(path, before)
        return
    from sessiond.diskio import fsync_dir

    try:
        path.unlink(missing_ok=True)
        # As a write is made durable: else a power cut could bring back
        # the file, and the setting refused with it, at the next start.
        fsync_dir(path.parent)
    except OSError as exc:
        raise ReadOnly(f"cannot remove config {path}: {exc.strerror}") from exc


def as_dict(settings: Settings) -> dict[str, Any]:
    return msgspec.to_builtins(settings)  # type: ignore[no-any-return]


def validate(data: dict[str, Any]) -> Settings:
    """A whole settings object from a mapping, or ``ConfigError``."""
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; known keys: {', '.join(KEYS)}"
        )
    try:
        return msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        # Every key is valid or not on its own: the first that is not says
        # what it takes, in with_value's words.
        for key, value in data.items():
            with_value(Settings(), key, value)
        raise ConfigError(f"invalid config: {exc}") from exc  # a rule across keys


def with_value(
    settings: Settings, key: str, value: Any, typed: str | None = None
) -> Settings:
    """``settings`` with one key changed, validated. Raises ``ConfigError``
    for an unknown key, or naming the key, the value (as ``typed``, the text
    it was read from, when given) and what it takes."""
    data = as_dict(settings)
    if key not in data:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(KEYS)}")
    data[key] = value
    try:
        return msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        # The rest was valid already, so the new value is what is wrong.
        raise ConfigError(f"{_invalid(key, value, typed)}{key} takes {takes(key)}") from exc


def as_typed(message: str, key: str, value: Any, typed: str) -> str:
    """``message`` quoting ``typed``, the text that ``value`` was read from,
    where it is ``with_value``'s refusal of ``value`` for ``key``: a daemon
    quotes the value it was sent, and ``1e3`` reaches it as 1000.0. Any
    other message (and the refusal of a string, sent as it was typed) is
    returned as it is."""
    said = _invalid(key, value)
    if isinstance(value, str) or not message.startswith(said):
        return message
    return _invalid(key, value, typed) + message[len(said):]


def _invalid(key: str, value: Any, typed: str | None = None) -> str:
    """How a refusal of ``value`` for ``key`` begins."""
    return f"invalid value {_shown(value) if typed is None else _written(typed)} for {key}: "


def _shown(value: Any) -> str:
    """A value as the user wrote it: JSON (``true``, ``null``, ``{"a": 1}``),
    a string in quotes as before."""
    if isinstance(value, str):
        return repr(value)
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, ValueError, OverflowError):
        return repr(value)


def _written(text: str) -> str:
    """A value as typed: as it is when it reads as JSON (``1e3``, ``NaN``,
    which ``_shown`` would give as ``1000.0`` and ``null``), else in quotes,
    as ``_shown`` quotes a string."""
    try:
        json.loads(text)
    except ValueError:
        return repr(text)
    return text.strip()


# What a number setting counts (a key not named here and not ``*_bytes`` is
# a count), and what its 0 means where that is special.
_UNITS = {
    "default_ttl": "seconds", "max_lifetime": "seconds", "expired_retention": "seconds",
    "compact_interval": "seconds", "frame_timeout": "seconds", "send_timeout": "seconds",
    "idle_timeout": "seconds", "replicas_timeout": "seconds", "compact_growth_percent": "percent",
}
# The settings counted in seconds: ``config KEY VALUE`` and ``SESSIOND_<KEY>``
# also take a duration for them (``2h``, ``7d``), as whole seconds.
SECONDS_KEYS = tuple(key for key, unit in _UNITS.items() if unit == "seconds")
_ZERO = {"max_lifetime": "none", "expired_retention": "until cleanup"}


def takes(key: str) -> str:
    """What ``key`` takes, for people: its values (``'always', 'everysec'
    or 'no'``), or its kind of number and bounds (``a whole number of
    seconds from 1 to 3153600000``), read from ``Settings`` itself."""
    from msgspec import inspect

    struct = inspect.type_info(Settings)
    assert isinstance(struct, inspect.StructType)
    info = next(f.type for f in struct.fields if f.name == key)
    if isinstance(info, inspect.LiteralType):
        shown = [repr(v) for v in info.values]
        return f"{', '.join(shown[:-1])} or {shown[-1]}"
    assert isinstance(info, (inspect.IntType, inspect.FloatType)), info
    unit = _UNITS.get(key, "bytes" if key.endswith("_bytes") else "")
    text = "a whole number" if isinstance(info, inspect.IntType) else "a number"
    if unit:
        text += f" of {unit}"
    if info.gt is not None:
        text += f" above {info.gt:g}" + ("" if info.le is None else f", up to {info.le:g}")
    elif info.ge is not None:
        text += f" from {info.ge}" + (" on" if info.le is None else f" to {info.le}")
    elif info.le is not None:
        text += f" up to {info.le}"
    zero = _ZERO.get(key)
    return text if zero is None else f"{text} (0: {zero})"


def parse_value(text: str) -> Any:
    """Command-line values: JSON when they parse as JSON, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_value(key: str, text: str) -> Any:
    """A value typed for ``key`` (``config KEY VALUE``, ``SESSIOND_<KEY>``):
    JSON when it reads as JSON, else, for a setting in seconds, a duration
    (``2h``) in whole seconds, else the string (which validation refuses or
    takes). Raises ``ConfigError`` for a setting in seconds given neither a
    number nor a duration."""
    value = parse_value(text)
    if key not in SECONDS_KEYS or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    ):
        return value
    # Imported here: only a duration needs the parser.
    from sessiond.timeparse import DURATION_FORMS, parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise ConfigError(
            f"invalid value {text!r} for {key}: not a number of seconds or a duration; "
            f"use {DURATION_FORMS}"
        ) from None


def load(path: Path) -> Settings:
    """Read ``config.json``; absent means all defaults."""
    data = read_config(path)
    if data is None:
        return Settings()
    try:
        return validate(data)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def read_config(path: Path) -> dict[str, Any] | None:
    """The config file's JSON object (``None``: there is none), once it is
    known to be the user's alone (``trusted``). Raises ``ConfigError``."""
    trusted(path)
    return read_json_object(path, "config ")


def trusted(path: Path) -> None:
    """Raises ``ConfigError`` unless the config file at ``path`` (if any)
    is the user's or root's, writable by nobody else, in directories that
    nobody else can write (``paths.safe_ancestors``). Its ``backend`` says
    where the sessions go and ``backend_password_file`` what is read as a
    password: another user who could write it could have every session
    sent to a server of theirs. OpenSSH refuses a ``~/.ssh/config``
    writable by others for the same reason."""
    from sessiond.paths import others_could_write

    try:
        why = others_could_write(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    if why is None:
        return
    raise ConfigError(
        f"config {path} {why}: whoever can write it could send your sessions to a "
        f"server of theirs (its backend key), so it is not read"
    )


def read_json_object(path: Path, what: str = "") -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when there is no such file.
    Raises ``ConfigError`` saying why a file that is there cannot be used
    (``what`` names the file's role in the message)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}{path}: {exc.strerror}") from exc
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{what}{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what}{path} must hold a JSON object")
    return data


def save(path: Path, settings: Settings | dict[str, Any]) -> None:
    """Write atomically (``sessiond.diskio``); raises ``ReadOnly`` when it cannot be written."""
    # Imported here: ``sessionctl config`` reads this module, and needs no
    # tempfile to do it.
    from sessiond.diskio import atomic_write
    from sessiond.paths import make_private_dirs

    data = msgspec.json.format(msgspec.json.encode(settings), indent=2) + b"\n"
    try:
        make_private_dirs(path.parent)
        atomic_write(path, data)
    except OSError as exc:
        # Not the value's fault (a full disk, a read-only one): refused as a
        # write the journal cannot take is, exit 1, not a usage error.
        raise ReadOnly(f"cannot write config {path}: {exc.strerror}; the setting is "
                       f"unchanged") from exc
