"""Valid update and model payloads, and edits of them, for the hostile-input tests.

The hostile-input tests (``test_compression_wire_hostile``, ``test_compression_index_hostile``,
``test_compression_wire_fuzz``) start from these valid payloads and break one thing at a time.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pytest

from stamen.compression import (
    DownlinkCodec,
    DownlinkCodecConfig,
    UplinkCodec,
    UplinkCodecConfig,
    ValueFormat,
    decode_update,
)
from stamen.compression.bitpack import encode_rice, encode_varints, pack_bits
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

HASH = "cd" * 32
SHAPES = {"fc.weight": (16, 10), "fc.bias": (10,)}


def delta() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def update_bytes(**config: object) -> bytes:
    codec = UplinkCodec(UplinkCodecConfig(**config))
    return codec.encode(
        delta(), round_num=3, base_model_hash=HASH, residual=None, rng=np.random.default_rng(0)
    ).payload


def model_bytes(values: ValueFormat = ValueFormat.Q8) -> bytes:
    mask = np.arange(160).reshape(16, 10) % 3 == 0
    return (
        DownlinkCodec(DownlinkCodecConfig(values=values))
        .encode(delta(), round_num=3, masks={"fc.weight": mask})
        .payload
    )


def edited_update(
    edit: Callable[[pb.ModelUpdate], None], *, resign: bool = True, **config: object
) -> bytes:
    """A valid update with ``edit`` applied; ``resign`` recomputes the checksums so the
    edit reaches the checks behind the CRC."""
    envelope = pb.ModelUpdate.FromString(update_bytes(**config))
    edit(envelope)
    if resign:
        for tensor in envelope.tensors:
            tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    return envelope.SerializeToString()


def rejects(payload: bytes, match: str, **kwargs: object) -> None:
    with pytest.raises(InvalidUpdate, match=match) as error:
        decode_update(payload, expected_shapes=SHAPES, **kwargs)
    assert "\n" not in str(error.value)


def weight(envelope: pb.ModelUpdate) -> pb.CompressedTensor:
    return next(t for t in envelope.tensors if t.name == "fc.weight")


def with_indices(
    positions: list[int], encoding: int, rice_k: int = 2
) -> Callable[[pb.ModelUpdate], None]:
    def edit(envelope: pb.ModelUpdate) -> None:
        gaps = np.diff(positions, prepend=-1) - 1
        if encoding == pb.INDEX_ENCODING_BITPACKED:
            indices, index_bits = pack_bits(np.array(positions), 8), 8
        elif encoding == pb.INDEX_ENCODING_RICE_GAPS:
            indices, index_bits = encode_rice(gaps, rice_k), rice_k
        else:
            indices, index_bits = encode_varints(gaps), 0
        with_index_bytes(indices, len(positions), encoding, index_bits)(envelope)

    return edit


def with_index_bytes(
    indices: bytes, count: int, encoding: int, index_bits: int
) -> Callable[[pb.ModelUpdate], None]:
    """Replace fc.weight's index list (of an update sent with top-k) with raw bytes."""

    def edit(envelope: pb.ModelUpdate) -> None:
        tensor = weight(envelope)
        tensor.index_encoding = encoding
        tensor.index_bits = index_bits
        tensor.indices = indices
        tensor.indices_size = len(indices)
        tensor.num_values = count
        tensor.values = np.ones(count, "<f4").tobytes()

    return edit
