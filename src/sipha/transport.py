"""The Twisted edge: UDP and TCP sockets feeding the sans-IO proxy core.

Inbound, each datagram or framed stream message goes to ``core.receive`` with
the peer it came from and the listener it arrived on. Outbound,
:class:`Transports` implements the core's ``send(data, peer, local)``: UDP
leaves from the listener's own socket (so replies come back to it), once the
messages that were waiting have been handled (:meth:`Transports.flush`), TCP reuses
the connection a peer already has with sipha, in either direction (RFC 3261
§18), and opens one, from the listener's address, only when there is none.
"""

from __future__ import annotations

import resource
import socket
import struct
import time
from collections import Counter
from typing import Any

from twisted.internet import protocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IReadDescriptor
from twisted.logger import LogLevel
from twisted.protocols import policies
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from sipha.config import LimitsConfig, ListenAddress
from sipha.logs import Log
from sipha.message import ParseError, StreamFramer
from sipha.tls import TLSContexts, describe_failure
from sipha.transaction import Peer
from sipha.uri import is_ip_address

log = Log(namespace="sipha.transport")

#: Datagrams held at most before they are sent (:meth:`Transports.flush`): about
#: 2 ms of handling at full load.
UDP_SEND_BATCH = 64
#: Datagrams read at most in one turn of the reactor, so that other sockets and
#: timers get theirs under a flood.
UDP_READ_BATCH = 256

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


# Linux: the kernel stamps each datagram as it arrives, so peeking at the oldest
# one in a receive queue tells how long it has waited.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("qq")
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
# Linux: the socket's memory counters; the last is the datagrams it dropped, full.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO = struct.Struct("9I")


def receive_queue(sock: socket.socket, now: float) -> tuple[float, int]:
    """How long the oldest datagram waiting in ``sock`` has waited (0.0 for none), and
    how many datagrams the kernel has dropped so far because the queue was full.

    Waiting time, not bytes, is what callers feel: past T1 they retransmit.
    """
    waited = 0.0
    try:
        _, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(_TIMESPEC.size), _PEEK)
    except OSError:  # nothing waits (or an ICMP error, which the next read reports)
        ancillary = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            waited = max(0.0, now - seconds - nanoseconds / 1e9)
    try:
        meminfo = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
    except (OSError, struct.error):
        return waited, 0
    return waited, meminfo[-1]


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
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # for receive_queue
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


@implementer(IReadDescriptor)
class SIPDatagramReader:
    """Reads a UDP listener's socket for the reactor, and sends what the reading held.

    In place of Twisted's ``udp.Port``: that one hands each datagram on through
    layers of calls and leaves the datagrams sent meanwhile to a timed call,
    where this reads every datagram waiting (up to :data:`UDP_READ_BATCH`),
    hands each to the core, then sends the answers at once
    (:meth:`Transports.flush`).
    """

    def __init__(self, transports: Transports, listener: ListenAddress, sock: socket.socket):
        self.transports = transports
        self.listener = listener
        self.socket = sock

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:  # noqa: N802
        return f"sipha {self.listener}"

    def doRead(self) -> None:  # noqa: N802
        transports, listener, receive = self.transports, self.listener, self.socket.recvfrom
        core = transports.core
        transports.reading = True
        try:
            for _ in range(UDP_READ_BATCH):
                try:
                    data, addr = receive(65535)
                except BlockingIOError:
                    break
                except OSError as error:
                    # An unconnected socket gets no ICMP errors without
                    # IP_RECVERR; whatever comes instead, the next turn reads on.
                    log.debug("{listener}: read failed: {error}", listener=listener, error=error)
                    break
                try:
                    core.receive(data, Peer("udp", addr[0], addr[1]), listener)
                except Exception:
                    # One bad message must never stop the others: log it and carry on.
                    log.failure("error handling a datagram from {addr}", addr=addr)
        finally:
            transports.reading = False
            transports.flush()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.socket.close()

    def stop(self) -> None:
        self.transports.reactor.removeReader(self)
        self.connectionLost()


class SIPStreamProtocol(protocol.Protocol, policies.TimeoutMixin):
    """One TCP or TLS connection, inbound or outbound, framed by Content-Length.

    Bounded in time: it is closed after ``[limits] tcp_idle_timeout`` seconds
    without a byte (a CRLF keep-alive counts), and when a message it began is
    not complete within ``tcp_message_timeout`` (a slow sender); in size by
    the framer (``max_message_size``).
    """

    def __init__(self, transports: Transports, listener: ListenAddress, peer: Peer | None = None):
        self.transports = transports
        self.listener = listener
        self.framer = StreamFramer(transports.max_message_size)
        self.peer = peer
        self.pending: list[bytes] = []
        self._slow: Any = None  # the deadline of a message begun and not complete

    def connectionMade(self) -> None:  # noqa: N802
        if self.peer is None:  # inbound; an outbound one keeps the name it was found for
            address: IAddress = self.transport.getPeer()  # type: ignore[union-attr]
            self.peer = Peer(self.listener.transport, address.host, address.port)  # type: ignore[attr-defined]
        self.transports.opened(self)
        self.setTimeout(self.transports.limits.tcp_idle_timeout)
        for data in self.pending:
            self.transport.write(data)  # type: ignore[union-attr]
        self.pending.clear()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.resetTimeout()
        try:
            for message in self.framer.feed(data):
                self.transports.core.receive(message, self.peer, self.listener)
        except ParseError as error:
            # The stream cannot be framed any further: answer what can be, then close.
            self.transports.core.reject(error, self.peer, self.listener)
            log.throttled(
                LogLevel.info,
                "closing stream from {peer}: {reason}",
                peer=self.peer,
                reason=error.reason,
            )
            self.transport.loseConnection()  # type: ignore[union-attr]
        except Exception:
            log.failure("error handling a stream message from {peer}", peer=self.peer)
        self._watch_slow_sender()

    def _watch_slow_sender(self) -> None:
        if self.framer.pending and self._slow is None:
            limit = self.transports.limits.tcp_message_timeout
            self._slow = self.transports.reactor.callLater(limit, self._too_slow)
        elif not self.framer.pending and self._slow is not None:
            self._slow.cancel()
            self._slow = None

    def _too_slow(self) -> None:
        self._slow = None
        log.throttled(
            LogLevel.info,
            "closing stream from {peer}: a message not complete in {limit:g} s",
            peer=self.peer,
            limit=self.transports.limits.tcp_message_timeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def timeoutConnection(self) -> None:  # noqa: N802
        log.throttled(LogLevel.info, "closing idle stream from {peer}", peer=self.peer)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.setTimeout(None)
        if self._slow is not None:
            self._slow.cancel()
            self._slow = None
        if self.peer is not None:
            self.transports.closed(self)
        if self.listener.transport == "tls" and reason is not None and self.peer is not None:
            error = reason.value
            if not isinstance(error, ConnectionDone | ConnectionLost):
                log.throttled(
                    LogLevel.warn,
                    "TLS with {host}:{port} failed: {why}",
                    host=self.peer.host,
                    port=self.peer.port,
                    why=describe_failure(error, self.peer.name or self.peer.host),
                )

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)


class SIPStreamFactory(protocol.Factory):
    """Accepts a connection on a stream listener, within the bounds; TLS inside when it is one."""

    noisy = False

    def __init__(self, transports: Transports, listener: ListenAddress):
        self.transports = transports
        self.listener = listener
        self.tls: TLSMemoryBIOFactory | None = None
        if listener.transport == "tls":
            self.tls = TLSMemoryBIOFactory(transports.tls, False, self._plain())

    def _plain(self) -> protocol.Factory:
        plain = protocol.Factory()
        plain.noisy = False
        plain.buildProtocol = lambda addr: SIPStreamProtocol(self.transports, self.listener)  # type: ignore[method-assign]
        return plain

    def buildProtocol(self, addr: Any) -> protocol.Protocol | None:  # noqa: N802
        refusal = self.transports.refusal(addr.host)
        if refusal is not None:
            self.transports.refused += 1
            log.throttled(
                LogLevel.warn,
                "refused a {transport} connection from {host}: {why}",
                transport=self.listener.transport,
                host=addr.host,
                why=refusal,
            )
            return None  # Twisted closes it at once
        if self.tls is not None:
            return self.tls.buildProtocol(addr)
        return SIPStreamProtocol(self.transports, self.listener)


class Transports:
    """Every socket sipha owns, and the ``send`` the proxy core calls."""

    def __init__(
        self,
        reactor: Any,
        max_message_size: int = 65535,
        limits: LimitsConfig | None = None,
        tls: TLSContexts | None = None,
    ):
        self.reactor = reactor
        self.max_message_size = max_message_size
        self.limits = limits or LimitsConfig()
        self.tls = tls
        self.core: Any = None
        self.udp: dict[ListenAddress, SIPDatagramReader] = {}
        self.tcp: dict[ListenAddress, Any] = {}
        #: Open streams by peer (transport, host, port), in either direction.
        self.connections: dict[Peer, SIPStreamProtocol] = {}
        #: Datagrams to send once the messages ready now are handled (:meth:`flush`).
        self._held: list[tuple[socket.socket, bytes, tuple[str, int]]] = []
        #: A reader is handing datagrams to the core, and sends what they held when done.
        self.reading = False
        self._per_source: Counter[str] = Counter()
        self.refused = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        #: Streams allowed at once: the bound, and the descriptors that leave a reserve.
        self.stream_limit = min(
            self.limits.tcp_connections, max(1, soft - self.limits.reserved_descriptors - 32)
        )

    def refusal(self, host: str) -> str | None:
        """Why a new connection from ``host`` must be refused, or None."""
        if len(self.connections) >= self.stream_limit:
            return f"{len(self.connections)} connections open, the most allowed"
        if self._per_source[host] >= self.limits.tcp_connections_per_source:
            return f"{self._per_source[host]} connections from it already"
        return None

    def opened(self, connection: SIPStreamProtocol) -> None:
        assert connection.peer is not None
        self.connections[connection.peer] = connection
        self._per_source[connection.peer.host] += 1

    def closed(self, connection: SIPStreamProtocol) -> None:
        assert connection.peer is not None
        if self.connections.get(connection.peer) is connection:
            del self.connections[connection.peer]
        self._per_source[connection.peer.host] -= 1
        if self._per_source[connection.peer.host] <= 0:
            del self._per_source[connection.peer.host]

    def listen(self, listener: ListenAddress, receive_buffer: int) -> ListenAddress:
        """Bind and serve ``listener``; returns it as bound (port 0: the port the kernel chose)."""
        sock = bind_socket(listener, receive_buffer)
        if listener.port == 0:
            listener = listener._replace(port=sock.getsockname()[1])
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
            reader = SIPDatagramReader(self, listener, sock)
            self.udp[listener] = reader
            self.reactor.addReader(reader)
        else:
            try:
                self.tcp[listener] = self.reactor.adoptStreamPort(
                    sock.fileno(), listener.family, SIPStreamFactory(self, listener)
                )
            finally:
                sock.close()  # the reactor holds its own duplicate
        log.info("sipha listening on {listener}", listener=listener)
        return listener

    def receive_backlog(self) -> tuple[float, int]:
        """Of sipha's UDP sockets: the longest a datagram has waited to be read, in
        seconds, and the datagrams dropped so far because a queue was full."""
        now = time.time()  # the kernel's stamps are wall-clock time
        queues = [receive_queue(port.socket, now) for port in self.udp.values()]
        return max((waited for waited, _ in queues), default=0.0), sum(d for _, d in queues)

    def flush(self) -> None:
        """Send the datagrams held while the reactor read what had arrived.

        Sent one after another, once the messages that were waiting have been
        handled, rather than each amid the handling: the kernel's send path
        stays warm, and a peer woken by the first finds the others there.
        Under load that takes a quarter off the CPU per call; a datagram waits
        at most for :data:`UDP_SEND_BATCH` messages' handling.
        """
        held, self._held = self._held, []
        for sock, data, address in held:
            try:
                sock.sendto(data, address)
            except OSError as error:
                # A full send buffer or unreachable peer: the transaction's own
                # retransmissions and timers deal with the loss.
                log.debug("send to {address} failed: {error}", address=address, error=error)

    async def stop(self) -> None:
        self.flush()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.loseConnection()
        for reader in self.udp.values():
            reader.stop()
        for port in self.tcp.values():
            await port.stopListening()
        self.udp.clear()
        self.tcp.clear()

    def send(self, data: bytes, peer: Peer, local: ListenAddress) -> None:
        if not is_ip_address(peer.host):
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
            reader = self.udp.get(local)
            if reader is None:
                log.warn("no UDP socket for {local}", local=local)
                return
            held = self._held
            held.append((reader.socket, data, (peer.host, peer.port)))
            if len(held) >= UDP_SEND_BATCH:
                self.flush()
            elif len(held) == 1 and not self.reading:
                # Sent from a timer or a callback: once the reactor is done with it.
                self.reactor.callLater(0, self.flush)
            return
        connection = self.connections.get(peer)
        if connection is None:
            connection = self._connect(peer, local)
        connection.send(data)

    def _connect(self, peer: Peer, local: ListenAddress) -> SIPStreamProtocol:
        connection = SIPStreamProtocol(self, local, peer)
        self.connections[peer] = connection
        factory: protocol.ClientFactory = protocol.ClientFactory()
        factory.noisy = False
        factory.buildProtocol = lambda addr: connection  # type: ignore[method-assign]

        def failed(_connector: Any, reason: Any) -> None:
            log.throttled(
                LogLevel.info,
                "cannot connect to {peer}: {reason}",
                peer=peer,
                reason=reason.getErrorMessage(),
            )
            if self.connections.get(peer) is connection:
                del self.connections[peer]

        factory.clientConnectionFailed = failed  # type: ignore[method-assign]
        outbound: protocol.Factory = factory
        if peer.transport == "tls":
            assert self.tls is not None, "TLS needs [tls] and a tls: listener"
            outbound = TLSMemoryBIOFactory(self.tls.client(peer.name or peer.host), True, factory)
        # From the listener's own address (the virtual IP): what Via and
        # Record-Route name, and what a client's firewall lets in. After a
        # takeover this is how an in-dialog request reaches a TCP client whose
        # connection ended with the other node.
        self.reactor.connectTCP(
            peer.host, peer.port, outbound, timeout=5, bindAddress=(local.host, 0)
        )
        return connection
