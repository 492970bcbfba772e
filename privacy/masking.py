"""Pairwise and self masks, and the Shamir shares that undo them: SecAgg's maths.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal and Seth,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017,
https://eprint.iacr.org/2017/281, with the neighbour graph of SecAgg+ (Bell et al.
2020, :mod:`stamen.privacy.graph`).

Each device ``u`` holds two X25519 key pairs and a self-mask seed ``b_u``. It sends

    y_u = x_u + PRG(b_u) + sum over neighbours v of  sign(u, v) * PRG(s_uv)   (mod 2**bits)

where ``s_uv`` is the X25519 agreement of ``u``'s and ``v``'s mask keys, the same for
both, so that the pairwise masks cancel in the sum. ``b_u`` and the mask private key
are Shamir-shared among the neighbours (t of them rebuild either), each share
encrypted for its holder under the agreement of the *cipher* keys (AES-GCM with the
round and both ids as associated data). After the uploads, the server asks each
surviving device, for each neighbour, for exactly one of the two shares: ``b`` of
the neighbours that uploaded (to remove their self masks) and the mask key of
those that did not (to remove the pairwise masks their neighbours added).

Primitives are ``cryptography``'s (X25519, HKDF-SHA256, AES-GCM, and ChaCha20 as
the pseudo-random generator) and Flower's Shamir helpers
(``flwr.common.secure_aggregation.crypto.shamir``, over pycryptodome). Flower's
``pseudo_rand_gen`` is not used: it seeds numpy with 32 bits of the seed, so the
masks would fall to a 2**32 search.

Examples:
    >>> alice, bob = DeviceSecrets.generate(), DeviceSecrets.generate()
    >>> s_ab = pairwise_seed(alice.mask_key, bob.public(1, 5).mask_public, 5, 1, 2)
    >>> s_ba = pairwise_seed(bob.mask_key, alice.public(2, 5).mask_public, 5, 2, 1)
    >>> s_ab == s_ba, expand(s_ab, 4, 16).dtype
    (True, dtype('uint32'))
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

from stamen.core.errors import InvalidUpdate
from stamen.privacy.modular import add_residues, subtract_residues

KEY_BYTES = 32
"""X25519 public and private keys, seeds and commitments are all 32 bytes."""
SHARE_BYTES = 4 + 48
"""A Flower Shamir share of a 32-byte secret: a 4-byte index, then three 16-byte chunks."""
NONCE_BYTES = 12
TAG_BYTES = 16
SEALED_SHARE_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + TAG_BYTES
"""An encrypted pair of shares (self-mask seed, mask key) as it travels."""


class SecureAggregationError(InvalidUpdate):
    """A device's secure-aggregation message is malformed or does not verify."""


@dataclass(frozen=True)
class AdvertisedKeys:
    """What a device publishes in a round: two public keys and a commitment to ``b``."""

    cipher_public: bytes
    mask_public: bytes
    seed_commitment: bytes

    def __post_init__(self) -> None:
        for name in ("cipher_public", "mask_public", "seed_commitment"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != KEY_BYTES:
                raise SecureAggregationError(f"{name} must be {KEY_BYTES} bytes")
        if self.cipher_public == self.mask_public:
            raise SecureAggregationError("the cipher and mask public keys must differ")


class DeviceSecrets:
    """One device's secrets for one round; never leave the device."""

    def __init__(self, cipher_key: bytes, mask_key: bytes, self_seed: bytes) -> None:
        self.cipher_key = cipher_key
        self.mask_key = mask_key
        self.self_seed = self_seed

    @classmethod
    def generate(cls) -> DeviceSecrets:
        """Fresh keys and seed from the operating system's randomness."""
        return cls(_private_bytes(), _private_bytes(), os.urandom(KEY_BYTES))

    def to_bytes(self) -> bytes:
        """The three secrets, concatenated (for the device's own state)."""
        return self.cipher_key + self.mask_key + self.self_seed

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceSecrets:
        """Inverse of :meth:`to_bytes`."""
        if len(data) != 3 * KEY_BYTES:
            raise SecureAggregationError("stored secrets have the wrong length")
        return cls(data[:KEY_BYTES], data[KEY_BYTES : 2 * KEY_BYTES], data[2 * KEY_BYTES :])

    def public(self, node_id: int, round_num: int) -> AdvertisedKeys:
        """The keys and commitment this device advertises."""
        return AdvertisedKeys(
            cipher_public=public_of(self.cipher_key),
            mask_public=public_of(self.mask_key),
            seed_commitment=seed_commitment(self.self_seed, node_id, round_num),
        )


def _private_bytes() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def seed_commitment(seed: bytes, node_id: int, round_num: int) -> bytes:
    """A binding commitment to a self-mask seed (SHA-256; the seed is 256 random bits)."""
    return hashlib.sha256(
        b"stamen.secagg.seed" + struct.pack(">QQ", node_id, round_num) + seed
    ).digest()


def _agree(private: bytes, other_public: bytes, info: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(other_public)
        shared = X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as error:  # a low-order point gives an all-zero secret
        raise SecureAggregationError(f"key agreement failed: {error}") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def pairwise_seed(private: bytes, other_public: bytes, round_num: int, u: int, v: int) -> bytes:
    """The mask seed ``u`` and ``v`` share in ``round_num`` (the same from both ends)."""
    low, high = sorted((u, v))
    return _agree(
        private, other_public, b"stamen.secagg.mask" + struct.pack(">QQQ", round_num, low, high)
    )


def expand(seed: bytes, count: int, bits: int) -> np.ndarray:
    """``count`` uniform residues modulo ``2**bits`` from ``seed`` (ChaCha20 keystream)."""
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    stream = np.frombuffer(encryptor.update(b"\0" * (4 * count)), dtype="<u4")
    return (stream & np.uint32((1 << bits) - 1)).astype(np.uint32)


def mask(
    residues: np.ndarray,
    secrets: DeviceSecrets,
    *,
    node_id: int,
    round_num: int,
    bits: int,
    neighbours: Mapping[int, bytes],
) -> np.ndarray:
    """``residues`` plus the self mask and the pairwise masks with ``neighbours``' mask keys."""
    count = residues.size
    masked = add_residues(residues, expand(secrets.self_seed, count, bits), bits)
    for other, public in sorted(neighbours.items()):
        stream = expand(
            pairwise_seed(secrets.mask_key, public, round_num, node_id, other), count, bits
        )
        masked = (
            add_residues(masked, stream, bits)
            if node_id < other
            else subtract_residues(masked, stream, bits)
        )
    return masked


def remove_masks(
    total: np.ndarray,
    *,
    bits: int,
    round_num: int,
    self_seeds: Sequence[bytes],
    dropped_keys: Mapping[int, bytes],
    survivors_of: Mapping[int, Mapping[int, bytes]],
) -> np.ndarray:
    """The plain sum from the sum of masked vectors of the devices that uploaded.

    ``self_seeds`` are the rebuilt ``b`` of every device that uploaded;
    ``dropped_keys`` the rebuilt mask keys of those that did not, and
    ``survivors_of[d]`` the mask public keys of ``d``'s neighbours that uploaded
    (they added a pairwise mask with ``d`` that nothing cancels).
    """
    count = total.size
    plain = total
    for seed in self_seeds:
        plain = subtract_residues(plain, expand(seed, count, bits), bits)
    for dropped, key in dropped_keys.items():
        for survivor, public in survivors_of.get(dropped, {}).items():
            stream = expand(pairwise_seed(key, public, round_num, dropped, survivor), count, bits)
            # The survivor added +stream if it had the lower id, -stream otherwise.
            plain = (
                subtract_residues(plain, stream, bits)
                if survivor < dropped
                else add_residues(plain, stream, bits)
            )
    return plain


# -- Shamir shares, encrypted for their holders ----------------------------------------


def share_secrets(
    secrets: DeviceSecrets, holders: Sequence[int], threshold: int
) -> dict[int, bytes]:
    """Shamir shares of ``b`` and of the mask key for each of ``holders`` (sorted, self included):
    the pair for holder ``i`` (in sorted order) carries index ``i + 1``."""
    ordered = sorted(holders)
    seed_shares = create_shares(secrets.self_seed, threshold, len(ordered))
    key_shares = create_shares(secrets.mask_key, threshold, len(ordered))
    return {h: seed_shares[i] + key_shares[i] for i, h in enumerate(ordered)}


def _share_key(cipher_key: bytes, other_public: bytes, round_num: int, src: int, dst: int) -> bytes:
    low, high = sorted((src, dst))
    return _agree(
        cipher_key, other_public, b"stamen.secagg.share" + struct.pack(">QQQ", round_num, low, high)
    )


def _associated(round_num: int, src: int, dst: int) -> bytes:
    return struct.pack(">QQQ", round_num, src, dst)


def seal_share(
    cipher_key: bytes, holder_public: bytes, *, round_num: int, src: int, dst: int, shares: bytes
) -> bytes:
    """Encrypt a pair of shares from ``src`` for ``dst`` (AES-GCM, round and ids authenticated)."""
    key = _share_key(cipher_key, holder_public, round_num, src, dst)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, shares, _associated(round_num, src, dst))


def open_share(
    cipher_key: bytes, sender_public: bytes, *, round_num: int, src: int, dst: int, sealed: bytes
) -> tuple[bytes, bytes]:
    """Decrypt a sealed pair of shares; returns ``(b share, mask-key share)``."""
    if len(sealed) != SEALED_SHARE_BYTES:
        raise SecureAggregationError(
            f"a sealed share is {SEALED_SHARE_BYTES} bytes; got {len(sealed)}"
        )
    key = _share_key(cipher_key, sender_public, round_num, src, dst)
    try:
        plain = AESGCM(key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _associated(round_num, src, dst)
        )
    except InvalidTag:
        raise SecureAggregationError(f"the share from node {src} does not decrypt") from None
    return plain[:SHARE_BYTES], plain[SHARE_BYTES:]


def check_share(share: bytes, expected_index: int) -> None:
    """Refuse a share that is not a Flower Shamir share of a 32-byte secret at its index."""
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise SecureAggregationError(f"a share is {SHARE_BYTES} bytes")
    if int.from_bytes(share[:4], "little") != expected_index:
        raise SecureAggregationError("a share carries the wrong index")


def rebuild(shares: Sequence[bytes]) -> bytes | None:
    """The secret ``shares`` rebuild, or ``None`` when they do not combine to 32 bytes."""
    try:
        secret = combine_shares(list(shares))
    except ValueError:
        return None
    return secret if len(secret) == KEY_BYTES else None
