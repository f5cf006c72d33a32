"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``).

    python -m bench.stacks FILE [--top 25]

Prints, for the reactor thread and then the worker threads, as shares of their busy
samples (idle waits left out): the functions with the most self time, the most
inclusive time, and inclusive time per source file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
IDLE = ("EPollReactor.doPoll (twisted/internet/epollreactor.py", "Condition.wait (threading.py",
        "Queue.get (queue.py")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def strip_line(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def file_of(frame: str) -> str:
    m = _FRAME.match(frame)
    return m.group("file") if m else frame


def _group(path: str) -> str:
    """flm, twisted.web, twisted.internet, ... or the stdlib module."""
    parts = path.replace(".py", "").split("/")
    if parts[0] in ("flm", "twisted") and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def is_thread(frames: list[str]) -> bool:
    return any(f.startswith("Thread._bootstrap") for f in frames)


def summarise(stacks: list[tuple[list[str], int]], top: int = 25) -> str:
    """The reactor (main) thread in detail; worker threads (adbapi, ...) in short."""
    busy_all = [(s, c) for s, c in stacks if not any(s[-1].startswith(i) for i in IDLE)]
    workers = [(s, c) for s, c in busy_all if is_thread(s)]
    main = [(s, c) for s, c in stacks if not is_thread(s)]
    nmain = sum(c for _, c in main) or 1
    out = [f"reactor thread: {nmain} samples, "
           f"{100 * sum(c for s, c in main if not s[-1].startswith(IDLE)) / nmain:.0f}% busy; "
           f"worker threads: {sum(c for _, c in workers)} busy samples"]
    out.append(_table([(s, c) for s, c in main if not s[-1].startswith(IDLE)], top, "reactor thread"))
    if workers:
        out.append(_table(workers, min(top, 10), "worker threads"))
    return "\n".join(out)


def _table(busy: list[tuple[list[str], int]], top: int, title: str) -> str:
    total = sum(c for _, c in busy)
    nbusy = total or 1
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    files: Counter[str] = Counter()
    self_files: Counter[str] = Counter()
    for frames, count in busy:
        self_t[strip_line(frames[-1])] += count
        self_files[file_of(frames[-1])] += count
        for f in {strip_line(f) for f in frames}:
            incl[f] += count
        for f in {file_of(f) for f in frames}:
            files[f] += count
    out = ["", f"== {title}: {total} busy samples; shares are of these", "self time:"]
    out += [f"  {100 * c / nbusy:5.1f}%  {f}" for f, c in self_t.most_common(top)]
    out += ["", "inclusive time:"]
    skip = ("<module>", "_run_", "main (", "ReactorBase.", "callWithLogger", "callWithContext",
            "ThreadedContextTracker", "ContextTracker", "run (twisted/scripts", "runApp", "startReactor",
            "UnixApplicationRunner", "_SomeApplicationRunner", "ServerOptions", "run (twisted/application")
    shown = [(f, c) for f, c in incl.most_common() if not f.startswith(skip)][:top]
    out += [f"  {100 * c / nbusy:5.1f}%  {f}" for f, c in shown]
    out += ["", "inclusive time by file:"]
    out += [f"  {100 * c / nbusy:5.1f}%  {f}" for f, c in files.most_common(top)]
    out += ["", "self time by file:"]
    out += [f"  {100 * c / nbusy:5.1f}%  {f}" for f, c in self_files.most_common(top)]
    groups: Counter[str] = Counter()
    for f, c in self_files.items():
        groups[_group(f)] += c
    out += ["", "self time by package:"]
    out += [f"  {100 * c / nbusy:5.1f}%  {g}" for g, c in groups.most_common()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    print(summarise(parse(Path(args.file)), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
