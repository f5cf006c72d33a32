"""The upstream body, relayed to the client chunk by chunk as it arrives.

The upstream transport is registered as the client request's producer, so a slow client
slows the backend instead of filling memory. Response bytes are not parsed on the way;
token counts are read from the tail of the body once it is complete.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

TAIL_BYTES = 4096
_PROMPT = (b'"prompt_tokens"', b'"prompt_eval_count"')
_COMPLETION = (b'"completion_tokens"', b'"eval_count"')
_COUNT = re.compile(rb"\s*:\s*(\d+)")
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def usage_from_tail(tail: bytes) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from the last usage the backend wrote, if any."""
    return _last_count(tail, _PROMPT), _last_count(tail, _COMPLETION)


def _last_count(tail: bytes, names: tuple[bytes, ...]) -> int | None:
    """The number after the last of ``names`` that has one: searched from the end, as
    the usage is the body's last part (a regex over the whole tail cost ~5 us a request)."""
    best, best_at = None, -1
    for name in names:
        end = len(tail)
        while (at := tail.rfind(name, 0, end)) > best_at:
            m = _COUNT.match(tail, at + len(name))
            if m is not None:
                best, best_at = int(m.group(1)), at
                break
            end = at
    return best


# The blank line that ends an SSE event: two line ends, each CRLF, LF or CR (a CR is a
# line end only when no LF follows it, else it starts a CRLF).
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")


class UsageChunkFilter:
    """Holds back the usage-only SSE event that FLM asked for but the client did not.

    Complete events pass at once, whatever their line ends: only the event under way is
    held, so the first token is not delayed.
    """

    def __init__(self) -> None:
        self._pending = b""
        # An event that ended with a CR at a chunk's end: an LF first in the next chunk is
        # its own (CRLF); it goes where the event went (None: no such event).
        self._lf_kept: bool | None = None
        self.usage = b""

    def feed(self, data: bytes) -> bytes:
        if data.endswith(b"\n\n") and not self._pending and self._lf_kept is None and (
                b"\r" not in data):
            # Whole events, LF-framed: the usual chunk, passed as it is, or held back when
            # it is just the usage event.
            if b'"usage"' not in data:
                return data
            if data.find(b"\n\n") == len(data) - 2 and _EMPTY_CHOICES.search(data):
                self.usage = data
                return b""
        lf = b""
        if self._lf_kept is not None:
            if data[:1] == b"\n":
                data = data[1:]
                lf = b"\n" if self._lf_kept else b""
            self._lf_kept = None
        if self._pending:
            data = self._pending + data
        # Where the last complete event ends: a plain find for LF-only streams (the usual
        # case, and the cheap one), the full rule when there is a CR.
        if b"\r" in data:
            end = 0
            for m in _EVENT_END.finditer(data):
                end = m.end()
            if end == len(data) and data[-1:] == b"\r":
                self._lf_kept = True
        else:
            end = data.rfind(b"\n\n") + 2
            if end == 1:
                end = 0
        if not end:
            self._pending = data
            return lf
        if end == len(data):
            complete, self._pending = data, b""
        else:
            complete, self._pending = data[:end], data[end:]
        if b'"usage"' in complete:
            complete = self._hide_usage(complete, not self._pending)
        return lf + complete if lf else complete

    def _hide_usage(self, complete: bytes, at_end: bool) -> bytes:
        kept = []
        start = 0
        for m in _EVENT_END.finditer(complete):
            event = complete[start:m.end()]
            start = m.end()
            if b'"usage"' in event and _EMPTY_CHOICES.search(event):
                self.usage = event
                if at_end and start == len(complete) and self._lf_kept:
                    self._lf_kept = False
            else:
                kept.append(event)
        return b"".join(kept)

    def flush(self) -> bytes:
        data, self._pending = self._pending, b""
        return data


class Relay(Protocol):
    """Copies the upstream body to the client request; ``done`` fires with why it ended.

    ``done`` fires with None for a complete body, or a Failure: the upstream broke
    (``ResponseFailed``), stalled (``error`` is ``backend_timeout``) or was stopped because
    the client went away.
    """

    def __init__(self, request: Any, clock: IReactorTime, idle_timeout: float,
                 filter: UsageChunkFilter | None = None) -> None:
        self.request = request
        self.done: Deferred[None] = Deferred(lambda d: self.stop())
        self.first_byte_at: float | None = None
        self.bytes_out = 0
        self.error: str | None = None
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._filter = filter
        self._timer: IDelayedCall | None = None
        self._registered = False
        # The body's last bytes, for the token counts: joined once at the end, not per chunk.
        self._tail: list[bytes] = []
        self._tail_len = 0
        #: What the timer stops until the answer's headers are in (``wait``).
        self._waiting: Deferred[Any] | None = None
        #: The timer ran out before the headers came: a ``wait``ed request that failed
        #: failed for that.
        self.expired = False
        # When the headers or the last bytes came: the timer, when it runs, waits on from
        # there (moving it at every chunk cost a ``reset`` an event).
        self._last = 0.0

    def wait(self, answer: Deferred[Any]) -> None:
        """Time ``answer`` (the request's response) out after ``idle_timeout``: one timer
        for the headers and then the body, where two cost two more heap operations."""
        self._waiting = answer
        self._timer = self._clock.callLater(self._idle_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._waiting is not None:
            self.expired = True
            self._waiting.cancel()
            return
        left = self._last + self._idle_timeout - self._clock.seconds()
        if left > 0:
            self._timer = self._clock.callLater(left, self._expire)
        else:
            self._stalled()

    def cancel_wait(self) -> None:
        """The request failed before its headers: the timer goes."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @property
    def tail(self) -> bytes:
        return b"".join(self._tail)[-TAIL_BYTES:]

    def usage(self) -> tuple[int | None, int | None]:
        """(prompt, completion) tokens: from the usage event held back, else the tail."""
        counts = (None, None)
        if self._filter is not None and self._filter.usage:
            counts = usage_from_tail(self._filter.usage)
        return counts if None not in counts else usage_from_tail(self.tail)

    def connectionMade(self) -> None:
        if self.request.channel is not None:
            self.request.registerProducer(self.transport, True)
            self._registered = True
        self._waiting = None
        self._last = self._clock.seconds()
        if self._timer is None:
            self._timer = self._clock.callLater(self._idle_timeout, self._expire)

    def dataReceived(self, data: bytes) -> None:
        self._last = now = self._clock.seconds()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self._keep_tail(data)
        if self._filter is not None:
            data = self._filter.feed(data)
        if data and self.request.channel is not None:
            self.bytes_out += len(data)
            self.request.write(data)

    def _keep_tail(self, data: bytes) -> None:
        self._tail.append(data)
        self._tail_len += len(data)
        if self._tail_len > 2 * TAIL_BYTES:
            self._tail = [b"".join(self._tail)[-TAIL_BYTES:]]
            self._tail_len = len(self._tail[0])

    def _stalled(self) -> None:
        self._timer = None
        self.error = "backend_timeout"
        self.transport.stopProducing()

    def stop(self) -> None:
        """Stop the upstream body (the client went away or the request was cancelled)."""
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._filter is not None:
            rest = self._filter.flush()
            if self._filter.usage:
                self._keep_tail(self._filter.usage)
            if rest and self.request.channel is not None:
                self.bytes_out += len(rest)
                self.request.write(rest)
        if self._registered and self.request.channel is not None:
            self.request.unregisterProducer()
        if self.done.called:
            return
        # isinstance, not ``Failure.check`` (which compares qualified names it builds).
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)) and self.error is None:
            self.done.callback(None)
        else:
            if self.error is None:
                self.error = "backend_disconnected"
            self.done.errback(reason)
