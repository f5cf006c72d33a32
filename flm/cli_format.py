"""Text rendering for the ``flm`` command: tables, times, sizes and pull progress.

Everything here is pure (strings in, strings out) except the two progress views,
which write to the stream they are given.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

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


# -- pull progress ---------------------------------------------------------------


def percent_of(state: Mapping[str, Any]) -> float | None:
    """The state's percent, or one computed from ``completed``/``total``; none while
    the total is unknown (0)."""
    if state.get("total") in (0, 0.0):
        return None
    if isinstance(state.get("percent"), (int, float)):
        return float(state["percent"])
    done, total = state.get("completed"), state.get("total")
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        return 100.0 * done / total
    return None


def label_of(state: Mapping[str, Any]) -> str:
    return str(state.get("status_line") or f"pulling {state.get('name', '')}".strip())


_LONGEST_TAIL = len("100%  1023.9 MiB / 1023.9 MiB  1023.9 MiB/s  ETA 23h59m")


def render_progress(state: Mapping[str, Any], width: int = 80) -> str:
    """One progress line, at most ``width - 1`` characters:
    ``label  [#####-----]  45%  1.2 GiB / 2.6 GiB  12.3 MiB/s  ETA 1m52s``."""
    label = label_of(state)
    percent = percent_of(state)
    if percent is None:
        return label[: width - 1]
    tail = [f"{percent:3.0f}%"]
    if isinstance(state.get("total"), (int, float)) and state["total"]:
        tail.append(f"{human_bytes(state.get('completed') or 0)} / {human_bytes(state['total'])}")
    if isinstance(state.get("speed_bps"), (int, float)) and state["speed_bps"] > 0:
        tail.append(f"{human_bytes(state['speed_bps'])}/s")
    if isinstance(state.get("eta_s"), (int, float)) and percent < 100:
        tail.append(f"ETA {human_duration(state['eta_s'])}")
    rest = "  ".join(tail)
    longest = max(width // 3, 12)
    label = label if len(label) <= longest else label[: longest - 1] + "~"
    # Sized for the longest tail, so the bar does not jump as speed and ETA change.
    bar_width = max(min(width - 1 - len(label) - _LONGEST_TAIL - 4 - 2, 40), 10)
    filled = round(bar_width * min(max(percent, 0.0), 100.0) / 100)
    bar = "[" + "#" * filled + "-" * (bar_width - filled) + "]"
    return f"{label}  {bar}  {rest}"[: width - 1]


class RateMeter:
    """Fills in ``speed_bps`` and ``eta_s`` when the server does not send them."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._start: tuple[float, float, str] | None = None

    def fill(self, state: dict[str, Any]) -> dict[str, Any]:
        done, total = state.get("completed"), state.get("total")
        if not isinstance(done, (int, float)) or not isinstance(total, (int, float)):
            return state
        now, label = self._clock(), label_of(state)
        if self._start is None or self._start[2] != label or done < self._start[1]:
            self._start = (now, done, label)
            return state
        elapsed = now - self._start[0]
        if elapsed >= 1 and "speed_bps" not in state:
            state["speed_bps"] = (done - self._start[1]) / elapsed
        speed = state.get("speed_bps")
        if "eta_s" not in state and isinstance(speed, (int, float)) and speed > 0:
            state["eta_s"] = max(total - done, 0) / speed
        return state


class TtyProgress:
    """A single line redrawn in place with ``\\r``."""

    def __init__(self, stream: TextIO, width: int) -> None:
        self._stream = stream
        self._width = width
        self._drawn = False

    def update(self, state: Mapping[str, Any]) -> None:
        self._stream.write("\r" + render_progress(state, self._width) + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


class LineProgress:
    """Plain lines for logs and pipes: one per status change and per 10%."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last: tuple[str, int] | None = None

    def update(self, state: Mapping[str, Any]) -> None:
        label, percent = label_of(state), percent_of(state)
        step = -1 if percent is None else int(percent // 10)
        if self._last is not None and self._last[0] == label and step <= self._last[1]:
            return
        self._last = (label, step)
        line = label
        if percent is not None:
            line += f": {percent:.0f}%"
            if isinstance(state.get("total"), (int, float)) and state["total"]:
                done = human_bytes(state.get("completed") or 0)
                line += f" ({done} / {human_bytes(state['total'])})"
        self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        pass


# -- admin API objects -------------------------------------------------------------

_API_FIELDS = [
    ("name", "name"), ("id", "id"), ("status", "status"), ("host", "host"),
    ("port", "port"), ("insecure", "insecure"),
    ("model", "model"), ("key_prefix", "key prefix"), ("max_concurrent", "max concurrent"),
    ("max_queue", "max queue"), ("queue_timeout_s", "queue timeout"),
    ("upstream_timeout_s", "upstream timeout"), ("rate_limit_rpm", "rate limit"),
    ("priority", "priority"), ("created_at", "created"), ("updated_at", "updated"),
    ("last_used_at", "last used"),
]  # fmt: skip
_SECRET = "key"


def _api_value(key: str, value: object) -> object:
    if key.endswith("_at"):
        return "never" if value is None and key == "last_used_at" else short_time(value)
    if key.endswith("_s") and isinstance(value, (int, float)):
        return f"{value:g} s"
    if key == "rate_limit_rpm":
        return "none" if value is None else f"{value}/min"
    return value


def api_details(api: Mapping[str, Any]) -> str:
    """Every field of an API object, known ones first, the key never."""
    known = [(label, _api_value(key, api.get(key))) for key, label in _API_FIELDS if key in api]
    named = {key for key, _ in _API_FIELDS} | {_SECRET}
    extra = [(k.replace("_", " "), _api_value(k, v)) for k, v in api.items() if k not in named]
    return fields(known + extra)


def api_list(page: Mapping[str, Any]) -> str:
    items = page.get("items") or []
    if not items:
        return "No APIs. Create one with: flm apis create NAME --model MODEL"
    rows = [
        [a.get("name"), a.get("id"), a.get("status"), _host(a.get("host")),
         a.get("port"), a.get("model"), a.get("key_prefix"),
         _api_value("last_used_at", a.get("last_used_at"))]
        for a in items
    ]  # fmt: skip
    text = table(["NAME", "ID", "STATUS", "HOST", "PORT", "MODEL", "KEY", "LAST USED"], rows)
    total = page.get("total")
    if isinstance(total, int) and total > len(items):
        text += f"\n({len(items)} of {total} APIs)"
    return text


def _host(host: object) -> str:
    return "-" if host is None else f"[{host}]" if ":" in str(host) else str(host)


def key_notice(key: object) -> str:
    return f"\n    {key}\n\nThis key will not be shown again: store it now."


def api_created(api: Mapping[str, Any]) -> str:
    where = f"running on port {api.get('port')}" if api.get("status") == "running" else (
        f"{api.get('status', 'stopped')} (port {api.get('port')})"
    )
    head = f"Created API {api.get('name')} (id {api.get('id')}), {where}. Its key:"
    return head + "\n" + key_notice(api.get(_SECRET))


def api_key_rotated(api: Mapping[str, Any]) -> str:
    name = api.get("name") or api.get("id") or "the API"
    return f"New key for API {name} (the old one no longer works):\n" + key_notice(
        api.get(_SECRET)
    )


def api_state(api: Mapping[str, Any] | None, fallback: str) -> str:
    if not api or "status" not in api:
        return fallback
    port = f" on port {api.get('port')}" if api["status"] == "running" else ""
    return f"API {api.get('name')} is {api['status']}{port}."


# -- logs, metrics, models, status ----------------------------------------------------

LOG_HEADERS = ["TIME", "STATUS", "METHOD", "PATH", "TOTAL", "TTFB", "QUEUE", "TOKENS", "ERROR"]
_LOG_WIDTHS = [19, -6, 6, 28, -7, -7, -7, -11]


def log_header() -> str:
    return fixed_row(LOG_HEADERS, _LOG_WIDTHS)


def log_line(row: Mapping[str, Any]) -> str:
    prompt, completion = row.get("prompt_tokens"), row.get("completion_tokens")
    tokens = "-" if prompt is None and completion is None else f"{cell(prompt)}/{cell(completion)}"
    values = [
        short_time(row.get("created_at")), cell(row.get("status")), cell(row.get("method")),
        cell(row.get("path")), human_ms(row.get("response_ms")), human_ms(row.get("ttfb_ms")),
        human_ms(row.get("queue_ms")), tokens, cell(row.get("error")) if row.get("error") else "",
    ]  # fmt: skip
    return fixed_row(values, _LOG_WIDTHS)


def metrics_table(data: Mapping[str, Any]) -> str:
    buckets = data.get("buckets") or []
    if not buckets:
        return "No requests in this range."
    rows = []
    for b in buckets:
        rate = b.get("error_rate")
        rows.append([
            short_time(b.get("start"), seconds=False), b.get("request_count"),
            "-" if rate is None else f"{100 * rate:.1f}%", human_ms(b.get("avg_response_ms")),
            human_ms(b.get("p95_response_ms")), human_ms(b.get("p95_ttfb_ms")),
            b.get("prompt_tokens"), b.get("completion_tokens"),
        ])  # fmt: skip
    heads = ["START (UTC)", "REQUESTS", "ERRORS", "AVG", "P95", "P95 TTFB", "PROMPT TOK",
             "COMPL TOK"]  # fmt: skip
    bucket = human_duration(data.get("bucket_s")) if data.get("bucket_s") else "?"
    return f"One row per {bucket} with requests.\n" + table(heads, rows)


def models_table(data: Mapping[str, Any]) -> str:
    models = data.get("models") or []
    heads = ["NAME", "SIZE", "PARAMS", "QUANT", "MODIFIED"]
    rows = []
    for m in models:
        details = m.get("details") if isinstance(m.get("details"), Mapping) else {}
        rows.append([
            m.get("name") or m.get("id"), human_bytes(m.get("size")),
            details.get("parameter_size"), details.get("quantization_level"),
            short_time(m.get("modified_at"), seconds=False),
        ])  # fmt: skip
    keep = [i for i in range(len(heads)) if i == 0 or any(cell(r[i]) != "-" for r in rows)]
    text = table([heads[i] for i in keep], [[r[i] for i in keep] for r in rows])
    if not models:
        text = "The backend has no models. Pull one with: flm models pull NAME"
    if data.get("stale"):
        text += (
            "\nStale: the backend cannot be reached; this list was fetched at "
            f"{short_time(data.get('fetched_at'))} UTC."
        )
    return text


def status_text(url: str, health: Mapping[str, Any], system: Mapping[str, Any] | None) -> str:
    backend = health.get("backend") or {}
    memory = health.get("memory") or {}
    rss, limit = memory.get("rss_bytes"), memory.get("limit_bytes")
    lines = [
        f"FLM at {url}: {health.get('status', 'unknown')}",
        fields([
            ("backend", "reachable" if backend.get("reachable") else "UNREACHABLE"),
            ("memory", human_bytes(rss) + (f" (limit {human_bytes(limit)})" if limit else "")),
        ]),  # fmt: skip
    ]
    if system:
        # memory is on the line above; dropped rows are in log_rows
        shown = ("rss_bytes", "memory_limit_bytes", "dropped_log_rows")
        lines.append(describe({k: v for k, v in system.items() if k not in shown}))
    return "\n".join(lines)
