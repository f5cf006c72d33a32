"""``reuse_port``: API ports opened with ``SO_REUSEPORT`` (Linux), through the reactor's
public ``adoptStreamPort``; plain HTTP and TLS, on real loopback sockets."""

from __future__ import annotations

import errno
import shutil
import socket
import ssl
import sys
import tempfile
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from flm.gateway.ports import endpoint
from flm.gateway.reuseport import reuse_port_socket
from flm.http.tls import server_options
from tests.certs import self_signed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="SO_REUSEPORT spreads connections on Linux")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_listeners_share_a_port_with_it() -> None:
    port = free_port()
    first = reuse_port_socket("127.0.0.1", port)
    try:
        second = reuse_port_socket("127.0.0.1", port)
        second.close()
    finally:
        first.close()


def test_without_it_the_second_listener_is_refused() -> None:
    port = free_port()
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    first.bind(("127.0.0.1", port))
    first.listen(5)
    try:
        with pytest.raises(OSError) as caught:
            reuse_port_socket("127.0.0.1", port)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        first.close()


class Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(self.factory.greeting)
        self.transport.loseConnection()


def hello(greeting: bytes) -> Factory:
    factory = Factory.forProtocol(Hello)
    factory.greeting = greeting  # type: ignore[attr-defined]
    return factory


def fetch(port: int, tls: bool = False) -> bytes:
    """One connection's bytes (a blocking client, in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        conn = raw
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn = context.wrap_socket(raw, server_hostname="localhost")
        chunks = []
        while True:
            chunk = conn.recv(100)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class ReactorTests(TestCase):
    """The real reactor: two listening ports on one port number, both serving."""

    async def listen_two(self, tls: object = None) -> tuple[int, list[object]]:
        port = free_port()
        ports = []
        for greeting in (b"one", b"two"):
            listening = await endpoint(reactor, "127.0.0.1", port, tls,
                                       reuse_port=True).listen(hello(greeting))
            self.addCleanup(listening.stopListening)
            ports.append(listening)
        return port, ports

    def test_two_ports_serve_one_port_number(self) -> Deferred:
        async def run() -> None:
            port, ports = await self.listen_two()
            self.assertEqual([p.getHost().port for p in ports], [port, port])
            seen = set()
            for _ in range(40):  # the kernel spreads connections: both answer, soon
                seen.add(await deferToThread(fetch, port))
                if len(seen) == 2:
                    break
            self.assertEqual(seen, {b"one", b"two"})
        return Deferred.fromCoroutine(run())

    def test_tls_is_kept(self) -> Deferred:
        directory = Path(tempfile.mkdtemp(prefix="flm-test-reuse-"))
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = self_signed(directory)

        async def run() -> None:
            port, _ = await self.listen_two(server_options(str(cert), str(key)))
            self.assertIn(await deferToThread(fetch, port, True), (b"one", b"two"))
        return Deferred.fromCoroutine(run())

    def test_a_port_held_without_it_cannot_be_listened_on(self) -> Deferred:
        async def run() -> None:
            plain = await endpoint(reactor, "127.0.0.1", 0).listen(hello(b"x"))
            self.addCleanup(plain.stopListening)
            with self.assertRaises(CannotListenError):
                await endpoint(reactor, "127.0.0.1", plain.getHost().port,
                               reuse_port=True).listen(hello(b"y"))
        return Deferred.fromCoroutine(run())
