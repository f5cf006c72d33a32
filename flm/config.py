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
from twisted.internet.endpoints import serverFromString

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


class SettingsError(ValueError):
    """A setting is unknown or out of range; the message names it."""


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``"2GiB"`` or ``"512 MB"``."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r}")
    unit = (m.group(2) or "").lower().removesuffix("b")
    return int(float(m.group(1)) * _UNITS[unit])


def default_data_dir(env: Mapping[str, str] = os.environ) -> str:
    if env.get("FLM_DATA_DIR"):
        return env["FLM_DATA_DIR"]
    return str(Path("~/.local/share/flm").expanduser())


def _size(value: Any, attribute: attrs.Attribute) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise SettingsError(f"{attribute.name}: {e}") from None


_SIZE_SETTING = attrs.Converter(_size, takes_field=True)


def _number(attribute: attrs.Attribute, value: Any) -> bool:
    """A number of the setting's type (an ``int`` setting takes no fractions)."""
    kinds = (int,) if attribute.type in (int, "int", "int | None") else (int, float)
    return not isinstance(value, bool) and isinstance(value, kinds)


def _positive(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not _number(attribute, value) or value <= 0:
        raise SettingsError(f"{attribute.name}: must be a positive number, got {value!r}")


def _non_negative(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not _number(attribute, value) or value < 0:
        raise SettingsError(f"{attribute.name}: must be zero or more, got {value!r}")


def _one_of(*choices: str) -> Any:
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise SettingsError(f"{attribute.name}: must be {' or '.join(choices)}, "
                                f"got {value!r}")
    return check


def _http_url(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """An http(s) URL with a host (``localhost:11434`` parses as scheme ``localhost``)."""
    if not isinstance(value, str):
        raise SettingsError(f"{attribute.name}: must be a URL, got {value!r}")
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as e:
        raise SettingsError(f"{attribute.name}: {value!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{attribute.name}: must be an http:// or https:// URL with a "
                            f"host, such as http://127.0.0.1:11434; got {value!r}")


def _endpoint(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A server endpoint description Twisted can parse (nothing listens yet)."""
    if not isinstance(value, str) or ":" not in value:
        raise SettingsError(f"{attribute.name}: must be an endpoint description such as "
                            f"tcp:8420:interface=127.0.0.1, got {value!r}")
    try:
        serverFromString(None, value)  # the reactor is only kept, not used, by parsing
    except Exception as e:  # noqa: BLE001 - each plugin raises its own kind
        raise SettingsError(f"{attribute.name}: {value!r} is not a valid endpoint "
                            f"description: {e}") from None


def _ip_address(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise SettingsError(f"{attribute.name}: must be an IP address, got {value!r}") from None


def _port(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SettingsError(f"{attribute.name}: must be a port from 1 to 65535, got {value!r}")


@attrs.frozen
class Settings:
    """Everything configurable; names are the TOML keys (see docs/configuration.md)."""

    data_dir: str = attrs.field(factory=default_data_dir)
    admin: str = attrs.field(default="tcp:8420:interface=127.0.0.1", validator=_endpoint)
    backend: str = attrs.field(default="http://127.0.0.1:11434", validator=_http_url)
    backend_kind: str = attrs.field(default="ollama", validator=_one_of("ollama", "openai"))
    # None means "the kind's default": 1 for Ollama, 4 for OpenAI-compatible servers.
    backend_max_concurrent: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive))
    # sqlite:PATH; None: <data_dir>/flm.db; postgresql://USER@HOST:PORT/DB (several nodes).
    database: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        lambda inst, attribute, value: _database(value)))
    api_host: str = attrs.field(default="127.0.0.1", validator=_ip_address)
    first_port: int = attrs.field(default=8080, validator=_port)
    max_body_bytes: int = attrs.field(default=10 * 1024 * 1024, converter=_SIZE_SETTING,
                                      validator=_positive)
    admin_max_body_bytes: int = attrs.field(default=1024 * 1024, converter=_SIZE_SETTING,
                                            validator=_positive)
    # Request bytes waiting in all APIs' queues together; past it, 503 queue_full.
    max_queued_bytes: int = attrs.field(default=256 * 1024 * 1024, converter=_SIZE_SETTING,
                                        validator=_positive)
    connect_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    # Idle backend connections close after this: under the server's own keep-alive
    # (uvicorn, hence vLLM: 5 s), or a request can race the server's close and fail.
    backend_idle_timeout_s: float = attrs.field(default=4.0, validator=_positive)
    grace_period_s: float = attrs.field(default=10.0, validator=_non_negative)
    priority_aging_s: float = attrs.field(default=10.0, validator=_positive)
    config_cache_size: int = attrs.field(default=4096, validator=_positive)
    model_cache_ttl_s: float = attrs.field(default=60.0, validator=_positive)
    health_cache_s: float = attrs.field(default=2.0, validator=_non_negative)
    # Several backends: each is probed this often (+-20%), each probe within the timeout;
    # a request that failed before its client had a byte goes to at most this many others.
    backend_probe_interval_s: float = attrs.field(default=5.0, validator=_positive)
    backend_probe_timeout_s: float = attrs.field(default=2.0, validator=_positive)
    max_retries: int = attrs.field(default=2, validator=_non_negative)
    idle_timeout_s: float = attrs.field(default=75.0, validator=_positive)
    header_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    body_timeout_s: float = attrs.field(default=60.0, validator=_positive)
    max_connections: int = attrs.field(default=4096, validator=_positive)
    request_log: bool = True
    log_flush_interval_s: float = attrs.field(default=1.0, validator=_positive)
    log_batch_rows: int = attrs.field(default=5000, validator=_positive)
    log_buffer_max_rows: int = attrs.field(default=50_000, validator=_positive)
    log_retention_days: float = attrs.field(default=30.0, validator=_positive)
    log_max_rows: int = attrs.field(default=5_000_000, validator=_positive)
    monitor_interval_s: float = attrs.field(default=60.0, validator=_positive)
    memory_limit: int = attrs.field(default=2 * 1024**3, converter=_SIZE_SETTING,
                                    validator=_positive)
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
    node_heartbeat_s: float = attrs.field(default=5.0, validator=_positive)
    node_sync_interval_s: float = attrs.field(default=0.25, validator=_positive)
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
