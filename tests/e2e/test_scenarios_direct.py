"""The sipp scenarios and the harness, checked without sipha in between.

Callers run straight against media servers (sipp to sipp), and the
scenarios whose answer only sipha gives (483, 405, 400) against a small
in-process responder that answers the way sipha must.  If these fail, an
end-to-end failure says nothing about sipha.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import sipp

TRANSPORTS = [pytest.param("u1", id="udp"), pytest.param("t1", id="tcp")]

Caller = Callable[..., sipp.SippResult]
Starter = Callable[..., sipp.MediaServer]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_calls_complete(transport: str, media_server: Starter, sipp_caller: Caller) -> None:
    server = media_server(sipp.free_port(), "uas.xml", transport)

    result = sipp_caller("uac.xml", server.address, calls=20, rate=100, transport=transport)

    assert (result.successful, result.failed) == (20, 0)
    # The benchmark reads both response times from the statistics.
    assert {"ResponseTime1(C)", "ResponseTime2(C)"} <= result.stats.keys()
    assert server.wait_for_calls(20) == 20
    assert server.stop().failed == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_while_ringing(transport: str, media_server: Starter, sipp_caller: Caller) -> None:
    server = media_server(sipp.free_port(), "uas_ring.xml", transport)

    result = sipp_caller(
        "uac_cancel.xml", server.address, calls=3, rate=20, transport=transport, trace_msg=True
    )

    assert (result.successful, result.failed) == (3, 0)
    assert server.wait_for_calls(3) == 3
    # CANCEL and the ACK for the 487 reuse the INVITE's branch.
    invite_branches = _branches(result.messages, "INVITE sip:")
    assert len(invite_branches) == 3
    assert _branches(result.messages, "CANCEL sip:") == invite_branches
    assert _branches(result.messages, "ACK sip:") == invite_branches


def test_487_carries_every_via_of_the_invite(
    tmp_path: Path, media_server: Starter, sipp_caller: Caller
) -> None:
    # The INVITE as sipha relays it: its own Via, its Record-Route, then the
    # caller's Via.  The CANCEL has only sipha's Via.
    scenario = (sipp.SCENARIOS / "uac_cancel.xml").read_text(encoding="latin-1")
    upstream = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKupstream"
    record_route = "Record-Route: <sip:127.0.0.1:5060;lr>"
    scenario = scenario.replace(
        ";branch=[branch]\n", f";branch=[branch]\n      {record_route}\n      Via: {upstream}\n", 1
    )
    proxied = tmp_path / "uac_cancel_two_vias.xml"
    proxied.write_text(scenario, encoding="latin-1")
    server = media_server(sipp.free_port(), "uas_ring.xml", trace_msg=True)

    result = sipp_caller(proxied, server.address, trace_msg=True)

    assert server.wait_for_calls(1) == 1
    response = re.search(r"^SIP/2\.0 487 .*?\r?\n\r?\n", result.messages, re.S | re.M)
    assert response is not None
    vias = [
        value.strip()
        for header in re.findall(r"^Via: (.*?)\r?$", response.group(0), re.M)
        for value in re.split(r",\s*(?=SIP/2\.0/)", header)
    ]
    assert len(vias) == 2
    assert vias[1] == upstream
    assert re.search(r"^CSeq: 1 INVITE\r?$", response.group(0), re.M)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register(transport: str, media_server: Starter, sipp_caller: Caller) -> None:
    server = media_server(sipp.free_port(), "uas_register.xml", transport)

    result = sipp_caller("register.xml", server.address, calls=5, rate=50, transport=transport)

    assert (result.successful, result.failed) == (5, 0)
    assert server.wait_for_calls(5) == 5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_registrar_calls_back_the_client_that_registered(
    transport: str, tmp_path: Path, media_server: Starter, sipp_caller: Caller
) -> None:
    # The REGISTER as sipha relays it carries a Path, which the registrar
    # echoes and routes its INVITE by; sipp sends that INVITE back to where
    # the REGISTER came from, whatever the Contact says.
    scenario = (sipp.SCENARIOS / "client_registers_then_takes_a_call.xml").read_text(
        encoding="latin-1"
    )
    scenario = scenario.replace("Supported: path\n", "Path: <sip:127.0.0.1:9;lr>\n", 1)
    with_path = tmp_path / "client_registers_with_a_path.xml"
    with_path.write_text(scenario, encoding="latin-1")
    server = media_server(sipp.free_port(), "uas_registrar_calls_back.xml", transport)
    unreachable = ["-set", "contact_port", str(sipp.free_port())]

    result = sipp_caller(with_path, server.address, transport=transport, extra=unreachable)

    assert (result.successful, result.failed) == (1, 0)
    assert server.wait_for_calls(1) == 1


def test_caller_claiming_another_address(media_server: Starter, sipp_caller: Caller) -> None:
    server = media_server(sipp.free_port(), trace_msg=True)

    sipp_caller("uac_claiming_another_address.xml", server.address)

    assert server.wait_for_calls(1) == 1
    assert "X-AUTH-IP: 203.0.113.66" in server.stop().messages


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_503_fails_the_call(transport: str, media_server: Starter, sipp_caller: Caller) -> None:
    server = media_server(sipp.free_port(), "uas_503.xml", transport)

    result = sipp_caller(
        "uac.xml", server.address, calls=2, rate=20, transport=transport, check=False
    )

    assert (result.successful, result.failed) == (0, 2)
    assert result.returncode == 1
    # sipp ACKs the unexpected 503 on its own, which completes the server side.
    assert server.wait_for_calls(2) == 2


def test_media_server_answers_probes(media_server: Starter, sipp_caller: Caller) -> None:
    server = media_server(sipp.free_port())

    answer = sipp.send_options(server.address)

    assert answer is not None
    assert answer.startswith("SIP/2.0 200 ")
    sipp_caller("uac.xml", server.address)
    assert server.wait_for_calls(1) == 1
    result = server.stop()
    # The probe is an incoming call of its own, which never completes.
    assert int(result.stats["IncomingCall(C)"]) == 2
    assert (result.successful, result.failed) == (1, 0)


def test_failed_call_fails_loudly(sipp_caller: Caller) -> None:
    nobody = sipp.free_port()

    with pytest.raises(pytest.fail.Exception) as failure:
        sipp_caller("uac.xml", f"127.0.0.1:{nobody}", recv_timeout=0.5, timeout=5)

    assert "receive timeout" in str(failure.value)


# --------------------------------------------------------------------------- sipha's own answers


class StubResponder:
    """Answers every request but ACK with one fixed status, from where it was received.

    Stands in for sipha in the cases where sipha answers by itself, to check
    that the scenarios accept the answer sipha must give.  An ACK is recorded
    and never answered (RFC 3261 17.1.1.3).
    """

    def __init__(self, status: str, transport: str, headers: Sequence[str] = ()) -> None:
        self.status = status
        self.headers = list(headers)
        self.port = sipp.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.requests: list[str] = []
        kind = socket.SOCK_STREAM if transport == "t1" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.1)
        if kind == socket.SOCK_STREAM:
            self.sock.listen()
        self.stopping = threading.Event()
        target = self._serve_tcp if kind == socket.SOCK_STREAM else self._serve_udp
        self.thread = threading.Thread(target=target, daemon=True)

    def __enter__(self) -> StubResponder:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()

    def answer(self, request: str) -> bytes:
        self.requests.append(request)
        if request.startswith("ACK "):
            return b""
        lines = request.split("\r\n\r\n", 1)[0].split("\r\n")
        copied = [line for line in lines[1:] if re.match(r"(Via|From|Call-ID|CSeq):", line, re.I)]
        to = next(line for line in lines if line.lower().startswith("to:"))
        if ";tag=" not in to:
            to += ";tag=stub"
        response = [f"SIP/2.0 {self.status}", *copied, to, *self.headers, "Content-Length: 0"]
        return ("\r\n".join(response) + "\r\n\r\n").encode()

    def _serve_udp(self) -> None:
        while not self.stopping.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if answer := self.answer(data.decode()):
                self.sock.sendto(answer, source)

    def _serve_tcp(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(0.1)
                buffer = b""
                while not self.stopping.is_set():
                    try:
                        chunk = connection.recv(65535)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    buffer += chunk
                    while (request := _frame(buffer)) is not None:
                        buffer = buffer[len(request) :]
                        if answer := self.answer(request.decode()):
                            connection.sendall(answer)


def _frame(buffer: bytes) -> bytes | None:
    """The first complete message in a stream buffer (Content-Length framing), or None."""
    head, found, _ = buffer.partition(b"\r\n\r\n")
    if not found:
        return None
    length = re.search(rb"^(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", head, re.I | re.M)
    end = len(head) + 4 + (int(length.group(1)) if length else 0)
    return buffer[:end] if len(buffer) >= end else None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_forwards_zero_gets_483(transport: str, sipp_caller: Caller) -> None:
    with StubResponder("483 Too Many Hops", transport) as stub:
        sipp_caller("options_maxfwd0.xml", stub.address, transport=transport)

    assert "\r\nMax-Forwards: 0\r\n" in stub.requests[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_subscribe_gets_405(transport: str, sipp_caller: Caller) -> None:
    allow = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"
    with StubResponder("405 Method Not Allowed", transport, [allow]) as stub:
        sipp_caller("subscribe.xml", stub.address, transport=transport)

    assert stub.requests[0].startswith("SUBSCRIBE ")


def test_subscribe_needs_invite_in_allow(sipp_caller: Caller) -> None:
    with StubResponder("405 Method Not Allowed", "u1", ["Allow: REINVITE, OPTIONS"]) as stub:
        result = sipp_caller("subscribe.xml", stub.address, check=False)

    assert (result.successful, result.failed) == (0, 1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broken_via_gets_400(transport: str, sipp_caller: Caller) -> None:
    with StubResponder("400 Bad Request", transport) as stub:
        sipp_caller("broken_via.xml", stub.address, transport=transport)

    assert ";;branch=" in stub.requests[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", ["408 Request Timeout", "500 Service Unavailable Downstream"])
def test_failed_call_is_acked(transport: str, status: str, sipp_caller: Caller) -> None:
    with StubResponder(status, transport) as stub:
        result = sipp_caller("uac_fail.xml", stub.address, transport=transport, trace_msg=True)
        sipp.wait_until(lambda: len(stub.requests) >= 2, 2.0)

    assert [request.split(" ", 1)[0] for request in stub.requests] == ["INVITE", "ACK"]
    # The ACK of a non-2xx answer belongs to the INVITE transaction.
    assert _branches(result.messages, "ACK sip:") == _branches(result.messages, "INVITE sip:")
    assert "ResponseTime1(C)" in result.stats


def test_failed_call_needs_an_error(sipp_caller: Caller) -> None:
    with StubResponder("486 Busy Here", "u1") as stub:
        result = sipp_caller("uac_fail.xml", stub.address, check=False)

    assert (result.successful, result.failed) == (0, 1)


def _branches(messages: str, start: str) -> list[str]:
    """Via branches of the requests beginning with ``start`` in a -trace_msg log."""
    pattern = rf"^{re.escape(start)}[^\n]*\n(?:(?!Via:)[^\n]*\n)*?Via: [^\n]*;branch=([^;\s]+)"
    return re.findall(pattern, messages, re.M)
