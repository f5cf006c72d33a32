"""FLM at two commits, in one run: what a change did to the request path's cost.

``python -m bench.ab --base REV [--head REV] [--reps 3] [--duration 5]``: ``git archive``
of each revision (default head: the working tree) to a temp folder; one fast backend, the
bare proxy, and an FLM of each revision with one API (``max_concurrent`` 64, logging on);
then wrk c=50 against bare, base and head in turn, ``--reps`` times per mode, the order
rotated. Prints per target the median req/s and the median main-thread CPU seconds per
1,000 requests (steadier than req/s on a shared machine) and that of all its threads
(the log writer's too: on 2 cores it is taken from the others), and the ratios to bare. The
machine is noisy: only figures of one run are compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil

from bench import harness, loadgen
from bench.harness import BenchError


def export(run: harness.Run, rev: str | None) -> Path | None:
    """The tree of ``rev`` in a temp folder; None: this working tree."""
    if rev is None:
        return None
    out = run.remove_later(harness.temp_dir(f"flm-ab-{rev[:12]}-"))
    data = subprocess.run(["git", "archive", rev], cwd=harness.REPO, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(out, filter="data")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--head", help="git revision (default: the working tree)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--modes", nargs="+", default=["nonstream", "stream"],
                   choices=["nonstream", "stream"])
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    reason = loadgen.preflight()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    with harness.Run(args.keep_logs) as run:
        backend, port = harness.start_backend(run.logdir)
        run.add(backend)
        bare, bare_port = harness.start_bare_proxy(run.logdir, port)
        run.add(bare)
        targets: dict[str, tuple[int, str | None, Any]] = {"bare": (bare_port, None,
                                                                     psutil.Process(bare.pid))}
        for name, rev in (("base", args.base), ("head", args.head)):
            flm = run.add(harness.FLM(run.logdir, harness.temp_dir("flm-bench-data-"), port,
                                      extra=["--backend-max-concurrent", "64"], name=name,
                                      repo=export(run, rev)))
            api = flm.open_api(name="ab", model="bench-model", max_concurrent=64,
                               max_queue=512)
            targets[name] = (api["port"], api["key"], psutil.Process(flm.pid))
        order = list(targets)
        for mode in args.modes:
            body = loadgen.chat_body(mode == "stream")
            lua = {n: loadgen.write_lua(run.logdir / f"{n}-{mode}.lua", body, key)
                   for n, (_, key, _) in targets.items()}
            for n, (tport, _, _) in targets.items():  # warm-up
                loadgen.run_wrk(tport, lua[n], args.concurrency, 1)
            rps: dict[str, list[float]] = {n: [] for n in targets}
            cpu: dict[str, list[float]] = {n: [] for n in targets}
            cpu_all: dict[str, list[float]] = {n: [] for n in targets}
            for rep in range(args.reps):
                for n in order[rep % 3:] + order[:rep % 3]:
                    tport, _, proc = targets[n]
                    c0, a0 = harness.main_thread_cpu(proc), harness.cpu_seconds(proc)
                    res = loadgen.run_wrk(tport, lua[n], args.concurrency, args.duration)
                    c1, a1 = harness.main_thread_cpu(proc), harness.cpu_seconds(proc)
                    if res["errors"] or res["non2xx"]:
                        raise BenchError(f"{n}: {res['errors']} errors, {res['non2xx']} non-2xx")
                    rps[n].append(res["rps"])
                    cpu[n].append((c1 - c0) / res["requests"] * 1000)
                    cpu_all[n].append((a1 - a0) / res["requests"] * 1000)
            med = {n: {"rps": harness.median(rps[n]), "main_cpu_s_per_1k":
                       harness.median(cpu[n]), "cpu_s_per_1k": harness.median(cpu_all[n]),
                       "rps_runs": rps[n], "cpu_runs": cpu[n], "cpu_all_runs": cpu_all[n]}
                   for n in targets}
            for n in ("base", "head"):
                med[n]["rps_vs_bare"] = med[n]["rps"] / med["bare"]["rps"]
            results[mode] = med
            print(f"{mode} c={args.concurrency}: " + "; ".join(
                f"{n} {m['rps']:.0f} req/s, CPU/1k {m['main_cpu_s_per_1k']:.3f} s main thread, "
                f"{m['cpu_s_per_1k']:.3f} s all threads"
                for n, m in med.items()) + f"; FLM/bare base {med['base']['rps_vs_bare']:.3f}"
                f" head {med['head']['rps_vs_bare']:.3f}; head/base CPU "
                f"{med['head']['main_cpu_s_per_1k'] / med['base']['main_cpu_s_per_1k']:.3f}",
                flush=True)
        print(json.dumps(results, indent=1))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
