"""The printed table and the PASS/MISS lines of ``bench.proxy``."""

from __future__ import annotations

from typing import Any


def fmt_table(results: dict[str, Any], ttfb: dict[str, Any], targets: tuple[str, ...]) -> str:
    lines = []
    head = (f"{'mode':9} {'c':>3} {'target':7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'err':>4} {'non2xx':>6} {'CPU s/1k':>8} {'(main)':>7} {'FLM RSS MB':>10}")
    lines += [head, "-" * len(head)]
    for mode, by_c in results.items():
        for conc, row in by_c.items():
            for name in targets:
                r = row[name]
                lines.append(f"{mode:9} {conc:>3} {name:7} {r['rps']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                             f"{r['errors']:4d} {r['non2xx']:6d} {r['cpu_s_per_1k']:8.3f} {r['main_cpu_s_per_1k']:7.3f} "
                             f"{r['rss_flm_mb'] if name == 'flm' else float('nan'):10.1f}")
            q = row["ratios"]
            if "flm" in row:
                lines.append(f"{'':9} {'':>3} ratios  FLM/bare {q['flm_over_bare_rps']:.2f}  "
                             f"FLM/direct {q['flm_over_direct_rps']:.2f}  bare/direct {q['bare_over_direct_rps']:.2f}  "
                             f"p50 added vs direct: FLM {q['flm_added_p50_ms']:+.2f} ms, "
                             f"bare {q['bare_added_p50_ms']:+.2f} ms")
            else:
                lines.append(f"{'':9} {'':>3} ratios  bare/direct {q['bare_over_direct_rps']:.2f}  "
                             f"p50 added by bare {q['bare_added_p50_ms']:+.2f} ms")
        lines.append("")
    if ttfb:
        lines.append(f"Streaming at c=1, {ttfb['n']} requests each, events {ttfb['chunk_delay_ms']} ms apart "
                     "(medians, keep-alive Python client):")
        lines.append(f"  {'target':7} {'headers ms':>10} {'TTFB ms':>8} {'total ms':>9}")
        for name in targets:
            t = ttfb[name]
            lines.append(f"  {name:7} {t['head_ms']:10.3f} {t['ttfb_ms']:8.3f} {t['total_ms']:9.3f}"
                         + ("" if t["all_done"] else "   (some streams lacked [DONE])"))
        lines.append("  TTFB added vs direct: " + ", ".join(f"{n} {ttfb[n + '_added_ttfb_ms']:+.3f} ms" for n in targets[1:]))
    return "\n".join(lines)


def verdict(results: dict[str, Any], ttfb: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    checks: list[tuple[str, str, bool | None]] = []
    ns = results.get("nonstream", {})
    if "1" in ns and "flm" in ns["1"]:
        v = ns["1"]["ratios"]["flm_added_p50_ms"]
        checks.append(("added p50 at c=1 (non-streaming) <= 1.5 ms", f"{v:+.2f} ms", v <= 1.5))
    if "50" in ns and "flm" in ns["50"]:
        v = ns["50"]["flm"]["rps"]
        checks.append(("FLM req/s at c=50 non-streaming >= 1000", f"{v:.0f}", v >= 1000))
    if "flm_added_ttfb_ms" in ttfb:
        v = ttfb["flm_added_ttfb_ms"]
        checks.append(("streaming TTFB added <= 2 ms", f"{v:+.3f} ms", v <= 2.0))
    ratios = [(m, c, row["ratios"]["flm_over_bare_rps"]) for m, by_c in results.items() for c, row in by_c.items()
              if "flm" in row]
    if ratios:
        worst = min(ratios, key=lambda x: x[2])
        checks.append(("FLM/bare req/s >= 0.75 (worst cell)", f"{worst[2]:.2f} ({worst[0]} c={worst[1]})",
                       worst[2] >= 0.75))
    return checks
