"""A proxy core on a fake clock and a fake wire, for driving it message by message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from sipha.config import ListenAddress, parse_config
from sipha.message import Request, Response, parse_message
from sipha.proxy import ProxyCore
from sipha.service import build_core
from sipha.transaction import Peer

CALLER = Peer("udp", "192.0.2.10", 5062)
UDP_IN = ListenAddress("udp", "127.0.0.1", 5060)
TCP_IN = ListenAddress("tcp", "127.0.0.1", 5060)

CONFIG = """
[proxy]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
[[load_balancer.destination]]
group_id = 1
dst_uri = "sip:127.0.0.1:5071"
resources = "pstn=32"
[[load_balancer.destination]]
group_id = 1
dst_uri = "sip:127.0.0.1:5072"
resources = "pstn=32"
[[dispatcher.destination]]
setid = 1
destination = "sip:127.0.0.1:5071"
# The callers of these tests (192.0.2.0/24) send as fast as the tests go.
[pike]
trusted = ["192.0.2.0/24"]
"""


@dataclass
class Sent:
    data: bytes
    peer: Peer
    local: ListenAddress

    @property
    def message(self) -> Request | Response:
        return parse_message(self.data, stream=self.peer.reliable)


@dataclass
class Wire:
    """Everything the core sends, parsed, in order."""

    sent: list[Sent] = field(default_factory=list)

    def __call__(self, data: bytes, peer: Peer, local: ListenAddress) -> None:
        self.sent.append(Sent(data, peer, local))

    def take(self) -> list[Sent]:
        sent, self.sent = self.sent, []
        return sent


def make_proxy(config_text: str = CONFIG, locator: Any = None) -> tuple[ProxyCore, Clock, Wire]:
    clock, wire = Clock(), Wire()
    return build_core(parse_config(config_text), clock, wire, locator=locator), clock, wire


def invite(
    *,
    method: str = "INVITE",
    uri: str = "sip:service@127.0.0.1:5060",
    branch: str = "z9hG4bK-caller-1",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
    from_tag: str = "from-1",
    to_tag: str | None = None,
    routes: tuple[str, ...] = (),
    max_forwards: str | None = "70",
    via: str | None = None,
    extra: str = "",
    body: bytes = b"",
) -> bytes:
    """A caller's request, as bytes on the wire."""
    lines = [
        f"{method} {uri} SIP/2.0",
        via or f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch}",
        f'From: "caller" <sip:alice@192.0.2.10:5062>;tag={from_tag}',
        f"To: <sip:service@127.0.0.1:5060>{f';tag={to_tag}' if to_tag else ''}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.0.2.10:5062>",
        *(f"Route: {route}" for route in routes),
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    if extra:
        lines.append(extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def reply(
    request: Request,
    status: int,
    reason: str = "X",
    *,
    to_tag: str = "uas-1",
    record_route: bool = True,
    contact: str = "<sip:fs@127.0.0.1:5071>",
) -> bytes:
    """A media server's reply to ``request`` (as it arrived there), as bytes."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for key, name, value in request.headers:
        if key in ("via", "from", "call-id", "cseq") or (key == "record-route" and record_route):
            lines.append(f"{name}: {value}")
        elif key == "to":
            tag = f";tag={to_tag}" if status > 100 and request.to_tag is None else ""
            lines.append(f"{name}: {value}{tag}")
    if 100 < status < 300:
        lines.append(f"Contact: {contact}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
