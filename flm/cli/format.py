"""Text for a terminal: times, sizes and durations made human, aligned tables, field
listings. Pure functions: JSON values in, strings out."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Row = Sequence[object]


def short_time(value: object, seconds: bool = True) -> str:
    """``2024-05-01T12:34:56.789Z`` -> ``2024-05-01 12:34:56`` (UTC); ``-`` for none."""
    if value in (None, ""):
        return "-"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def human_bytes(count: object) -> str:
    """``1536`` -> ``1.5 KiB``; ``-`` for none."""
    if not isinstance(count, (int, float)):
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: object) -> str:
    """``75`` -> ``1m15s``, ``7300`` -> ``2h01m``, ``200000`` -> ``2d07h``."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{whole}s"


def human_ms(value: object) -> str:
    """``87`` -> ``87ms``, ``1534`` -> ``1.53s``; ``-`` for none."""
    if not isinstance(value, (int, float)):
        return "-"
    if value < 1000:
        return f"{value:.0f}ms"
    return f"{value / 1000:.2f}s" if value < 10000 else f"{value / 1000:.1f}s"


def cell(value: object) -> str:
    """A JSON value as a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_NUMBER = re.compile(r"-?\d+(\.\d+)?( ?(%|ms|s|B|[KMGT]iB|[KMGT]iB/s))?")


def _is_number(text: str) -> bool:
    """Numbers, with or without a unit (``12``, ``3.5%``, ``250ms``, ``1.2 GiB``)."""
    return text == "-" or _NUMBER.fullmatch(text) is not None


def table(headers: Sequence[str], rows: Iterable[Row]) -> str:
    """Aligned columns; a column whose cells are all numbers is right-aligned."""
    body = [[cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    right = [
        bool(body) and all(_is_number(row[i]) for row in body)
        for i in range(len(headers))
    ]
    lines = []
    for row in [list(headers), *body]:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def fixed_row(values: Sequence[str], widths: Sequence[int]) -> str:
    """One line of fixed-width columns (for output that grows, like ``logs --follow``).

    A positive width left-aligns, a negative one right-aligns; long values are cut.
    """
    parts = []
    for value, width in zip(values, widths):
        size = abs(width)
        if len(value) > size:
            value = value[: size - 1] + "~"
        parts.append(value.rjust(size) if width < 0 else value.ljust(size))
    parts.append(values[len(widths)] if len(values) > len(widths) else "")
    return "  ".join(parts).rstrip()


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """A vertical ``label  value`` listing."""
    pairs = [(label, cell(value)) for label, value in pairs]
    width = max((len(label) for label, _ in pairs), default=0)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in pairs)


def describe(data: Mapping[str, Any]) -> str:
    """Any JSON object, readably: scalars by name (``*_bytes``, ``*_s`` and
    ``*percent`` made human), lists of objects and objects of objects as tables."""
    scalars: list[tuple[str, object]] = []
    blocks: list[str] = []
    for key, value in data.items():
        label = key.replace("_", " ")
        if isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            heads = list(dict.fromkeys(k for v in value for k in v))
            rows = [[_scalar(k, v.get(k)) for k in heads] for v in value]
            blocks.append(f"{label}:\n" + _indent(table([h.upper() for h in heads], rows)))
        elif isinstance(value, Mapping) and value and all(
            isinstance(v, Mapping) for v in value.values()
        ):
            heads = list(dict.fromkeys(k for v in value.values() for k in v))
            rows = [[k, *(_scalar(h, v.get(h)) for h in heads)] for k, v in value.items()]
            blocks.append(
                f"{label}:\n" + _indent(table(["NAME", *(h.upper() for h in heads)], rows))
            )
        elif isinstance(value, Mapping):
            inner = describe(value) if value else "-"
            blocks.append(f"{label}:\n" + _indent(inner))
        else:
            scalars.append((_label(key), _scalar(key, value)))
    return "\n".join(part for part in [fields(scalars), *blocks] if part)


def _label(key: str) -> str:
    for suffix in ("_bytes", "_s", "_percent"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    return key.replace("_", " ")


def _scalar(key: str, value: object) -> str:
    if value is None or isinstance(value, bool):
        return cell(value)
    if key.endswith("_bytes"):
        return human_bytes(value)
    if key.endswith("_s") and isinstance(value, (int, float)):
        return human_duration(value)
    if key.endswith("percent") and isinstance(value, (int, float)):
        return f"{value:.1f}%"
    if key.endswith("_at"):
        return short_time(value)
    return cell(value)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
