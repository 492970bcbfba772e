"""Device and server keys: Ed25519 key pairs, device ids, challenge, task and upload signatures.

A device proves who it is by signing the server's nonce with its own key, and
signs every upload with it too; the server proves where a model came from by
signing every task with its model-signing key. All are Ed25519 (``cryptography``).

Examples:
    >>> key = generate_key()
    >>> public = public_bytes(key.public_key())
    >>> len(public), len(device_id(public))
    (32, 64)
    >>> signature = key.sign(challenge_message(b"nonce", device_id(public)))
    >>> verify_signature(public, signature, challenge_message(b"nonce", device_id(public)))
    True
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stamen.core.errors import ConfigError
from stamen.core.files import write_atomic

JOIN_PREFIX = b"stamen-edge-v1-join"
"""Domain separation for challenge signatures (see protos/edge/v1/edge.proto)."""
TASK_PREFIX = b"stamen-edge-v1-task"
"""Domain separation for task (model) signatures."""
UPLOAD_PREFIX = b"stamen-edge-v1-upload"
"""Domain separation for upload signatures (by the device key)."""
RUN_ENDED_PREFIX = b"stamen-edge-v1-run-ended"
"""Domain separation for the run-ended notice's signature (by the model-signing key)."""


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device_id(public_key: bytes) -> str:
    """A device's stable id: the hex SHA-256 of its raw public key."""
    return hashlib.sha256(public_key).hexdigest()


def node_id_of(public_key: bytes) -> int:
    """The device's Flower node id: stable for a key, non-zero, below 2**63."""
    value = int.from_bytes(hashlib.sha256(b"node" + public_key).digest()[:8], "big") >> 1
    return value or 1


def challenge_message(nonce: bytes, device: str) -> bytes:
    """The bytes a device signs to answer a join challenge."""
    return JOIN_PREFIX + nonce + device.encode()


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a private key as PEM, readable by its owner only, atomically."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, data, mode=0o600)


def save_public_key(key: Ed25519PublicKey, path: Path) -> None:
    """Write a public key as PEM."""
    data = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(path, data, mode=0o644)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from PEM, with one clear error on failure."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path} is not a PEM private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> bytes:
    """Read an Ed25519 public key (PEM) and return its raw 32 bytes."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path} is not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return public_bytes(key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what} file {path}: {error.strerror}") from None
