"""Valid update and model payloads, and edits of them, for the hostile-input tests.

The hostile-input tests (``test_compression_wire_hostile``, ``test_compression_index_hostile``,
``test_compression_wire_fuzz``) start from these valid payloads and break one thing at a time;
``test_hostile_decoding`` builds payloads meant to cost memory and measures what they cost.
"""

from __future__ import annotations

import contextlib
import ctypes
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


# -- payloads built to cost memory, and the memory they cost ------------------------------------


def zlib_bomb(inflated_size: int) -> bytes:
    """A valid zlib stream of ``inflated_size`` zero bytes (a multiple of 1 MiB), about
    1,000 times smaller: compressed once per MiB after a full flush, so the blocks repeat."""
    chunk = 2**20
    compressor = zlib.compressobj(9)
    head = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler32 = ((inflated_size % 65521) << 16) | 1  # of zeros: a = 1, b = n mod 65521
    last_block = b"\x03\x00"  # an empty final fixed-Huffman block
    return head + block * (inflated_size // chunk - 1) + last_block + adler32.to_bytes(4, "big")


def envelope_header(kind: type[pb.ModelUpdate] | type[pb.ModelPayload]) -> bytes:
    """The valid fields of an envelope of ``kind`` other than its tensors."""
    if kind is pb.ModelUpdate:
        return pb.ModelUpdate(
            format_version=1, round=3, base_model_sha256=bytes(32)
        ).SerializeToString()
    return pb.ModelPayload(format_version=1, round=3, model_sha256=bytes(32)).SerializeToString()


def empty_tensors(kind: type[pb.ModelUpdate] | type[pb.ModelPayload], count: int) -> bytes:
    """An envelope of ``count`` empty tensor entries: two bytes each on the wire."""
    field = kind.DESCRIPTOR.fields_by_name["tensors"].number
    return envelope_header(kind) + bytes([field << 3 | 2, 0]) * count


@dataclass(frozen=True)
class Refusal:
    """What refusing a payload cost: peaks in bytes, and the error raised."""

    traced: int
    """tracemalloc's peak: Python's allocations, numpy's included."""
    rss: int | None
    """Growth of the RSS high-water mark, which also sees the protobuf parser's C
    allocations; None where ``/proc/self/clear_refs`` cannot reset it."""
    error: InvalidUpdate


def refusal(decode: Callable[[], object]) -> Refusal:
    """Run ``decode``, which must raise InvalidUpdate, and measure its peak memory."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidUpdate) as caught:
            decode()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Again without tracemalloc, whose bookkeeping would count in the RSS.
    return Refusal(traced, _rss_growth(decode), caught.value)


def _rss_growth(decode: Callable[[], object]) -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc: return freed heap, so the baseline is real
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _status_bytes("VmRSS")
    except (OSError, ValueError):
        return None
    with contextlib.suppress(InvalidUpdate):
        decode()
    return _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no {field} in /proc/self/status")
