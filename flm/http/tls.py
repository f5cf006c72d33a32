"""HTTPS for API ports beyond loopback: when it is needed and the server options."""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.error import VerifyError


class TlsProblem(Exception):
    """TLS cannot be set up; ``field`` names what to change (``host``, ``tls_cert``...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def needs_tls(host: str, insecure: bool) -> bool:
    """Beyond loopback an API serves HTTPS unless it says ``insecure``."""
    return not insecure and not is_loopback(host)


def server_options(cert_path: str | None, key_path: str | None) -> ssl.CertificateOptions:
    """Twisted's ``CertificateOptions`` (its modern defaults) from two PEM files."""
    if not cert_path or not key_path:
        raise TlsProblem("host", "listening beyond loopback needs HTTPS: set tls_cert and "
                                 "tls_key (in the settings or on the API), or insecure: true")
    pems = []
    for field, path in (("tls_cert", cert_path), ("tls_key", key_path)):
        try:
            with open(path, "rb") as f:
                pems.append(f.read())
        except OSError as e:
            raise TlsProblem(field, f"cannot read {path}: {e.strerror}") from None
    try:
        cert = ssl.Certificate.loadPEM(pems[0])
    except (SSL.Error, crypto.Error, ValueError):
        raise TlsProblem("tls_cert", f"{cert_path} holds no PEM certificate") from None
    try:
        key = ssl.KeyPair.load(pems[1], crypto.FILETYPE_PEM)
    except (SSL.Error, crypto.Error, ValueError):
        raise TlsProblem("tls_key", f"{key_path} holds no PEM private key") from None
    try:
        return ssl.PrivateCertificate.fromCertificateAndKeyPair(cert, key).options()
    except (SSL.Error, crypto.Error, ValueError, VerifyError):
        raise TlsProblem("tls_key", "does not match the certificate in tls_cert") from None
