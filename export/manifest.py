"""The signed manifest that travels beside an artifact: what it is, and proof it is unchanged.

The manifest is JSON: the tier, the accuracies measured at export, the size and SHA-256 of
the artifact file, and the input spec a device must feed it. It is signed with Ed25519
(``cryptography``): the signature covers the canonical JSON of every other field (sorted
keys, no spaces), and the signer's public key travels in the manifest. ``verify_manifest``
checks the signature, and, when the caller pins a trusted public key, that the signer is the
trusted one; without a pinned key a forger could re-sign a changed manifest with a key of
their own, so deployments should pin.

Examples:
    >>> key = Ed25519PrivateKey.generate()
    >>> signed = sign_manifest({"tier": "mcu", "sha256": "ab"}, key)
    >>> verify_manifest(signed)["tier"]
    'mcu'
    >>> verify_manifest({**signed, "tier": "phone"})
    Traceback (most recent call last):
    ...
    stamen.core.errors.ArtifactError: manifest signature does not verify: ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stamen.core.errors import ArtifactError

FORMAT = "stamen.artifact.v1"
SIGNATURE = "signature"
DEFAULT_KEY_PATH = Path("~/.config/stamen/export-signing-key.pem")


def canonical_json(values: dict[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, UTF-8.

    Examples:
        >>> canonical_json({"b": 1, "a": [1, 2]})
        b'{"a":[1,2],"b":1}'
    """
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_manifest(values: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``values`` plus a ``signature`` block (algorithm, public key, signature)."""
    body = {name: value for name, value in values.items() if name != SIGNATURE}
    return {
        **body,
        SIGNATURE: {
            "algorithm": "ed25519",
            "public_key": public_key_hex(key.public_key()),
            "value": key.sign(canonical_json(body)).hex(),
        },
    }


def verify_manifest(
    manifest: dict[str, Any], trusted_public_key: Ed25519PublicKey | None = None
) -> dict[str, Any]:
    """Check the manifest's signature; return the signed fields.

    Raises:
        ArtifactError: No signature, a malformed one, one that does not match the fields, or
            a signer other than ``trusted_public_key``.
    """
    block = manifest.get(SIGNATURE)
    if not isinstance(block, dict) or block.get("algorithm") != "ed25519":
        raise ArtifactError("manifest has no ed25519 signature")
    try:
        public_bytes = bytes.fromhex(str(block["public_key"]))
        signature = bytes.fromhex(str(block["value"]))
        public_key = Ed25519PublicKey.from_public_bytes(public_bytes)
    except (KeyError, ValueError) as error:
        raise ArtifactError(f"manifest signature block is malformed: {error}") from None
    if trusted_public_key is not None and public_key_hex(trusted_public_key) != public_bytes.hex():
        raise ArtifactError(
            "manifest is signed by an untrusted key "
            f"{public_bytes.hex()[:16]}...; expected {public_key_hex(trusted_public_key)[:16]}..."
        )
    body = {name: value for name, value in manifest.items() if name != SIGNATURE}
    try:
        public_key.verify(signature, canonical_json(body))
    except InvalidSignature:
        raise ArtifactError(
            "manifest signature does not verify: the manifest was changed after signing"
        ) from None
    return body


def public_key_hex(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as hex."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def load_or_create_key(path: Path | None = None) -> tuple[Ed25519PrivateKey, bool]:
    """The signing key at ``path`` (default ``~/.config/stamen/export-signing-key.pem``).

    A missing file is created with a new key, readable by its owner only. Returns the key and
    whether it was just created.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "signing-key.pem"
        >>> key, created = load_or_create_key(path)
        >>> again, created_again = load_or_create_key(path)
        >>> created, created_again, public_key_hex(again.public_key()) == public_key_hex(
        ...     key.public_key()), oct(path.stat().st_mode & 0o777)
        (True, False, True, '0o600')
    """
    target = (path or DEFAULT_KEY_PATH).expanduser()
    if target.exists():
        try:
            key = serialization.load_pem_private_key(target.read_bytes(), password=None)
        except (ValueError, TypeError) as error:
            raise ArtifactError(f"cannot read signing key {target}: {error}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ArtifactError(f"signing key {target} is not an Ed25519 private key")
        return key, False
    key = Ed25519PrivateKey.generate()
    target.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(pem)
    return key, True


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A trusted public key: a PEM public key, a PEM private key, or 64 hex characters.

    Examples:
        >>> import tempfile
        >>> key = Ed25519PrivateKey.generate()
        >>> path = Path(tempfile.mkdtemp()) / "signer.hex"
        >>> _ = path.write_text(public_key_hex(key.public_key()))
        >>> public_key_hex(load_public_key(path)) == public_key_hex(key.public_key())
        True
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"cannot read public key {path}: {error.strerror}") from None
    text = data.decode(errors="replace").strip()
    try:
        if len(text) == 64:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if isinstance(private, Ed25519PrivateKey):
                return private.public_key()
        else:
            public = serialization.load_pem_public_key(data)
            if isinstance(public, Ed25519PublicKey):
                return public
    except (ValueError, TypeError) as error:
        raise ArtifactError(f"cannot read public key {path}: {error}") from None
    raise ArtifactError(f"{path} holds no Ed25519 key")


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse a manifest file; a missing or malformed file raises ``ArtifactError``."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"manifest {path} is not readable JSON: {error}") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a Stamen artifact manifest ({FORMAT})")
    return values
