"""The Twisted edge: UDP and TCP sockets feeding the sans-IO proxy core.

Inbound, each datagram or framed stream message goes to ``core.receive`` with
the peer it came from and the listener it arrived on. Outbound,
:class:`Transports` implements the core's ``send(data, peer, local)``: UDP
leaves from the listener's own socket (so replies come back to it), TCP reuses
the connection a peer already has with sipha, in either direction (RFC 3261
§18), and opens one, from the listener's address, only when there is none.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress

from sipha.config import ListenAddress
from sipha.logs import Log
from sipha.message import ParseError, StreamFramer
from sipha.transaction import Peer

log = Log(namespace="sipha.transport")

# Linux lets a privileged process exceed net.core.rmem_max with this option.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a ``size`` byte receive buffer and return what the kernel granted.

    Bursts of SIP datagrams are lost in the socket buffer long before the CPU
    is busy, so the default of a few hundred KB is not enough for a proxy.
    """
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            continue
        break
    # Linux reports twice the requested size (it counts its bookkeeping).
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


# Linux: the socket's memory counters; the first is what its receive queue holds.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO = struct.Struct("9I")


def queued_bytes(sock: socket.socket) -> int:
    """Bytes waiting in a socket's receive queue (kernel accounting); 0 where unknown."""
    try:
        return int(
            _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))[0]
        )
    except (OSError, struct.error):
        return 0


# Linux: bind an address this host does not have (yet): the virtual IP, on the standby.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78


class ListenError(Exception):
    """A listen address that cannot be bound; the message names it and says why."""


def bind_socket(listener: ListenAddress, receive_buffer: int) -> socket.socket:
    """A bound, non-blocking socket for ``listener``, made before the reactor adopts it.

    Made by hand because the options must be set before ``bind``: FREEBIND lets
    the passive node of a pair bind the virtual IP while the active node holds
    it (no ``net.ipv4.ip_nonlocal_bind`` needed), and the UDP receive buffer is
    sized before the first datagram can arrive.
    """
    udp = listener.transport == "udp"
    sock = socket.socket(listener.family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if listener.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        if udp:
            set_receive_buffer(sock, receive_buffer)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listener.host, listener.port))
        if not udp:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {listener}: {error.strerror or error}") from None
    return sock


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    """Is ``host`` an IP literal? Asked for every message sent; the answer rarely changes."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SIPDatagramProtocol(protocol.DatagramProtocol):
    noisy = False  # sipha logs its own "listening on" line

    def __init__(self, core: Any, listener: ListenAddress):
        self.core = core
        self.listener = listener

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        try:
            self.core.receive(data, Peer("udp", addr[0], addr[1]), self.listener)
        except Exception:
            # One bad message must never stop the others: log it and carry on.
            log.failure("error handling a datagram from {addr}", addr=addr)


class SIPStreamProtocol(protocol.Protocol):
    """One TCP connection, inbound or outbound, framed by Content-Length."""

    def __init__(self, transports: Transports, listener: ListenAddress):
        self.transports = transports
        self.listener = listener
        self.framer = StreamFramer(transports.max_message_size)
        self.peer: Peer | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:  # noqa: N802
        address: IAddress = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = Peer("tcp", address.host, address.port)  # type: ignore[attr-defined]
        self.transports.connections[(self.peer.host, self.peer.port)] = self
        for data in self.pending:
            self.transport.write(data)  # type: ignore[union-attr]
        self.pending.clear()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            for message in self.framer.feed(data):
                self.transports.core.receive(message, self.peer, self.listener)
        except ParseError as error:
            # The stream cannot be framed any further: answer what can be, then close.
            self.transports.core.reject(error, self.peer, self.listener)
            log.info("closing stream from {peer}: {reason}", peer=self.peer, reason=error.reason)
            self.transport.loseConnection()  # type: ignore[union-attr]
        except Exception:
            log.failure("error handling a stream message from {peer}", peer=self.peer)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self.peer is not None:
            key = (self.peer.host, self.peer.port)
            if self.transports.connections.get(key) is self:
                del self.transports.connections[key]

    def send(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]


class SIPStreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, transports: Transports, listener: ListenAddress):
        self.transports = transports
        self.listener = listener

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:  # noqa: N802
        return SIPStreamProtocol(self.transports, self.listener)


class Transports:
    """Every socket sipha owns, and the ``send`` the proxy core calls."""

    def __init__(self, reactor: Any, max_message_size: int = 65535):
        self.reactor = reactor
        self.max_message_size = max_message_size
        self.core: Any = None
        self.udp: dict[ListenAddress, Any] = {}
        self.tcp: dict[ListenAddress, Any] = {}
        self.connections: dict[tuple[str, int], SIPStreamProtocol] = {}

    def listen(self, listener: ListenAddress, receive_buffer: int) -> None:
        sock = bind_socket(listener, receive_buffer)
        try:
            if listener.transport == "udp":
                granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                if granted < receive_buffer:
                    log.warn(
                        "{listener}: receive buffer is {granted} bytes, not {wanted}: "
                        "raise net.core.rmem_max",
                        listener=listener,
                        granted=granted,
                        wanted=receive_buffer,
                    )
                self.udp[listener] = self.reactor.adoptDatagramPort(
                    sock.fileno(),
                    listener.family,
                    SIPDatagramProtocol(self.core, listener),
                    maxPacketSize=65535,
                )
            else:
                self.tcp[listener] = self.reactor.adoptStreamPort(
                    sock.fileno(), listener.family, SIPStreamFactory(self, listener)
                )
        finally:
            sock.close()  # the reactor holds its own duplicate
        log.info("sipha listening on {listener}", listener=listener)

    def receive_backlog(self) -> int:
        """The longest receive queue of sipha's UDP sockets, in bytes."""
        return max((queued_bytes(port.socket) for port in self.udp.values()), default=0)

    async def stop(self) -> None:
        for connection in list(self.connections.values()):
            connection.transport.loseConnection()  # type: ignore[union-attr]
        for port in [*self.udp.values(), *self.tcp.values()]:
            await port.stopListening()
        self.udp.clear()
        self.tcp.clear()

    def send(self, data: bytes, peer: Peer, local: ListenAddress) -> None:
        if not _is_ip(peer.host):
            # A host name in a URI: resolve it (A/AAAA) and send when known.
            self.reactor.resolve(peer.host).addCallbacks(
                lambda ip: self.send(data, peer._replace(host=ip), local),
                lambda failure: log.warn(
                    "cannot resolve {host}: {error}",
                    host=peer.host,
                    error=failure.getErrorMessage(),
                ),
            )
            return
        if peer.transport == "udp":
            port = self.udp.get(local)
            if port is None:
                log.warn("no UDP socket for {local}", local=local)
                return
            try:
                # The socket itself, not Port.write: that re-validates the
                # address on every datagram, which the hot path cannot afford.
                port.socket.sendto(data, (peer.host, peer.port))
            except OSError as error:
                # A full send buffer or unreachable peer: the transaction's own
                # retransmissions and timers deal with the loss.
                log.debug("send to {peer} failed: {error}", peer=peer, error=error)
            return
        connection = self.connections.get((peer.host, peer.port))
        if connection is None:
            connection = self._connect(peer, local)
        connection.send(data)

    def _connect(self, peer: Peer, local: ListenAddress) -> SIPStreamProtocol:
        connection = SIPStreamProtocol(self, local)
        self.connections[(peer.host, peer.port)] = connection
        factory = protocol.ClientFactory()
        factory.noisy = False
        factory.buildProtocol = lambda addr: connection  # type: ignore[method-assign]

        def failed(_connector: Any, reason: Any) -> None:
            log.info(
                "cannot connect to {peer}: {reason}", peer=peer, reason=reason.getErrorMessage()
            )
            if self.connections.get((peer.host, peer.port)) is connection:
                del self.connections[(peer.host, peer.port)]

        factory.clientConnectionFailed = failed  # type: ignore[method-assign]
        # From the listener's own address (the virtual IP): what Via and
        # Record-Route name, and what a client's firewall lets in. After a
        # takeover this is how an in-dialog request reaches a TCP client whose
        # connection ended with the other node.
        self.reactor.connectTCP(
            peer.host, peer.port, factory, timeout=5, bindAddress=(local.host, 0)
        )
        return connection
