"""Per-event timing inside FLM for ``bench.streams --probe`` (never imported otherwise).

On ``PYTHONPATH`` of the FLM process only, with ``FLM_BENCH_PROBE=<file>``: every event
the slow backend stamped (``{"t": <send time>``) is timed when FLM's relay receives it and
when FLM's socket write of it returns; ``SIGUSR2`` writes both lists to the file. Patches
a private Twisted method (the socket write): bench code, so the production code stays on
Twisted's public API.
"""

import json
import os
import signal
import time

_OUT = os.environ.get("FLM_BENCH_PROBE")
_STAMP = b'{"t": '


def _stamp(data: bytes) -> float | None:
    at = data.find(_STAMP)
    if at < 0:
        return None
    try:
        return float(data[at + 6:data.index(b",", at)])
    except ValueError:
        return None


def _install() -> None:
    from twisted.internet import tcp

    from flm.gateway import relay

    received: list[tuple[float, float]] = []
    sent: list[tuple[float, float]] = []

    def dump(signum: int, frame: object) -> None:
        with open(_OUT + ".tmp", "w") as f:
            json.dump({"received": received, "sent": sent}, f)
        os.replace(_OUT + ".tmp", _OUT)
        received.clear()
        sent.clear()

    signal.signal(signal.SIGUSR2, dump)

    data_received = relay.Relay.dataReceived

    def timed_data_received(self, data, _orig=data_received):  # type: ignore[no-untyped-def]
        now = time.time()
        stamp = _stamp(data)
        if stamp is not None:
            received.append((stamp, now - stamp))
        return _orig(self, data)

    relay.Relay.dataReceived = timed_data_received

    write_some = tcp.Connection.writeSomeData

    def timed_write(self, data, _orig=write_some):  # type: ignore[no-untyped-def]
        result = _orig(self, data)
        head = bytes(data[:300])
        if not head.startswith(b"HTTP/"):
            stamp = _stamp(head)
            if stamp is not None:
                sent.append((stamp, time.time() - stamp))
        return result

    tcp.Connection.writeSomeData = timed_write


if _OUT:
    _install()
