"""Destinations published in DNS (RFC 3263), end to end: a real DNS server, sipha and sipp.

The name server is twisted.names' own (``twistd dns``) on the loopback,
serving the test's zone; sipha asks only it (``[dns] nameservers``).
"""

from __future__ import annotations

from collections.abc import Callable

from test_operations import ctl_json
from test_proxy import NO_PROBES

import sipp

Caller = Callable[..., sipp.SippResult]
ServerFactory = Callable[..., sipp.MediaServer]
ProxyFactory = Callable[..., sipp.SiphaProxy]
NameServerFactory = Callable[..., sipp.NameServer]


def test_a_pool_published_in_srv_records_fails_over_to_its_next_server(
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    name_server: NameServerFactory,
    sipp_caller: Caller,
) -> None:
    """The load balancer's destination is a name: NAPTR and SRV records give its two
    servers by priority. Calls go to the first; once it stops answering, each call
    waits one fr_timer for it, then goes to the second."""
    first, second = media_server(sipp.free_port()), media_server(sipp.free_port())
    dns = name_server(
        [
            'NAPTR("pool.sipha.test", 10, 50, b"s", b"SIP+D2U", b"", "_sip._udp.pool.sipha.test")',
            f'SRV("_sip._udp.pool.sipha.test", 10, 0, {first.port}, "fs1.sipha.test")',
            f'SRV("_sip._udp.pool.sipha.test", 20, 0, {second.port}, "fs2.sipha.test")',
            'A("fs1.sipha.test", "127.0.0.1")',
            'A("fs2.sipha.test", "127.0.0.1")',
        ]
    )
    proxy = sipha_proxy(
        listen=[f"udp:127.0.0.1:{sipp.free_port()}"],
        destinations=["sip:pool.sipha.test"],
        fr_timer=1.0,
        sections={**NO_PROBES, "dns": {"nameservers": [dns.address]}},
    )

    sipp_caller("uac.xml", proxy.address, calls=3, rate=10)
    assert first.wait_for_calls(3) == 3
    assert second.calls_received == 0
    assert first.stop().failed == 0

    result = sipp_caller("uac.xml", proxy.address, calls=3, rate=10)

    assert (result.successful, result.failed) == (3, 0)
    assert second.wait_for_calls(3) == 3
    assert second.stop().failed == 0
    assert "cannot resolve" not in proxy.log()


def test_a_name_that_does_not_resolve_is_logged_once_and_counted(
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    name_server: NameServerFactory,
    sipp_caller: Caller,
) -> None:
    """The first destination's name is missing from DNS: every call goes to the second,
    at once, and the log says why only once."""
    server = media_server(sipp.free_port())
    dns = name_server([])
    proxy = sipha_proxy(
        listen=[f"udp:127.0.0.1:{sipp.free_port()}"],
        destinations=["sip:missing.sipha.test", server.uri],
        sections={**NO_PROBES, "dns": {"nameservers": [dns.address]}},
    )

    result = sipp_caller("uac.xml", proxy.address, calls=3, rate=10)

    assert result.failed == 0
    assert server.wait_for_calls(3) == 3
    assert proxy.log().count("cannot resolve missing.sipha.test") == 1
    assert ctl_json(proxy, "counters")["dns_failures"] == 3
