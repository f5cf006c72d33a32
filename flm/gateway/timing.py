"""When each step of a proxied request happened, for its log row and Server-Timing."""

from __future__ import annotations


class Timing:
    __slots__ = ("arrived", "queued", "admitted", "sent", "first_byte", "last_byte",
                 "bytes_in", "bytes_out", "prompt_tokens", "completion_tokens")

    def __init__(self, arrived: float, bytes_in: int) -> None:
        self.arrived = arrived
        self.bytes_in = bytes_in
        self.queued: float | None = None
        self.admitted: float | None = None
        self.sent: float | None = None
        self.first_byte: float | None = None
        self.last_byte: float | None = None
        self.bytes_out = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    @staticmethod
    def ms(start: float | None, end: float | None) -> float | None:
        if start is None or end is None:
            return None
        return (end - start) * 1000.0
