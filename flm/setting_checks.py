"""The checks a setting's value goes through: each raises :class:`SettingsError` with one
line that names the setting (``flm: <setting>: <what is wrong>`` at start-up)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
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


def _to_size(value: Any, attribute: attrs.Attribute) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise SettingsError(f"{attribute.name}: {e}") from None


SIZE = attrs.Converter(_to_size, takes_field=True)


def number(attribute: attrs.Attribute, value: Any) -> bool:
    """A number of the setting's type (an ``int`` setting takes no fractions)."""
    kinds = (int,) if attribute.type in (int, "int", "int | None") else (int, float)
    return not isinstance(value, bool) and isinstance(value, kinds)


def positive(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not number(attribute, value) or value <= 0:
        raise SettingsError(f"{attribute.name}: must be a positive number, got {value!r}")


def non_negative(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not number(attribute, value) or value < 0:
        raise SettingsError(f"{attribute.name}: must be zero or more, got {value!r}")


def one_of(*choices: str) -> Any:
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise SettingsError(f"{attribute.name}: must be {' or '.join(choices)}, "
                                f"got {value!r}")
    return check


def http_url(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
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


def endpoint(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A server endpoint description Twisted can parse (nothing listens yet)."""
    if not isinstance(value, str) or ":" not in value:
        raise SettingsError(f"{attribute.name}: must be an endpoint description such as "
                            f"tcp:8420:interface=127.0.0.1, got {value!r}")
    try:
        serverFromString(None, value)  # the reactor is only kept, not used, by parsing
    except Exception as e:  # noqa: BLE001 - each plugin raises its own kind
        raise SettingsError(f"{attribute.name}: {value!r} is not a valid endpoint "
                            f"description: {e}") from None


def ip_address(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise SettingsError(f"{attribute.name}: must be an IP address, got {value!r}") from None


def port(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SettingsError(f"{attribute.name}: must be a port from 1 to 65535, got {value!r}")
