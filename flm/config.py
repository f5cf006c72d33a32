"""Settings: read once from the TOML file and the command line, validated, then passed down."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs

from flm.setting_checks import (SIZE, SettingsError, endpoint, http_url,
                                ip_address, non_negative, one_of, port, positive)

__all__ = ["Settings", "SettingsError", "default_data_dir", "load_settings"]


def default_data_dir(env: Mapping[str, str] = os.environ) -> str:
    if env.get("FLM_DATA_DIR"):
        return env["FLM_DATA_DIR"]
    return str(Path("~/.local/share/flm").expanduser())


@attrs.frozen
class Settings:
    """Everything configurable; names are the TOML keys (see docs/configuration.md)."""

    data_dir: str = attrs.field(factory=default_data_dir)
    admin: str = attrs.field(default="tcp:8420:interface=127.0.0.1", validator=endpoint)
    backend: str = attrs.field(default="http://127.0.0.1:11434", validator=http_url)
    backend_kind: str = attrs.field(default="ollama", validator=one_of("ollama", "openai"))
    # None means "the kind's default": 1 for Ollama, 4 for OpenAI-compatible servers.
    backend_max_concurrent: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive))
    # sqlite:PATH; None: <data_dir>/flm.db; postgresql://USER@HOST:PORT/DB (several nodes).
    database: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        lambda inst, attribute, value: _database(value)))
    api_host: str = attrs.field(default="127.0.0.1", validator=ip_address)
    first_port: int = attrs.field(default=8080, validator=port)
    max_body_bytes: int = attrs.field(default=10 * 1024 * 1024, converter=SIZE,
                                      validator=positive)
    admin_max_body_bytes: int = attrs.field(default=1024 * 1024, converter=SIZE,
                                            validator=positive)
    # Request bytes waiting in all APIs' queues together; past it, 503 queue_full.
    max_queued_bytes: int = attrs.field(default=256 * 1024 * 1024, converter=SIZE,
                                        validator=positive)
    connect_timeout_s: float = attrs.field(default=5.0, validator=positive)
    # Idle backend connections close after this: under the server's own keep-alive
    # (uvicorn, hence vLLM: 5 s), or a request can race the server's close and fail.
    backend_idle_timeout_s: float = attrs.field(default=4.0, validator=positive)
    grace_period_s: float = attrs.field(default=10.0, validator=non_negative)
    priority_aging_s: float = attrs.field(default=10.0, validator=positive)
    config_cache_size: int = attrs.field(default=4096, validator=positive)
    model_cache_ttl_s: float = attrs.field(default=60.0, validator=positive)
    health_cache_s: float = attrs.field(default=2.0, validator=non_negative)
    # Several backends: each is probed this often (+-20%), each probe within the timeout;
    # a request that failed before its client had a byte goes to at most this many others.
    backend_probe_interval_s: float = attrs.field(default=5.0, validator=positive)
    backend_probe_timeout_s: float = attrs.field(default=2.0, validator=positive)
    max_retries: int = attrs.field(default=2, validator=non_negative)
    idle_timeout_s: float = attrs.field(default=75.0, validator=positive)
    header_timeout_s: float = attrs.field(default=10.0, validator=positive)
    body_timeout_s: float = attrs.field(default=60.0, validator=positive)
    max_connections: int = attrs.field(default=4096, validator=positive)
    request_log: bool = True
    log_flush_interval_s: float = attrs.field(default=1.0, validator=positive)
    log_batch_rows: int = attrs.field(default=5000, validator=positive)
    log_buffer_max_rows: int = attrs.field(default=50_000, validator=positive)
    log_retention_days: float = attrs.field(default=30.0, validator=positive)
    log_max_rows: int = attrs.field(default=5_000_000, validator=positive)
    monitor_interval_s: float = attrs.field(default=60.0, validator=positive)
    memory_limit: int = attrs.field(default=2 * 1024**3, converter=SIZE,
                                    validator=positive)
    # Host names the admin API answers to besides loopback and its own interface
    # (a DNS-rebinding guard); ["*"] answers to any.
    admin_allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    # Let the admin API listen beyond loopback without TLS (an ssl: endpoint).
    admin_insecure: bool = False
    # PEM certificate and private key (file paths) for API ports beyond loopback; an
    # API's own tls_cert / tls_key win. Without either, such an API must say insecure.
    tls_cert: str | None = None
    tls_key: str | None = None
    # GET /metrics without the admin token also beyond loopback (it names every API).
    metrics_public: bool = False
    # Several nodes (docs/operations.md): this process's name (None: <hostname>:<admin
    # port>), how often it says it is up, how often it checks for others' changes.
    node_name: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        lambda inst, attribute, value: _node_name(value)))
    node_heartbeat_s: float = attrs.field(default=5.0, validator=positive)
    node_sync_interval_s: float = attrs.field(default=0.25, validator=positive)
    # Open API ports with SO_REUSEPORT (Linux): several FLM processes share them.
    reuse_port: bool = False

    def __attrs_post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert: tls_cert and tls_key go together; set both or "
                                "neither")
        kind, interface = admin_listener(self.admin)
        if kind in ("tcp", "tcp6") and not _loopback(interface) and not self.admin_insecure:
            raise SettingsError(
                f"admin: {self.admin!r} listens beyond loopback without TLS; use an ssl: "
                "endpoint, or set admin_insecure = true if something else protects it")

    @property
    def admin_on_loopback(self) -> bool:
        """Only this machine reaches the admin endpoint (loopback or a UNIX socket)."""
        kind, interface = admin_listener(self.admin)
        return kind == "unix" or _loopback(interface)

    @property
    def admin_hosts(self) -> frozenset[str]:
        """Host header values the admin API accepts (lowercase, without the port)."""
        _, interface = admin_listener(self.admin)
        hosts = {"localhost", "127.0.0.1", "[::1]", *(h.lower() for h in self.admin_allowed_hosts)}
        if interface:
            hosts.add(f"[{interface}]" if ":" in interface else interface)
        return frozenset(hosts)

    @property
    def backend_concurrency(self) -> int:
        if self.backend_max_concurrent:
            return self.backend_max_concurrent
        return 1 if self.backend_kind == "ollama" else 4

    @property
    def node(self) -> str:
        """This node's name: ``node_name``, else ``<hostname>:<admin port>``."""
        if self.node_name:
            return self.node_name
        kind, _ = admin_listener(self.admin)
        parts = self.admin.split(":")
        where = parts[1] if kind in ("tcp", "tcp6", "ssl") and len(parts) > 1 else kind
        return f"{socket.gethostname()}:{where}"

    @property
    def db_path(self) -> Path:
        """The SQLite file: ``database = "sqlite:PATH"``, else ``<data_dir>/flm.db``."""
        if self.database and not self.on_postgresql:
            return Path(self.database.removeprefix("sqlite:")).expanduser()
        return Path(self.data_dir) / DB_FILE

    @property
    def on_postgresql(self) -> bool:
        return bool(self.database) and self.database.startswith(_POSTGRESQL)  # type: ignore[union-attr]

    @property
    def store_database(self) -> Path | str:
        """What the store opens: the SQLite file, or the PostgreSQL URL."""
        return self.database if self.on_postgresql else self.db_path  # type: ignore[return-value]


#: The database's file name in the data dir; ``flm.sqlite3`` is what versions before
#: 0.2 called it (renamed at start, see :func:`flm.startup.adopt_old_database`).
DB_FILE = "flm.db"


_POSTGRESQL = ("postgresql://", "postgres://")


def _database(value: Any) -> None:
    shape = "must be sqlite:PATH or postgresql://USER@HOST:PORT/DB"
    if not isinstance(value, str):
        raise SettingsError(f"database: {shape}, got {value!r}")
    if value.startswith(_POSTGRESQL):
        if not re.fullmatch(r"[A-Za-z0-9_]+", urlsplit(value).path.lstrip("/")):
            raise SettingsError(f"database: {shape}: the URL names no database")
        return
    if not value.startswith("sqlite:") or not value.removeprefix("sqlite:"):
        raise SettingsError(f"database: {shape}, got {value!r}")


def _node_name(value: Any) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.isprintable():
        raise SettingsError(f"node_name: must be 1-128 printable characters, got {value!r}")


def admin_listener(description: str) -> tuple[str, str]:
    """(endpoint kind, interface) of a server endpoint description; '' = all interfaces."""
    parts = re.split(r"(?<!\\):", description)
    interface = ""
    for part in parts[1:]:
        if part.startswith("interface="):
            interface = part[len("interface="):].replace("\\:", ":")
    return parts[0].lower(), interface


def _loopback(interface: str) -> bool:
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


_FIELDS = {f.name for f in attrs.fields(Settings)}
# What a value read from TOML must be, by the field's annotation; sizes take a number or
# a string such as "2GiB" (their converter checks them).
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "str | None": ((str,), "a string"),
    "int": ((int,), "a whole number"),
    "int | None": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
}


def _check_type(name: str, value: Any) -> None:
    """A TOML value of the wrong kind is one line naming the setting, never a traceback."""
    field = attrs.fields_dict(Settings)[name]
    if field.converter is not None and name != "admin_allowed_hosts":
        return
    if name == "admin_allowed_hosts":
        if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
            raise SettingsError(f"{name}: must be a list of host names, got {value!r}")
        return
    kinds, said = _KINDS[str(field.type)]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise SettingsError(f"{name}: must be {said}, got {value!r}")


def load_settings(cli: Mapping[str, Any], config_file: str | None = None) -> Settings:
    """Merge the TOML file (if any) under the command line's values and validate."""
    values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as f:
                values.update(tomllib.load(f))
        except OSError as e:
            raise SettingsError(f"config: cannot read {config_file}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"config: {config_file} is not valid TOML: {e}") from None
    values.update({k: v for k, v in cli.items() if v is not None})
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown setting")
    for name, value in values.items():
        _check_type(name, value)
    try:
        return Settings(**values)
    except SettingsError:
        raise
    except (TypeError, ValueError) as e:
        raise SettingsError(str(e)) from None
