"""TLS for sipha's streams: the server side of ``tls:`` listeners, the client side to media servers.

The certificate chain and key come from ``[tls] certificate`` and
``private_key`` (PEM); :meth:`TLSContexts.load` reads them again on SIGHUP,
and connections made after that use the new ones. A peer sipha connects to
is always verified: its chain against ``[tls] ca_certificates`` (the
system's store when that is ""), and its name, DNS name or IP address,
against the host it was asked for, by Twisted with ``service_identity``.
There is no switch to turn verification off. A media server that asks for a
client certificate gets sipha's own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from sipha.config import TLSConfig
from sipha.logs import Log

log = Log(namespace="sipha.tls")

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class TLSError(Exception):
    """Certificates that cannot be used; the message names the file and says why."""


def _certificates(path: str) -> list[ssl.Certificate]:
    blocks = _PEM_CERTIFICATE.findall(Path(path).read_bytes())
    if not blocks:
        raise TLSError(f"{path}: no PEM certificate in it")
    return [ssl.Certificate.loadPEM(block) for block in blocks]


@implementer(IOpenSSLServerConnectionCreator)
class TLSContexts:
    """The server context of the listeners, and client options per peer name."""

    def __init__(self, settings: TLSConfig):
        self.settings = settings
        self._server: ssl.CertificateOptions | None = None
        self._identity: ssl.PrivateCertificate | None = None
        self._trust: Any = None
        self._clients: dict[str, Any] = {}

    def load(self) -> None:
        """(Re)read the PEM files; a bad file raises TLSError and keeps the old ones."""
        settings = self.settings
        try:
            identity = chain = None
            if settings.certificate:
                leaf, *chain = _certificates(settings.certificate)
                key = ssl.KeyPair.load(Path(settings.private_key).read_bytes(), ssl.FILETYPE_PEM)
                identity = ssl.PrivateCertificate.fromCertificateAndKeyPair(leaf, key)
            trust: Any = (
                ssl.trustRootFromCertificates(_certificates(settings.ca_certificates))
                if settings.ca_certificates
                else ssl.platformTrust()
            )
            server = None
            if identity is not None:
                server = ssl.CertificateOptions(
                    privateKey=identity.privateKey.original,
                    certificate=identity.original,
                    extraCertChain=[c.original for c in chain or ()],
                )
                server.getContext()  # a key that does not match fails here, not per connection
        except (OSError, SSL.Error, ValueError) as error:
            raise TLSError(f"tls: {error}") from None
        self._server, self._identity, self._trust = server, identity, trust
        self._clients.clear()

    def reload(self) -> None:
        """SIGHUP: the files again; a failure is logged and the certificates in use stay."""
        try:
            self.load()
        except TLSError as error:
            log.error("{error}; the certificates loaded before stay in use", error=error)
            return
        log.info("TLS certificates reloaded")

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:  # noqa: N802
        assert self._server is not None, "a tls: listener needs [tls] certificate"
        return SSL.Connection(self._server.getContext(), None)

    def client(self, hostname: str) -> Any:
        """Options for a connection to ``hostname`` (a name or an address), verified."""
        options = self._clients.get(hostname)
        if options is None:
            if len(self._clients) > 1024:
                self._clients.clear()
            options = self._clients[hostname] = ssl.optionsForClientTLS(
                hostname, trustRoot=self._trust, clientCertificate=self._identity
            )
        return options
