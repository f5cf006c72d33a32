"""The outgoing pool's endpoints: built once per backend, and a backend named by its IP
address is connected to at once, without a resolver thread."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI

from flm.http.client import CachedEndpoints, tcp_endpoint


def test_an_address_is_connected_to_at_once() -> None:
    for url, host in ((b"http://127.0.0.1:8080/v1", "127.0.0.1"),
                      (b"http://[::1]:8080/v1", "::1")):
        reactor = MemoryReactorClock()
        endpoints = CachedEndpoints(reactor, connect_timeout=5)
        endpoint = endpoints.endpointForURI(URI.fromBytes(url))
        assert endpoints.endpointForURI(URI.fromBytes(url)) is endpoint  # built once
        endpoint.connect(Factory.forProtocol(Protocol))
        # No name resolution first: the connection attempt is there already.
        assert [(h, p, t) for h, p, _, t, _ in reactor.tcpClients] == [(host, 8080, 5)]


def test_a_name_is_resolved() -> None:
    reactor = MemoryReactorClock()
    assert isinstance(tcp_endpoint(reactor, "localhost", 80, 5), HostnameEndpoint)
    assert not isinstance(tcp_endpoint(reactor, "10.0.0.1", 80, 5), HostnameEndpoint)
