"""Listening for an API: endpoints, and why a host and port cannot be had."""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
)

from flm.gateway.reuseport import ReusePortEndpoint


class PortInUse(Exception):
    """An API cannot listen; ``field`` names what to change: ``port`` (taken), ``host``
    (not an address of this machine, or TLS missing) or ``tls_cert`` / ``tls_key``."""

    def __init__(self, port: int, reason: str, field: str = "port") -> None:
        super().__init__(f"port {port} is in use: {reason}" if field == "port" else reason)
        self.port = port
        self.field = field


def not_here(host: str) -> PortInUse:
    return PortInUse(0, f"{host} is not an address of this machine", "host")


def endpoint(reactor: Any, host: str, port: int, tls: Any = None,
             reuse_port: bool = False) -> Any:
    if reuse_port:
        return ReusePortEndpoint(reactor, host, port, tls)
    if tls is not None:
        return SSL4ServerEndpoint(reactor, port, tls, interface=host)
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host)


def bind_problem(host: str, port: int) -> PortInUse | None:
    """Why ``host:port`` cannot be listened on now (port 0: is ``host`` on this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return not_here(host)
            return PortInUse(port, f"cannot listen on {host}:{port}: {e.strerror}")
    return None
