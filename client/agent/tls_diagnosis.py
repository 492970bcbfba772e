"""Why the agent cannot reach the server, in one line, and whether TLS is the reason.

gRPC reports every failed connection as ``UNAVAILABLE``: a server that is down
and a TLS handshake that can never succeed look alike. The status details tell
them apart; where the details are not enough (a plain-text agent meeting a TLS
server sees only "Socket closed"), a short probe of the server's port with
Python's ``ssl`` module settles it and reads the certificate the server shows.

The likely causes, each with its fix:

- **wrong CA**: the server's certificate is not signed by the agent's ``ca.pem``;
- **name mismatch**: the certificate does not name the host in ``--server``;
- **TLS on one side only**: the server runs with ``--insecure`` and the agent
  with TLS, or the other way round.

Examples:
    >>> split_address("[::1]:9443"), split_address("edge.example.org:9443")
    (('::1', 9443), ('edge.example.org', 9443))
    >>> last_error("failed to connect to all addresses; last error: UNKNOWN: "
    ...            "ipv4:127.0.0.1:9: Failed to connect to remote host: Connection refused")
    'Connection refused'
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

PROBE_TIMEOUT = 3.0

WRONG_CA = "wrong CA"
NAME_MISMATCH = "name mismatch"
ONE_SIDED = "TLS on one side only"

_NAME_MARKERS = ("hostname verification", "peer name", "not in peer certificate")
_PLAIN_SERVER_MARKERS = ("wrong_version_number", "packet_length_too_long", "http_request")
_HANDSHAKE_MARKERS = (
    "tls handshake failed",
    "handshake failed",
    "certificate verify failed",
    "certificate_verify_failed",
    "certificate signature failure",
    "unable to get local issuer",
    "self signed",
    "ssl_error_ssl",
)
_CLOSED_MARKERS = ("socket closed", "connection reset", "end of tcp stream", "goaway")


@dataclass(frozen=True)
class TlsDiagnosis:
    """A TLS failure that retrying will not fix."""

    cause: str
    """``wrong CA``, ``name mismatch`` or ``TLS on one side only``."""
    line: str
    """One line: what is wrong and how to fix it."""


def details_of(error: grpc.RpcError) -> str:
    """The status details of a failed call ('' when there are none)."""
    details = error.details() if isinstance(error, grpc.Call) else None
    return details or ""


def last_error(details: str) -> str:
    """The innermost reason in gRPC's "failed to connect" details, for a log line."""
    tail = details.rsplit("last error:", 1)[-1]
    return tail.rsplit(": ", 1)[-1].strip() or details


def diagnose(error: grpc.RpcError, server: str, ca_cert: Path | None) -> TlsDiagnosis | None:
    """The TLS cause of ``error`` with its fix, or ``None`` when TLS is not (known to be) it."""
    code = error.code() if isinstance(error, grpc.Call) else None
    if code is not grpc.StatusCode.UNAVAILABLE:
        return None
    details = details_of(error).lower()
    if ca_cert is None:
        if any(m in details for m in _CLOSED_MARKERS) and peer_certificate(server) is not None:
            return TlsDiagnosis(
                ONE_SIDED,
                f"TLS on one side only: the server at {server} speaks TLS and this agent "
                "runs with --insecure; drop --insecure and give --certs the folder holding "
                "the server's ca.pem",
            )
        return None
    if any(m in details for m in _NAME_MARKERS):
        return _name_mismatch(server)
    if any(m in details for m in _PLAIN_SERVER_MARKERS):
        return TlsDiagnosis(
            ONE_SIDED,
            f"TLS on one side only: the server at {server} speaks plain text (it runs with "
            "--insecure) and this agent TLS; run the server without --insecure (on a "
            "loopback test, give the agent --insecure too)",
        )
    if any(m in details for m in _HANDSHAKE_MARKERS):
        return _wrong_ca(server, ca_cert)
    return None


def _wrong_ca(server: str, ca_cert: Path) -> TlsDiagnosis:
    shown = peer_certificate(server)
    if shown is not None and _signed_by(shown, ca_cert):
        # Our CA did sign it, so the handshake failed on something else: say what we know.
        return TlsDiagnosis(
            WRONG_CA,
            f"TLS handshake with {server} failed although {ca_cert} signed its certificate "
            f"(valid {shown.not_valid_before_utc:%Y-%m-%d} to "
            f"{shown.not_valid_after_utc:%Y-%m-%d}); re-issue server.pem if it expired",
        )
    return TlsDiagnosis(
        WRONG_CA,
        f"wrong CA: the server at {server} shows a TLS certificate that {ca_cert} did not "
        "sign; copy ca.pem from the certs folder that issued the server's server.pem",
    )


def _name_mismatch(server: str) -> TlsDiagnosis:
    host, port = split_address(server)
    shown = peer_certificate(server)
    names = certificate_names(shown) if shown is not None else []
    held = f" (it names {', '.join(names)})" if names else ""
    use = f"connect with --server {_join(names[0], port)}, or " if names else ""
    return TlsDiagnosis(
        NAME_MISMATCH,
        f"name mismatch: the server's TLS certificate does not name {host}{held}; {use}"
        f"re-issue it with stamen certs init --host {host}",
    )


def split_address(server: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as a host and a port."""
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_certificate(server: str, timeout: float = PROBE_TIMEOUT) -> x509.Certificate | None:
    """The certificate a TLS server at ``server`` shows, unverified; ``None`` if it shows none."""
    host, port = split_address(server)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate holds (its SANs)."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = [str(n) for n in sans.get_values_for_type(x509.IPAddress)]
    names += sans.get_values_for_type(x509.DNSName)
    return names


def _signed_by(certificate: x509.Certificate, ca_cert: Path) -> bool:
    try:
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    except (OSError, ValueError):
        return False
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
