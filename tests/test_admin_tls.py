"""APIs beyond loopback serve HTTPS (a certificate and key in the settings or on the API)
unless they say ``insecure: true``; without any, a create or PATCH is a 422 naming host."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.certs import self_signed
from tests.test_admin_apis import AdminTestCase, free_port


class TlsTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.dir = Path(tempfile.mkdtemp(prefix="flm-test-tls-"))
        self.cert, self.key = self_signed(self.dir)
        self.other_cert, self.other_key = self_signed(self.dir, "other")

    def ssl_ports(self) -> list[int]:
        return [port for port, *_ in self.reactor.sslServers]

    def test_the_api_object_says_host_and_insecure(self) -> None:
        api = self.create("local")
        self.assertEqual((api["host"], api["insecure"]), ("127.0.0.1", False))

    def test_beyond_loopback_without_a_certificate_is_a_422_naming_host(self) -> None:
        for host in ("0.0.0.0", "::"):
            self.assert_error(self.call("POST", "/api/apis", {
                "name": "wide", "model": "llama3.2", "host": host}), 422, "invalid_field",
                "host")
        self.create("local", port=free_port())
        self.assert_error(self.call("PATCH", "/api/apis/local", {"host": "0.0.0.0"}), 422,
                          "invalid_field", "host")
        self.assertEqual(self.call("GET", "/api/apis/local")[1]["host"], "127.0.0.1")
        self.assertEqual(self.ssl_ports(), [])

    def test_insecure_listens_in_plain_http(self) -> None:
        api = self.create("plain", host="0.0.0.0", insecure=True, port=free_port())
        self.assertEqual((api["status"], api["insecure"]), ("running", True))
        self.assertEqual(self.ssl_ports(), [])
        self.assertIn(api["port"], self.reactor.listening())

    def test_the_api_s_certificate_serves_https(self) -> None:
        api = self.create("tls", host="0.0.0.0", port=free_port(), tls_cert=str(self.cert),
                          tls_key=str(self.key))
        self.assertEqual(api["status"], "running")
        self.assertEqual(self.ssl_ports(), [api["port"]])
        # a loopback API with a certificate stays plain HTTP
        local = self.create("local", port=free_port(), tls_cert=str(self.cert),
                            tls_key=str(self.key))
        self.assertEqual(self.ssl_ports(), [api["port"]])
        self.assertIn(local["port"], self.reactor.listening())

    def test_the_settings_certificate_serves_https(self) -> None:
        self.registry.tls_cert, self.registry.tls_key = str(self.cert), str(self.key)
        api = self.create("tls", host="0.0.0.0", port=free_port())
        self.assertEqual(self.ssl_ports(), [api["port"]])

    def test_bad_certificate_files_are_named(self) -> None:
        base = {"name": "tls", "model": "llama3.2", "host": "0.0.0.0"}
        for extra, field in (
                ({"tls_cert": str(self.dir / "missing.crt"), "tls_key": str(self.key)}, "tls_cert"),
                ({"tls_cert": str(self.key), "tls_key": str(self.key)}, "tls_cert"),
                ({"tls_cert": str(self.cert), "tls_key": str(self.cert)}, "tls_key"),
                ({"tls_cert": str(self.cert), "tls_key": str(self.other_key)}, "tls_key"),
                ({"tls_cert": 5}, "tls_cert"), ({"tls_key": "a\x00b"}, "tls_key"),
                ({"insecure": "yes"}, "insecure")):
            self.assert_error(self.call("POST", "/api/apis", {**base, **extra}), 422,
                              "invalid_field", field)

    def test_a_running_api_moves_to_https_and_back(self) -> None:
        self.create("mover", port=free_port())
        status, body, _ = self.call("PATCH", "/api/apis/mover", {
            "host": "0.0.0.0", "tls_cert": str(self.cert), "tls_key": str(self.key)})
        self.assertEqual((status, body["host"], body["status"]), (200, "0.0.0.0", "running"))
        self.assertEqual(self.ssl_ports(), [body["port"]])
        status, body, _ = self.call("PATCH", "/api/apis/mover", {"insecure": True})
        self.assertEqual((status, body["insecure"]), (200, True))
        self.assertEqual(len(self.ssl_ports()), 1)  # listened again in plain HTTP
