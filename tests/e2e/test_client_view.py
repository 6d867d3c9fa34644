"""What media servers learn of the client behind sipha, end to end: its address, and a way back.

A media server sees every request come from sipha. The client address
header (X-AUTH-IP) tells it who sent a call; the Path sipha adds to a
REGISTER brings the media server's calls to the registered client back
through sipha, to the address the client registered from (RFC 3327).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_proxy import NO_PROBES, TRANSPORTS, header_values, traced

import sipp

Caller = Callable[..., sipp.SippResult]
ServerFactory = Callable[..., sipp.MediaServer]
ProxyFactory = Callable[..., sipp.SiphaProxy]


def test_media_server_gets_the_callers_address_not_the_one_it_claims(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    server = media_server(sipp.free_port(), trace_msg=True)
    port = sipp.free_port()
    proxy = sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}"],
        destinations=[server.uri],
        sections={**NO_PROBES, "route": {"client_port_header": "X-AUTH-PORT"}},
    )
    caller_port = sipp.free_port()

    sipp_caller("uac_claiming_another_address.xml", proxy.address, local_port=caller_port)

    result = server.stop()
    assert result.failed == 0
    (invite,) = [m for m in traced(result.messages, "received") if m.startswith("INVITE ")]
    assert header_values(invite, "X-AUTH-IP") == ["127.0.0.1"]
    assert header_values(invite, "X-AUTH-PORT") == [str(caller_port)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_registrar_calls_a_client_behind_nat_through_sipha(
    transport: str, sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """The client's Contact names a port where nothing listens, as behind NAT: only the
    address its REGISTER came from, which sipha put in the Path, reaches it."""
    registrar = media_server(sipp.free_port(), "uas_registrar_calls_back.xml", trace_msg=True)
    port = sipp.free_port()
    proxy = sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        destinations=[registrar.uri],
        sections=NO_PROBES,
    )
    unreachable = sipp.free_port()

    result = sipp_caller(
        "client_registers_then_takes_a_call.xml",
        proxy.address,
        transport=transport,
        extra=["-set", "contact_port", str(unreachable)],
        trace_msg=True,
    )

    assert (result.successful, result.failed) == (1, 0)
    assert registrar.wait_for_calls(1) == 1
    received = registrar.stop()
    assert received.failed == 0
    (register,) = [m for m in traced(received.messages, "received") if m.startswith("REGISTER ")]
    (path,) = header_values(register, "Path")
    assert path.startswith(f"<sip:127.0.0.1:{port};lr;received=sip:127.0.0.1:")
    (invite,) = [m for m in traced(result.messages, "received") if m.startswith("INVITE ")]
    assert f":{unreachable}" in invite.partition("\r\n")[0]  # to the Contact, by the address
