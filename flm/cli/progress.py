"""Pull progress: a bar redrawn in place on a terminal, plain lines elsewhere.

Both show a pull job's state as the admin API sends it; speed and ETA are the
server's (``speed_bps``, ``eta_s``: null until it has measured a second of download).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from flm.cli.format import human_bytes, human_duration


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
