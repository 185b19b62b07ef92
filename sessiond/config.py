"""Settings: defaults, validation, and atomic persistence of ``config.json``.

Every key can be changed live with ``sessionctl config KEY VALUE``; the new
value is validated as a whole settings object before it is applied or
written, so a bad value changes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from sessiond.errors import ConfigError
from sessiond.model import MAX_TTL

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
    # A watcher's queue in bytes of encoded events: a stalled watcher holds
    # this (and one send's worth) at most, whatever the sessions' size.
    watch_queue_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 4 * 1024 * 1024
    # Bytes that frames still arriving may hold, across all connections (a
    # frame announcing more than SMALL_FRAME_BYTES reserves its size when
    # its header arrives): past it, a new large frame is refused as busy.
    frame_buffer_bytes: Annotated[int, msgspec.Meta(ge=1024 * 1024)] = 64 * 1024 * 1024


KEYS = tuple(Settings.__struct_fields__)


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
        raise ConfigError(f"invalid config value: {exc}") from exc


def with_value(settings: Settings, key: str, value: Any) -> Settings:
    """``settings`` with one key changed, validated."""
    data = as_dict(settings)
    if key not in data:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(KEYS)}")
    data[key] = value
    try:
        return msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        # The rest was valid already, so the new value is what is wrong: name
        # it, rather than msgspec's "at `$.key`".
        why = str(exc).rsplit(" - at ", 1)[0]
        raise ConfigError(f"invalid value {value!r} for {key}: {why}") from exc


def parse_value(text: str) -> Any:
    """Command-line values: JSON when they parse as JSON, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def load(path: Path) -> Settings:
    """Read ``config.json``; absent means all defaults."""
    data = read_json_object(path, "config ")
    if data is None:
        return Settings()
    try:
        return validate(data)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


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


def save(path: Path, settings: Settings) -> None:
    """Write atomically: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = msgspec.json.format(msgspec.json.encode(settings), indent=2) + b"\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write config {path}: {exc.strerror}") from exc
