"""The floor: a bare twisted.web reverse proxy (Agent + persistent pool, body relayed).

No auth, no queue, no logs: what any Twisted proxy pays per request. The request body is
sent the way FLM sends it (``flm.http.client.BytesBody``: written at once in
``startProducing``), not through ``FileBodyProducer``, whose cooperator tick delays every
request and would flatter FLM.
``python -m bench.bare_proxy --backend http://127.0.0.1:P --port 0`` prints ``listening on <port>``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import protocol
from twisted.web import client, resource, server
from twisted.web.http_headers import Headers

from flm.http.client import BytesBody  # the body sent as FLM sends it

HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
       b"upgrade", b"content-length", b"host"}


class Relay(protocol.Protocol):
    def __init__(self, request: server.Request, gone: list[bool]) -> None:
        self.request, self.gone = request, gone

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Any) -> None:
        if not self.gone:
            self.request.finish()


class BareProxy(resource.Resource):
    isLeaf = True

    def __init__(self, agent: client.Agent, backend: bytes) -> None:
        super().__init__()
        self.agent, self.backend = agent, backend

    def render(self, request: server.Request) -> int:
        headers = Headers({k: v for k, v in request.requestHeaders.getAllRawHeaders() if k.lower() not in HOP})
        body = request.content.read()
        d = self.agent.request(request.method, self.backend + request.uri, headers,
                               BytesBody(body) if body else None)
        gone: list[bool] = []  # the client hung up (public API: notifyFinish's errback)

        def respond(response: Any) -> None:
            request.setResponseCode(response.code)
            for k, v in response.headers.getAllRawHeaders():
                if k.lower() not in HOP:
                    request.responseHeaders.setRawHeaders(k, v)
            if response.length is not client.UNKNOWN_LENGTH:
                request.setHeader(b"content-length", b"%d" % response.length)
            response.deliverBody(Relay(request, gone))

        def fail(reason: Any) -> None:
            if not gone:
                request.setResponseCode(502)
                request.finish()

        d.addCallbacks(respond, fail)
        def hung_up(_: Any) -> None:
            gone.append(True)
            d.cancel()
        request.notifyFinish().addErrback(hung_up)
        return server.NOT_DONE_YET


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    pool = client.HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 128
    site = server.Site(BareProxy(client.Agent(reactor, pool=pool), args.backend.rstrip("/").encode()))
    site.log = lambda request: None  # no access log: this is the floor
    port = reactor.listenTCP(args.port, site, backlog=1024, interface="127.0.0.1")
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
