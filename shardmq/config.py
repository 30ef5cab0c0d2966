"""Broker configuration: one msgspec Struct field per setting, loaded from TOML.

Owns: the settings, their defaults and their validation; the ``[store]`` and
``[supervisor]``, ``[auth]``, ``[tls]``, ``[amqp1]``, ``[management]`` and ``[prometheus]``
sections are defined beside their users (``shardmq.store.settings``, ``workers.settings``,
``shardmq.auth.settings``, ``shardmq.net.tls_settings``, ``shardmq.amqp1.settings``,
``shardmq.management``, ``shardmq.prometheus``) and included here. ``config/shardmq.toml``
documents every field with its default; keep the two in step.

Invariants: ``load_config`` either returns a fully validated ``Config`` or raises
``ConfigError`` whose message names the file and the offending setting.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from shardmq.amqp1.settings import AMQP1Settings
from shardmq.auth.settings import AuthSettings
from shardmq.management import ManagementSettings
from shardmq.net.tls_settings import TLSSettings
from shardmq.prometheus import PrometheusSettings
from shardmq.store.settings import StoreSettings
from workers.settings import SupervisorConfig

Port = Annotated[int, Meta(ge=0, le=65535)]


class ConfigError(Exception):
    pass


class ServerConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "0.0.0.0"
    port: Port = 5672
    # 0 = one worker per core
    workers: Annotated[int, Meta(ge=0, le=1024)] = 0
    data_dir: str = "./shardmq-data"
    log_level: str = "info"
    # "text", or "json": one JSON object per line (journald, Loki)
    log_format: str = "text"
    shutdown_timeout: Annotated[float, Meta(ge=0)] = 5.0
    memory_high_watermark: Annotated[float, Meta(gt=0, le=1.0)] = 0.4
    # bytes (int) or a size with a unit ("512MiB", "2GB"); 0 = use the fraction above
    memory_high_watermark_absolute: int | str = 0
    # client connections the whole broker holds at once (0 = no limit)
    max_connections: Annotated[int, Meta(ge=0)] = 0
    # connections one address may hold before connection.open-ok, per worker (0 = no limit)
    max_unauthenticated_per_address: Annotated[int, Meta(ge=0)] = 256
    # false: no plain AMQP listener, TLS only (RabbitMQ's ``listeners.tcp = none``)
    tcp_listener: bool = True
    # "malloc" (glibc: memory of a connection flood is given back) or "pymalloc"
    # (CPython's: a few percent less CPU per message, keeps part of a flood's memory)
    allocator: str = "malloc"

    def __post_init__(self) -> None:
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"unknown log_level {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f'log_format must be "text" or "json", not {self.log_format!r}')
        parse_size(self.memory_high_watermark_absolute)  # a bad value fails the load
        if self.allocator not in ("malloc", "pymalloc"):
            raise ValueError(f'allocator must be "malloc" or "pymalloc", not {self.allocator!r}')

    @property
    def memory_limit_absolute(self) -> int:
        """``memory_high_watermark_absolute`` in bytes (0: not set)."""
        return parse_size(self.memory_high_watermark_absolute)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "512MiB", "2GB", "1073741824" (RabbitMQ's
    units: kB/MB/GB are powers of 1000, KiB/MiB/GiB and K/M/G of 1024)."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    text = value.strip()
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ")
    unit = text[len(digits) :].strip().lower()
    try:
        number = float(digits)
    except ValueError:
        raise ValueError(f"size {value!r} is not a number with a unit (e.g. 512MiB)") from None
    if unit not in _UNITS or number < 0:
        raise ValueError(f"size {value!r}: unit must be one of B, kB, MB, GB, KiB, MiB, GiB")
    return int(number * _UNITS[unit])


class AMQPConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    frame_max: Annotated[int, Meta(ge=4096, le=2**31 - 1)] = 131072
    channel_max: Annotated[int, Meta(ge=1, le=65535)] = 2047
    heartbeat: Annotated[int, Meta(ge=0, le=65535)] = 60
    max_message_size: Annotated[int, Meta(ge=1, le=512 * 1024 * 1024)] = 128 * 1024 * 1024
    handshake_timeout: Annotated[float, Meta(gt=0)] = 10.0
    # ms a delivery may stay unacked before its channel is closed (406), as RabbitMQ's
    # consumer_timeout; 0 = never. A queue's x-consumer-timeout argument overrides it.
    consumer_timeout: Annotated[int, Meta(ge=0)] = 1_800_000


class UserConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    password: str
    tags: list[str] = msgspec.field(default_factory=list)


def _default_users() -> list[UserConfig]:
    return [UserConfig(name="guest", password="guest", tags=["administrator"])]


class Config(Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    amqp: AMQPConfig = msgspec.field(default_factory=AMQPConfig)
    users: list[UserConfig] = msgspec.field(default_factory=_default_users)
    vhosts: list[str] = msgspec.field(default_factory=lambda: ["/"])
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    management: ManagementSettings = msgspec.field(default_factory=ManagementSettings)
    prometheus: PrometheusSettings = msgspec.field(default_factory=PrometheusSettings)
    tls: TLSSettings = msgspec.field(default_factory=TLSSettings)
    amqp1: AMQP1Settings = msgspec.field(default_factory=AMQP1Settings)

    def __post_init__(self) -> None:
        if not self.server.tcp_listener and not self.tls.enabled:
            raise ValueError("server.tcp_listener = false needs a TLS listener (tls.certfile)")
        if self.tls.enabled and self.server.tcp_listener and self.tls.port == self.server.port:
            if self.tls.port:
                raise ValueError(f"tls.port {self.tls.port} is also server.port: choose another")


def load_config(path: str | os.PathLike[str] | None = None, **overrides: object) -> Config:
    """Load ``path`` (or defaults) and apply ``overrides`` of the server section
    (None values are ignored)."""
    data: dict[str, Any] = {}  # parsed TOML: msgspec.convert checks it against Config
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: invalid TOML: {exc}") from exc
    server = dict(data.get("server", {}))
    server.update({k: v for k, v in overrides.items() if v is not None})
    if server:
        data["server"] = server
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
