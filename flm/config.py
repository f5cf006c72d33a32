"""Settings: read once from the TOML file and the command line, validated, then passed down."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

import attrs

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


def _positive(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SettingsError(f"{attribute.name}: must be a positive number, got {value!r}")


def _non_negative(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SettingsError(f"{attribute.name}: must be zero or more, got {value!r}")


@attrs.frozen
class Settings:
    """Everything configurable; names are the TOML keys (see docs/configuration.md)."""

    data_dir: str = attrs.field(factory=default_data_dir)
    admin: str = "tcp:8420:interface=127.0.0.1"
    backend: str = "http://127.0.0.1:11434"
    backend_kind: str = attrs.field(
        default="ollama", validator=attrs.validators.in_(("ollama", "openai")))
    # 0 means "the kind's default": 1 for Ollama, 4 for OpenAI-compatible servers.
    backend_max_concurrent: int = attrs.field(default=0, validator=_non_negative)
    api_host: str = "127.0.0.1"
    first_port: int = attrs.field(default=8080, validator=_positive)
    max_body_bytes: int = attrs.field(default=10 * 1024 * 1024, converter=parse_size,
                                      validator=_positive)
    admin_max_body_bytes: int = attrs.field(default=1024 * 1024, converter=parse_size,
                                            validator=_positive)
    connect_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    grace_period_s: float = attrs.field(default=10.0, validator=_non_negative)
    priority_aging_s: float = attrs.field(default=10.0, validator=_positive)
    config_cache_size: int = attrs.field(default=4096, validator=_positive)
    model_cache_ttl_s: float = attrs.field(default=60.0, validator=_positive)
    health_cache_s: float = attrs.field(default=2.0, validator=_non_negative)
    idle_timeout_s: float = attrs.field(default=75.0, validator=_positive)
    header_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    body_timeout_s: float = attrs.field(default=60.0, validator=_positive)
    max_connections: int = attrs.field(default=512, validator=_positive)
    log_flush_interval_s: float = attrs.field(default=1.0, validator=_positive)
    log_batch_rows: int = attrs.field(default=500, validator=_positive)
    log_buffer_max_rows: int = attrs.field(default=50_000, validator=_positive)
    log_retention_days: float = attrs.field(default=30.0, validator=_positive)
    log_max_rows: int = attrs.field(default=5_000_000, validator=_positive)
    monitor_interval_s: float = attrs.field(default=60.0, validator=_positive)
    memory_limit: int = attrs.field(default=2 * 1024**3, converter=parse_size,
                                    validator=_positive)

    @property
    def backend_concurrency(self) -> int:
        if self.backend_max_concurrent:
            return self.backend_max_concurrent
        return 1 if self.backend_kind == "ollama" else 4

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "flm.sqlite3"


_FIELDS = {f.name for f in attrs.fields(Settings)}


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
    try:
        return Settings(**values)
    except SettingsError:
        raise
    except (TypeError, ValueError) as e:
        raise SettingsError(str(e)) from None
