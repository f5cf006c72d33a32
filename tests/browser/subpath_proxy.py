"""A reverse proxy that serves the admin endpoint under ``/flm/`` (for the sub-path test):
``python -m tests.browser.subpath_proxy LISTEN_PORT ADMIN_PORT``."""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site


def main(listen: int, admin: int) -> None:
    root = Resource()
    root.putChild(b"flm", ReverseProxyResource("127.0.0.1", admin, b""))
    reactor.listenTCP(listen, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
