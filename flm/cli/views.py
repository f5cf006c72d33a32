"""How each admin API answer reads on a terminal: APIs, log rows, metrics, models, status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flm.cli.format import (
    cell,
    describe,
    fields,
    fixed_row,
    human_bytes,
    human_duration,
    human_ms,
    short_time,
    table,
)

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

LOG_HEADERS = ["TIME", "STATUS", "METHOD", "PATH", "TOTAL", "TTFB", "QUEUE", "TOKENS", "NODE",
               "ERROR"]
_LOG_WIDTHS = [19, -6, 6, 28, -7, -7, -7, -11, 16]


def log_header() -> str:
    return fixed_row(LOG_HEADERS, _LOG_WIDTHS)


def log_line(row: Mapping[str, Any]) -> str:
    prompt, completion = row.get("prompt_tokens"), row.get("completion_tokens")
    tokens = "-" if prompt is None and completion is None else f"{cell(prompt)}/{cell(completion)}"
    values = [
        short_time(row.get("created_at")), cell(row.get("status")), cell(row.get("method")),
        cell(row.get("path")), human_ms(row.get("response_ms")), human_ms(row.get("ttfb_ms")),
        human_ms(row.get("queue_ms")), tokens, cell(row.get("node") or "-"),
        cell(row.get("error")) if row.get("error") else "",
    ]  # fmt: skip
    return fixed_row(values, _LOG_WIDTHS)


def nodes_table(page: Mapping[str, Any]) -> str:
    items = page.get("items") or []
    if not items:
        return "No nodes."
    rows = [[n.get("name"), n.get("status"), short_time(n.get("started_at")),
             short_time(n.get("last_seen")), ", ".join(n.get("apis") or []) or "-"]
            for n in items]
    return table(["NAME", "STATUS", "STARTED", "LAST SEEN", "APIS"], rows)


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
