"""TLS: customers and media servers over TLS, verified, with certificates made for the test.

Debian's sipp has no TLS, so socat carries it: a sipp caller talks TCP to a
socat that speaks TLS to sipha, and sipha speaks TLS to a socat in front of a
sipp media server (which may ask for sipha's client certificate). What sipha
sees and sends on those legs is real TLS; the certificates come from a CA
made for the test (tests/tlskit.py).
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import sipp

sys.path.insert(0, str(Path(__file__).parents[1]))

from tlskit import CertificateAuthority, Identity

NO_PROBES = {"load_balancer": {"probing_interval": 0}, "dispatcher": {"ping_interval": 0}}


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path)


@pytest.fixture
def socat(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start ``socat LEFT RIGHT``; returns the port LEFT listens on. Stopped by PID."""
    binary = shutil.which("socat")
    if binary is None:
        pytest.fail("socat (Debian package socat) is required", pytrace=False)
    processes: list[subprocess.Popen[bytes]] = []

    def start(left: str, right: str) -> int:
        port = sipp.free_tcp_port()
        with (tmp_path / f"socat-{port}.log").open("wb") as log:
            process = subprocess.Popen(
                [binary, "-d", "-d", left.format(port=port), right],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        processes.append(process)
        assert sipp.wait_until(lambda: sipp.is_bound(process.pid, port, "tcp"), timeout=5)
        return port

    yield start
    for process in processes:
        sipp.terminate(process, 5)


def tls_section(identity: Identity, ca: CertificateAuthority) -> dict[str, object]:
    return {
        "certificate": str(identity.certificate),
        "private_key": str(identity.private_key),
        "ca_certificates": str(ca.path),
    }


def listeners() -> list[str]:
    """UDP, TLS, and TCP: behind socat, sipp's Contact says TCP, so its ACK and BYE go so."""
    return [
        f"udp:127.0.0.1:{sipp.free_udp_port()}",
        f"tls:127.0.0.1:{sipp.free_tcp_port()}",
        f"tcp:127.0.0.1:{sipp.free_tcp_port()}",
    ]


def tls_media_server(
    socat: Callable[..., int],
    media_server: Callable[..., sipp.MediaServer],
    identity: Identity,
    ca: CertificateAuthority,
    *,
    ask_client_certificate: bool = False,
) -> str:
    """A sipp media server behind a socat TLS listener; returns its destination URI."""
    server = media_server(sipp.free_tcp_port(), transport="t1", trace_msg=True)
    verify = f"verify=1,cafile={ca.path}" if ask_client_certificate else "verify=0"
    port = socat(
        f"OPENSSL-LISTEN:{{port}},bind=127.0.0.1,reuseaddr,fork,"
        f"cert={identity.certificate},key={identity.private_key},{verify}",
        f"TCP:127.0.0.1:{server.port}",
    )
    return f"sip:127.0.0.1:{port};transport=tls"


def test_a_tls_caller_reaches_a_udp_media_server(sipha_proxy, media_server, sipp_caller, socat, ca):
    server = media_server(sipp.free_udp_port(), trace_msg=True)
    proxy = sipha_proxy(
        listen=listeners(),
        destinations=[server.uri],
        sections={**NO_PROBES, "tls": tls_section(ca.issue("sipha", "127.0.0.1"), ca)},
    )
    # The caller's TLS: socat checks sipha's certificate against the test's CA.
    port = socat(
        "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
        f"OPENSSL:{proxy.address_for('tls')},cafile={ca.path},verify=1,commonname=127.0.0.1",
    )
    result = sipp_caller("uac.xml", f"127.0.0.1:{port}", calls=3, transport="t1")
    assert result.successful == 3
    invite = server.files.messages.read_text()
    # Double Record-Route: TLS towards the caller, UDP towards the media server.
    assert f"<sip:{proxy.address_for('tls')};transport=tls;r2=on;lr" in invite
    assert f"<sip:{proxy.address};r2=on;lr" in invite


@pytest.mark.parametrize("ask_client_certificate", [False, True])
def test_a_udp_caller_reaches_a_tls_media_server(
    sipha_proxy, media_server, sipp_caller, socat, ca, ask_client_certificate
):
    uri = tls_media_server(
        socat,
        media_server,
        ca.issue("fs1", "127.0.0.1"),
        ca,
        ask_client_certificate=ask_client_certificate,
    )
    proxy = sipha_proxy(
        listen=listeners(),
        destinations=[uri],
        sections={**NO_PROBES, "tls": tls_section(ca.issue("sipha", "127.0.0.1"), ca)},
    )
    assert sipp_caller("uac.xml", proxy.address, calls=3).successful == 3


def test_a_media_server_with_the_wrong_name_is_refused_and_the_call_fails_over(
    sipha_proxy, media_server, sipp_caller, socat, ca
):
    impostor = tls_media_server(socat, media_server, ca.issue("fs1", "fs1.example.net"), ca)
    genuine = tls_media_server(socat, media_server, ca.issue("fs2", "127.0.0.1"), ca)
    proxy = sipha_proxy(
        listen=listeners(),
        destinations=[impostor, genuine],
        fr_timer=1.0,
        sections={**NO_PROBES, "tls": tls_section(ca.issue("sipha", "127.0.0.1"), ca)},
    )
    assert sipp_caller("uac.xml", proxy.address, calls=1).successful == 1
    failures = [line for line in proxy.log().splitlines() if "TLS with" in line]
    assert len(failures) == 1, failures
    assert "127.0.0.1" in failures[0]
    assert "certificate" in failures[0]


def served_certificate(address: str, ca: CertificateAuthority) -> x509.Certificate:
    """The certificate sipha shows a new TLS client, checked against the test's CA."""
    host, port = sipp.split_hostport(address)
    context = ssl.create_default_context(cafile=str(ca.path))
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_sighup_reloads_the_certificate(sipha_proxy, ca):
    first = ca.issue("sipha", "127.0.0.1")
    proxy = sipha_proxy(
        listen=listeners(), destinations=[], sections={**NO_PROBES, "tls": tls_section(first, ca)}
    )
    before = served_certificate(proxy.address_for("tls"), ca)
    renewed = ca.issue("sipha", "127.0.0.1")  # a new certificate in the same files
    assert proxy.process is not None
    proxy.process.send_signal(signal.SIGHUP)
    assert sipp.wait_until(lambda: "TLS certificates reloaded" in proxy.log(), timeout=5)
    after = served_certificate(proxy.address_for("tls"), ca)
    assert after.serial_number != before.serial_number
    assert renewed.certificate.read_bytes() == after.public_bytes(serialization.Encoding.PEM)


def test_a_media_server_given_by_name_is_verified_against_the_name(
    sipha_proxy, media_server, sipp_caller, socat, ca, name_server
):
    """RFC 5922: the certificate must name the URI's host, not only the address it has."""
    impostor = tls_media_server(socat, media_server, ca.issue("fs1", "127.0.0.1"), ca)
    genuine = tls_media_server(socat, media_server, ca.issue("fs2", "fs2.sipha.test"), ca)
    dns = name_server(['A("fs1.sipha.test", "127.0.0.1")', 'A("fs2.sipha.test", "127.0.0.1")'])
    by_name = [
        uri.replace("sip:127.0.0.1:", f"sip:{name}:")
        for uri, name in ((impostor, "fs1.sipha.test"), (genuine, "fs2.sipha.test"))
    ]
    proxy = sipha_proxy(
        listen=listeners(),
        destinations=by_name,
        fr_timer=1.0,
        sections={
            **NO_PROBES,
            "tls": tls_section(ca.issue("sipha", "127.0.0.1"), ca),
            "dns": {"nameservers": [dns.address]},
        },
    )
    assert sipp_caller("uac.xml", proxy.address, calls=1).successful == 1
    failures = [line for line in proxy.log().splitlines() if "TLS with" in line]
    assert len(failures) == 1, failures
    assert "its certificate is not for fs1.sipha.test" in failures[0]
