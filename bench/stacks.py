"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``).

    python -m bench.stacks FILE [--top 25]

Prints, as shares of the busy samples (idle ``epoll`` waits left out): the functions
with the most self time, the most inclusive time, and inclusive time per source file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
IDLE = ("EPollReactor.doPoll (twisted/internet/epollreactor.py",)


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


def summarise(stacks: list[tuple[list[str], int]], top: int = 25) -> str:
    busy = [(s, c) for s, c in stacks if not any(s[-1].startswith(i) for i in IDLE)]
    total = sum(c for _, c in stacks)
    nbusy = sum(c for _, c in busy) or 1
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    files: Counter[str] = Counter()
    for frames, count in busy:
        self_t[strip_line(frames[-1])] += count
        for f in {strip_line(f) for f in frames}:
            incl[f] += count
        for f in {file_of(f) for f in frames}:
            files[f] += count
    out = [f"{total} samples, {nbusy} busy ({100 * nbusy / max(total, 1):.0f}%); shares below are of busy samples",
           "", "self time:"]
    out += [f"  {100 * c / nbusy:5.1f}%  {f}" for f, c in self_t.most_common(top)]
    out += ["", "inclusive time:"]
    skip = ("<module>", "_run_", "main (", "ReactorBase.", "callWithLogger", "callWithContext",
            "ThreadedContextTracker", "ContextTracker", "run (twisted/scripts", "runApp", "startReactor",
            "UnixApplicationRunner", "_SomeApplicationRunner", "ServerOptions", "run (twisted/application")
    shown = [(f, c) for f, c in incl.most_common() if not f.startswith(skip)][:top]
    out += [f"  {100 * c / nbusy:5.1f}%  {f}" for f, c in shown]
    out += ["", "inclusive time by file:"]
    out += [f"  {100 * c / nbusy:5.1f}%  {f}" for f, c in files.most_common(top)]
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
