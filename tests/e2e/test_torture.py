"""RFC 4475 torture cases against a real sipha, over UDP and TCP: the status line it answers.

A representative few of the cases tests/unit/test_torture.py runs through the
core, sent from a plain socket; the TCP ones that break framing also check
that sipha answers before it closes the connection, without waiting for a body.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping

import pytest

import sipp

ProxyFactory = Callable[..., sipp.SiphaProxy]

NO_PROBES: Mapping[str, Mapping[str, object]] = {
    "load_balancer": {"probing_interval": 0},
    "dispatcher": {"ping_interval": 0},
}


def request(start: str, *, via: str = "", extra: str = "", length: str = "0") -> bytes:
    """A REGISTER-like request from a caller at ``via``'s sent-by ({via} is filled in)."""
    lines = [
        start,
        via or "Via: SIP/2.0/{transport} {local};branch=z9hG4bK-e2e.{n}",
        "Max-Forwards: 70",
        "From: <sip:caller@example.net>;tag=e2e{n}",
        "To: <sip:caller@example.net>",
        "Call-ID: torture-e2e.{n}@192.0.2.20",
        f"CSeq: 1 {start.split()[0] if start.split() else ''}",
        "Contact: <sip:caller@{local}>",
        *([extra] if extra else []),
        f"Content-Length: {length}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


#: (id, message, status line sipha answers, or None when it must not answer at all)
CASES = [
    (
        "3.1.2.1-empty-via-parameter",
        request(
            "REGISTER sip:example.com SIP/2.0",
            via="Via: SIP/2.0/{transport} {local};;branch=z9hG4bK-e2e.{n};,,",
        ),
        "SIP/2.0 400 Empty Via parameter",
    ),
    (
        "3.1.2.8-white-space-in-request-uri",
        request("REGISTER sip:example.com; transport=udp SIP/2.0"),
        "SIP/2.0 400 White space in Request-URI",
    ),
    (
        "3.1.2.9-two-spaces",
        request("REGISTER  sip:example.com SIP/2.0"),
        "SIP/2.0 400 Request line elements not separated by one SP",
    ),
    (
        "3.1.2.10-trailing-space",
        request("REGISTER sip:example.com SIP/2.0  "),
        "SIP/2.0 400 Trailing white space in request line",
    ),
    (
        "3.1.2.11-escaped-headers",
        request("REGISTER sip:example.com?Route=%3Csip:evil.example%3E SIP/2.0"),
        "SIP/2.0 400 Bad Request-URI: headers not allowed",
    ),
    (
        "3.1.2.16-version",
        request("REGISTER sip:example.com SIP/3.0"),
        "SIP/2.0 505 Version SIP/3.0 Not Supported",
    ),
    (
        "3.3.2-unknown-scheme",
        request("OPTIONS unheard:of SIP/2.0"),
        "SIP/2.0 416 Unsupported URI Scheme",
    ),
    (
        "3.3.5-proxy-require",
        request("OPTIONS sip:bob@example.com SIP/2.0", extra="Proxy-Require: nothing-known"),
        "SIP/2.0 420 Bad Extension",
    ),
    (
        "3.3.8-two-call-ids",
        request("REGISTER sip:example.com SIP/2.0", extra="Call-ID: second@192.0.2.20"),
        "SIP/2.0 400 More than one Call-ID header",
    ),
    (
        "5118-4.2-ipv6-without-brackets",
        request("REGISTER sip:2001:db8::10 SIP/2.0"),
        "SIP/2.0 400 Bad Request-URI: IPv6 address without brackets in '2001:db8::10'",
    ),
    ("no-via", request("REGISTER sip:example.com SIP/2.0", via="X-No-Via: 1"), None),
]

_serial = iter(range(1, 1_000_000))


def fill(data: bytes, transport: str, local: tuple[str, int]) -> bytes:
    return (
        data.decode()
        .replace("{transport}", transport.upper())
        .replace("{local}", sipp.join_hostport(*local))
        .replace("{n}", str(next(_serial)))
        .encode()
    )


@pytest.fixture
def proxy(sipha_proxy: ProxyFactory) -> sipp.SiphaProxy:
    """sipha on free ports, in front of a registrar and media server nobody runs."""
    port = sipp.free_port()
    dead = f"sip:127.0.0.1:{sipp.free_port()}"
    return sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        destinations=[dead],
        sections=NO_PROBES,
    )


def exchange_udp(proxy: sipp.SiphaProxy, data: bytes, timeout: float = 1.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(fill(data, "udp", sock.getsockname()), sipp.split_hostport(proxy.address))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return b""


def exchange_tcp(proxy: sipp.SiphaProxy, data: bytes, timeout: float = 1.0) -> tuple[bytes, bool]:
    """What sipha answers on the connection (one message head), and whether it then closed it."""
    with socket.create_connection(sipp.split_hostport(proxy.address), timeout=timeout) as sock:
        sock.sendall(fill(data, "tcp", sock.getsockname()))
        received = b""
        try:
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65535)):
                received += chunk
            sock.settimeout(0.5)
            return received, sock.recv(65535) == b""
        except TimeoutError:
            return received, False


@pytest.mark.parametrize(("data", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_torture_case_over_udp(proxy: sipp.SiphaProxy, data: bytes, status: str | None) -> None:
    answer = exchange_udp(proxy, data)
    assert answer.partition(b"\r\n")[0].decode() == (status or "")


@pytest.mark.parametrize(("data", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_torture_case_over_tcp(proxy: sipp.SiphaProxy, data: bytes, status: str | None) -> None:
    answer, closed = exchange_tcp(proxy, data)
    assert answer.partition(b"\r\n")[0].decode() == (status or "")
    assert not closed  # a parse error in a well-framed message leaves the stream usable


@pytest.mark.parametrize(
    ("length", "status"),
    [
        (str(10 * 1024 * 1024), "SIP/2.0 513 Message Too Large"),
        ("-1", "SIP/2.0 400 Bad Content-Length"),
        ("0\r\nl: 4", "SIP/2.0 400 More than one Content-Length header"),
    ],
)
def test_a_stream_that_cannot_be_framed_is_answered_then_closed(
    proxy: sipp.SiphaProxy, length: str, status: str
) -> None:
    """§18.3: nothing after a bad head can be framed; the answer goes first, the body is
    not waited for (a 10 MB one is neither buffered nor read)."""
    answer, closed = exchange_tcp(proxy, request("REGISTER sip:example.com SIP/2.0", length=length))
    assert answer.partition(b"\r\n")[0].decode() == status
    assert closed
    assert proxy.running
