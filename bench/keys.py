"""What per-key limits cost: the same API, a key with every limit set vs its plain key.

    python -m bench.keys [--reps 3] [--duration 5] [--concurrency 50]

Starts the fast fake backend and ``twistd -n flm`` with one API, adds a key with
``rate_limit_rpm``, ``tpm_limit`` and both token budgets set far above what the run uses
(every check runs, none refuses), then alternates wrk runs (non-streaming) between the two
keys and prints the median requests/s of each and their ratio (target: >= 0.95).
"""

from __future__ import annotations

import argparse

from bench import harness, loadgen
from bench.harness import median
from bench.proxy import start_flm
from bench.soak import wait_quiet

LIMITS = {"rate_limit_rpm": 1_000_000, "tpm_limit": 10**12, "daily_token_budget": 10**15,
          "monthly_token_budget": 10**15}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    args.backend_max_concurrent, args.config, args.flm_arg = 64, None, []
    wait_quiet()
    with harness.Run(args.keep_logs) as run:
        backend, backend_port = harness.start_backend(run.logdir)
        run.add(backend)
        flm = run.add(start_flm(run.logdir, backend_port, args))
        api = flm.open_api(name="bench", model="bench-model", max_concurrent=64, max_queue=512,
                           queue_timeout_s=60, upstream_timeout_s=60)
        status, limited = flm.admin("POST", f"/api/apis/{api['id']}/keys",
                                    {"name": "limited", **LIMITS})
        assert status == 201, limited
        keys = {"plain": api["key"], "limited": limited["key"]}
        lua = {n: loadgen.write_lua(run.logdir / f"{n}.lua", loadgen.chat_body(False), k)
               for n, k in keys.items()}
        for n in keys:  # warm up
            loadgen.run_wrk(api["port"], lua[n], args.concurrency, 1)
        rps: dict[str, list[float]] = {n: [] for n in keys}
        for rep in range(args.reps):
            for n in (list(keys) if rep % 2 == 0 else list(reversed(keys))):
                r = loadgen.run_wrk(api["port"], lua[n], args.concurrency, args.duration)
                if r["non2xx"] or r["errors"]:
                    print(f"warning: {n}: {r['non2xx']} non-2xx, {r['errors']} errors")
                rps[n].append(r["rps"])
        plain, limited_rps = median(rps["plain"]), median(rps["limited"])
        print(f"c={args.concurrency}, {args.reps} x {args.duration:g} s, medians")
        print(f"  plain key:            {plain:8.0f} req/s  {[round(x) for x in rps['plain']]}")
        print(f"  key with every limit: {limited_rps:8.0f} req/s  "
              f"{[round(x) for x in rps['limited']]}")
        ratio = limited_rps / plain if plain else float("nan")
        print(f"  ratio: {ratio:.3f} [{'PASS' if ratio >= 0.95 else 'MISS'}] (target >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
