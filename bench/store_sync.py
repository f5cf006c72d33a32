"""What ``synchronous = FULL`` costs over ``NORMAL``: the commit of one log batch (the
real ``write_logs``) at 1, 50 and 5,000 rows, each setting twice, on the disk of
``--dir`` (put it where the data directory lives).

    .venv/bin/python -m bench.store_sync [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from flm.store.db import LOG_COLUMNS, write_logs
from flm.store.migrations import migrate


def row(i: float) -> tuple[object, ...]:
    values = dict(api_id=1, created_at=1.7e9 + i, method="POST", path="/v1/chat/completions",
                  status=200, queue_ms=0.1, ttfb_ms=5.0, upstream_ms=9.0, response_ms=10.0,
                  bytes_in=100, bytes_out=200, model="m", prompt_tokens=3,
                  completion_tokens=4, request_id="r", error=None)
    return tuple(values.get(c) for c in LOG_COLUMNS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None)
    work = Path(tempfile.mkdtemp(prefix="flm-sync-", dir=p.parse_args().dir))
    try:
        for mode in ("FULL", "NORMAL", "FULL", "NORMAL"):
            conn = sqlite3.connect(work / f"{mode}-{time.monotonic()}.db", isolation_level=None)
            migrate(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {mode}")
            for n, reps in ((1, 300), (50, 200), (5000, 20)):
                times = []
                for r in range(reps):
                    rows = [row(r + i / 1e4) for i in range(n)]
                    t = time.perf_counter()
                    conn.execute("BEGIN IMMEDIATE")
                    write_logs(conn, rows, {})
                    conn.execute("COMMIT")
                    times.append((time.perf_counter() - t) * 1000)
                times.sort()
                print(f"{mode:6s} {n:5d} rows: median {statistics.median(times):7.2f} ms   "
                      f"p99 {times[int(len(times) * 0.99) - 1]:7.2f} ms")
            conn.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
