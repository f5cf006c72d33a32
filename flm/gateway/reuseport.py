"""Listening with ``SO_REUSEPORT`` (Linux): several FLM processes on one machine serve the
same API ports and the kernel spreads new connections among them.

Twisted's ``listenTCP`` has no option for it, so the socket is made, bound and listening
here and handed to the reactor with the public ``IReactorSocket.adoptStreamPort``; TLS
wraps the factory as the ``ssl:`` endpoint does.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.protocols.tls import TLSMemoryBIOFactory

BACKLOG = 50  # as listenTCP


def reuse_port_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening, non-blocking socket with ``SO_REUSEPORT``; raises ``OSError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class ReusePortEndpoint:
    """An ``IStreamServerEndpoint`` for ``host:port`` with ``SO_REUSEPORT``; ``tls`` (a
    context factory) makes it HTTPS."""

    def __init__(self, reactor: Any, host: str, port: int, tls: Any = None) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._tls = tls

    def listen(self, factory: Any) -> Deferred[Any]:
        if self._tls is not None:
            factory = TLSMemoryBIOFactory(self._tls, False, factory)
        try:
            s = reuse_port_socket(self._host, self._port)
        except OSError as e:
            return fail(CannotListenError(self._host, self._port, e))
        try:
            return succeed(self._reactor.adoptStreamPort(s.fileno(), s.family, factory))
        except Exception as e:  # noqa: BLE001 - the reactor's own error, handed on
            return fail(e)
        finally:
            s.close()  # the reactor holds its own duplicate of the descriptor
