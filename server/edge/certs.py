"""Certificates and keys for an edge server: a CA, a TLS server certificate, a signing key.

``stamen certs init DIR`` calls :func:`init_certs`. The CA signs the server's
TLS certificate; devices trust the CA (``ca.pem``) and verify models with the
server's Ed25519 model-signing public key (``model-signing.pub``).

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> paths = init_certs(Path(tempfile.mkdtemp()), hosts=["localhost", "127.0.0.1"])
    >>> sorted(p.name for p in paths.all())
    ['ca.key', 'ca.pem', 'model-signing.key', 'model-signing.pub', 'server.key', 'server.pem']
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stamen.contract.edge import (
    generate_key,
    save_private_key,
    save_public_key,
)
from stamen.core import write_atomic
from stamen.core.errors import ConfigError


@dataclass(frozen=True)
class CertPaths:
    """Where the files of a certificate directory live."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate devices trust."""
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA's private key: keep it off the server if you can."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The server's TLS certificate."""
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        """The server's TLS private key."""
        return self.root / "server.key"

    @property
    def signing_key(self) -> Path:
        """The server's Ed25519 model-signing key."""
        return self.root / "model-signing.key"

    @property
    def signing_pub(self) -> Path:
        """The public half devices verify models with."""
        return self.root / "model-signing.pub"

    def all(self) -> list[Path]:
        """Every file :func:`init_certs` writes."""
        return [
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.signing_key,
            self.signing_pub,
        ]

    def require_server_files(self) -> None:
        """Raise one clear error if a file the server needs is missing."""
        for path in (self.server_cert, self.server_key, self.signing_key):
            if not path.exists():
                raise ConfigError(
                    f"{path} is missing; create it with: stamen certs init {self.root}"
                )


def init_certs(
    root: Path, *, hosts: list[str], days: int = 825, overwrite: bool = False
) -> CertPaths:
    """Create a CA, a server certificate for ``hosts`` and a model-signing key in ``root``."""
    paths = CertPaths(root)
    existing = [p for p in paths.all() if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; pass --force to replace the certificates")
    if not hosts:
        raise ConfigError("give at least one --host the server certificate is valid for")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stamen edge CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_atomic(paths.ca_cert, ca_cert.public_bytes(pem))
    write_atomic(paths.ca_key, _private_pem(ca_key), mode=0o600)
    write_atomic(paths.server_cert, server_cert.public_bytes(pem))
    write_atomic(paths.server_key, _private_pem(server_key), mode=0o600)
    signing = generate_key()
    save_private_key(signing, paths.signing_key)
    save_public_key(signing.public_key(), paths.signing_pub)
    return paths


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
