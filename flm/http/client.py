"""Outgoing HTTP: one persistent connection pool per purpose, endpoints built once.

Twisted's ``Agent`` builds a ``HostnameEndpoint`` (IDNA-encoding the host) for every
request; the proxy sends every request to one of a handful of backends, so the endpoints
are cached by scheme, host and port (~10% of the reactor's time at concurrency 50).
A backend named by its IP address gets a plain TCP endpoint: ``HostnameEndpoint`` would
resolve even an address in a thread and build a class per connection, which is what 1,000
streams opening at once wait for.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer


@implementer(IStreamClientEndpoint)
class _Quiet:
    """An endpoint whose connection factories do not log two lines per connection."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[Any]:
        factory.noisy = False
        return self._endpoint.connect(factory)


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """One endpoint per (scheme, host, port), built on first use."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = tcp_endpoint(self._reactor, uri.host.decode("ascii"), uri.port,
                                    self._timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port),
                                         endpoint)
            endpoint = self._endpoints[key] = _Quiet(endpoint)
        return endpoint


def tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    """A plain TCP endpoint for an IP address (nothing to resolve), else a hostname one."""
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def make_pool(reactor: Any, max_per_host: int, idle_timeout: float) -> HTTPConnectionPool:
    """A persistent pool that keeps ``max_per_host`` idle connections for ``idle_timeout`` s.

    Idle connections close before the server closes them: uvicorn (vLLM) does after 5 s,
    and a request sent on a connection as it closes fails (Twisted keeps them 240 s).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool.retryAutomatically = False
    pool.cachedConnectionTimeout = idle_timeout
    return pool


def make_agent(reactor: Any, pool: HTTPConnectionPool, connect_timeout: float) -> IAgent:
    return Agent.usingEndpointFactory(reactor, CachedEndpoints(reactor, connect_timeout),
                                      pool=pool)


@implementer(IBodyProducer)
class BytesBody:
    """A body already in memory, written at once (no cooperator tick, unlike
    ``FileBodyProducer``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class PoolService(Service):
    """Owns outgoing connection pools and closes them on stop."""

    def __init__(self, *pools: HTTPConnectionPool) -> None:
        self.pools = pools

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([p.closeCachedConnections() for p in self.pools])
