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
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from sipha.config import ConfigError, TLSConfig
from sipha.logs import Log

log = Log(namespace="sipha.tls")

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def _pem_certificates(key: str, path: str) -> list[bytes]:
    try:
        blocks: list[bytes] = _PEM_CERTIFICATE.findall(Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(key, f"{path}: {error.strerror or error}") from None
    if not blocks:
        raise ConfigError(key, f"{path}: no PEM certificate in it")
    return blocks


def _certificates(key: str, path: str) -> list[ssl.Certificate]:
    try:
        return [ssl.Certificate.loadPEM(block) for block in _pem_certificates(key, path)]
    except (SSL.Error, ValueError) as error:
        raise ConfigError(key, f"{path}: not a certificate ({error})") from None


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
        """(Re)read the PEM files; a bad one raises ConfigError naming its key, the old stay."""
        settings = self.settings
        identity, server = None, None
        if settings.certificate:
            leaf, *rest = _pem_certificates("tls.certificate", settings.certificate)
            try:
                pem_key = Path(settings.private_key).read_bytes()
                identity = ssl.PrivateCertificate.loadPEM(leaf + b"\n" + pem_key)
            except Exception as error:  # pyOpenSSL and Twisted raise a variety here
                raise ConfigError(
                    "tls.private_key",
                    f"{settings.private_key}: not the private key of tls.certificate ({error})",
                ) from None
            chain = [ssl.Certificate.loadPEM(block) for block in rest]
            server = ssl.CertificateOptions(
                privateKey=identity.privateKey.original,
                certificate=identity.original,
                extraCertChain=[c.original for c in chain],
            )
        trust: Any = (
            ssl.trustRootFromCertificates(
                _certificates("tls.ca_certificates", settings.ca_certificates)
            )
            if settings.ca_certificates
            else ssl.platformTrust()
        )
        self._server, self._identity, self._trust = server, identity, trust
        self._clients.clear()

    def reload(self) -> None:
        """SIGHUP: the files again; a failure is logged and the certificates in use stay."""
        try:
            self.load()
        except ConfigError as error:
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


def describe_failure(error: BaseException, host: str) -> str:
    """What went wrong with a TLS connection, for one log line an operator can act on."""
    if isinstance(error, VerificationError):
        return f"its certificate is not for {host}"
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [entry[-1] for entry in error.args[0] if entry]
        if reasons:
            return "; ".join(reasons)
    return str(error) or type(error).__name__
