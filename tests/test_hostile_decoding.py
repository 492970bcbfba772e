"""Payloads built to exhaust a receiver's memory are refused with a reason, cheaply.

Each hostile case is refused with an ``InvalidUpdate`` a user can read, and its peak
memory is measured while it is refused: tracemalloc's peak and, where Linux lets the
process reset it, the growth of its RSS high-water mark (which also sees the protobuf
parser's own allocations). Both must stay within a few times the payload and the
model, where before a 1 MB zlib stream inflated to 1 GiB and 2 MB of empty tensor
entries cost 138 MB of parsed messages. Then, malformed wire structure: each kind is
named, with its byte offset, before the parser runs.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hostile_payloads import (
    SHAPES,
    edited_update,
    empty_tensors,
    envelope_header,
    refusal,
    rejects,
    with_index_bytes,
    zlib_bomb,
)

from stamen.compression import (
    DownlinkCodec,
    DownlinkCodecConfig,
    UplinkCodec,
    UplinkCodecConfig,
    decode_model,
    decode_update,
)
from stamen.compression.bitpack import encode_varints
from stamen.compression.wire import parse, size_bound
from stamen.protos.update.v1 import update_pb2 as pb

MiB = 2**20
MODEL_SHAPES = {f"layer{i}.weight": (128, 256) for i in range(10)}
MODEL_NBYTES = 4 * sum(math.prod(shape) for shape in MODEL_SHAPES.values())  # 1.25 MiB
BOMB = zlib_bomb(2**30)
"""About 1 MB of zlib that inflates to 1 GiB."""


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(s).astype(np.float32) for name, s in MODEL_SHAPES.items()}


MODEL = DownlinkCodec(DownlinkCodecConfig()).encode(_model(), round_num=3).payload
UPDATE = (
    UplinkCodec(UplinkCodecConfig())
    .encode(
        _model(),
        round_num=3,
        base_model_hash="ab" * 32,
        residual=None,
        rng=np.random.default_rng(0),
    )
    .payload
)


def _armed(
    payload: bytes,
    kind: type[pb.ModelUpdate] | type[pb.ModelPayload],
    shape: tuple[int, ...] | None = None,
) -> bytes:
    """``payload`` with its first tensor's values replaced by the zlib bomb (and its shape
    by ``shape``)."""
    envelope = kind.FromString(payload)
    tensor = envelope.tensors[0]
    if shape is not None:
        del tensor.shape[:]
        tensor.shape.extend(shape)
        tensor.num_values = math.prod(shape)
    tensor.lossless = pb.LOSSLESS_ZLIB
    tensor.values = BOMB
    tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    return envelope.SerializeToString()


def _decode_model(payload: bytes) -> Callable[[], object]:
    return lambda: decode_model(payload, expected_shapes=MODEL_SHAPES)


def _decode_update(payload: bytes, max_bytes: int = 64 * MiB) -> Callable[[], object]:
    return lambda: decode_update(payload, expected_shapes=MODEL_SHAPES, max_bytes=max_bytes)


MODEL_BOMB = _armed(MODEL, pb.ModelPayload)
UPDATE_BOMB = _armed(UPDATE, pb.ModelUpdate)
HUGE_BOMB = _armed(MODEL, pb.ModelPayload, shape=(2**28,))
MANY_UPDATE = empty_tensors(pb.ModelUpdate, 10**6)
MANY_MODEL = empty_tensors(pb.ModelPayload, 10**6)

HOSTILE = {
    "zlib bomb in the model": (
        MODEL_BOMB,
        _decode_model(MODEL_BOMB),
        r"tensor 'layer0.weight': zlib stream of value bytes for 32768 values at 32 bits "
        r"does not inflate to exactly 131072 bytes",
    ),
    "zlib bomb in an update": (
        UPDATE_BOMB,
        _decode_update(UPDATE_BOMB),
        r"tensor 'layer0.weight': zlib stream .* does not inflate to exactly 131072 bytes",
    ),
    "zlib bomb claiming 2^28 elements": (
        HUGE_BOMB,
        _decode_model(HUGE_BOMB),
        r"tensor 'layer0.weight': expected shape \(128, 256\), got \(268435456,\)",
    ),
    "10^6 empty tensors in an update": (
        MANY_UPDATE,
        _decode_update(MANY_UPDATE),
        r"^update has more than 10 tensors; the model has 10$",
    ),
    "10^6 empty tensors in a model": (
        MANY_MODEL,
        _decode_model(MANY_MODEL),
        r"^model payload has more than 10 tensors; the model has 10$",
    ),
    "model truncated in half": (
        MODEL[: len(MODEL) // 2],
        _decode_model(MODEL[: len(MODEL) // 2]),
        r"model payload does not parse as ModelPayload: truncated: field 14 \(tensors\) at "
        r"byte \d+ needs 131\d+ bytes, \d+ remain",
    ),
    "update one byte short": (
        UPDATE[:-1],
        _decode_update(UPDATE[:-1]),
        r"update does not parse as ModelUpdate: truncated: field 4 \(tensors\)",
    ),
    "update past max_bytes": (
        UPDATE,
        _decode_update(UPDATE, max_bytes=MiB),
        rf"^update of {len(UPDATE)} bytes exceeds the limit of 1048576$",
    ),
    "update past what the model can need": (
        UPDATE + bytes(3 * MiB),
        _decode_update(UPDATE + bytes(3 * MiB)),
        rf"^update of {len(UPDATE) + 3 * MiB} bytes exceeds the \d+ bytes a valid one can "
        r"take for this model \(10 tensors\)$",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_payload_is_refused_within_bounded_memory(case: str) -> None:
    payload, decode, reason = HOSTILE[case]
    cost = refusal(decode)
    message = str(cost.error)
    assert "\n" not in message and len(message) < 300
    assert re.search(reason, message), message
    bound = 2 * len(payload) + 2 * MODEL_NBYTES + 2 * MiB
    assert cost.traced < bound, f"{case}: traced peak {cost.traced / MiB:.1f} MiB"
    if cost.rss is not None:
        assert cost.rss < bound + 8 * MiB, f"{case}: RSS peak grew {cost.rss / MiB:.1f} MiB"


def test_the_bomb_is_one() -> None:
    """The bomb is a valid zlib stream of zeros, a thousand times smaller than its output."""
    assert zlib.decompress(zlib_bomb(8 * MiB)) == bytes(8 * MiB)
    assert len(BOMB) < 1.1e6


def test_honest_payloads_of_the_model_pass_the_limits() -> None:
    assert decode_model(MODEL, expected_shapes=MODEL_SHAPES).round_num == 3
    assert decode_update(UPDATE, expected_shapes=MODEL_SHAPES).round_num == 3


@pytest.mark.parametrize(
    "config",
    [
        {"topk_ratio": 1.0},
        {"topk_ratio": 0.5, "values": "fp16", "lossless": "zlib"},
        {"topk_ratio": 0.9, "values": "q8", "error_feedback": True},
        {"topk_ratio": 0.01, "values": "q2"},
    ],
)
def test_every_honest_encoding_fits_the_size_bound_with_room(config: dict[str, object]) -> None:
    """The bound from the shapes refuses no honest device, down to 1-element tensors with
    long names: noise compresses badly, so each encoding is at its largest here."""
    rng = np.random.default_rng(1)
    shapes = {"w" * 200: (1,), "b": (3,), "conv.weight": (64, 3, 5, 5), "fc.weight": (500, 256)}
    delta = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    payload = (
        UplinkCodec(UplinkCodecConfig(**config))  # type: ignore[arg-type]
        .encode(delta, round_num=1, base_model_hash="ab" * 32, residual=None, rng=rng)
        .payload
    )
    assert len(payload) < 0.5 * size_bound(shapes)
    decode_update(payload, expected_shapes=shapes)


def test_tensor_count_is_capped_without_a_model_too() -> None:
    """Parsing an envelope this process did not get shapes for stops at MAX_TENSORS."""
    started = time.perf_counter()
    cost = refusal(lambda: parse(pb.ModelUpdate, MANY_UPDATE, max_bytes=64 * MiB))
    assert str(cost.error) == "update has more than 65536 tensors; the most this format accepts"
    assert time.perf_counter() - started < 3
    assert cost.traced < 2 * len(MANY_UPDATE) + MiB
    if cost.rss is not None:
        assert cost.rss < 16 * MiB


# -- wire structure, checked before the parser ----------------------------------------------


HEADER = envelope_header(pb.ModelUpdate)
"""A valid update's fields other than tensors: 36 bytes."""


def _tensor(body: bytes) -> bytes:
    """An update whose one tensor entry holds ``body``."""
    return HEADER + b"\x22" + encode_varints(np.array([len(body)])) + body


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (HEADER + b"\x20\x05", r"field 4 \(tensors\) at byte 38 is varint, expected length"),
        (_tensor(b"\x08\x01"), r"tensor #1: field 1 \(name\) at byte 40 is varint"),
        (_tensor(b"\x30\x01"), r"field 6 \(scale\) at byte 40 is varint, expected fixed32"),
        (HEADER + b"\x10" + b"\xff" * 12, r"varint at byte 39 is longer than 64 bits"),
        (HEADER + b"\x10" + b"\xff" * 9 + b"\x02", r"varint at byte 39 is longer than 64 bits"),
        (HEADER + b"\x10\x80", r"truncated inside a varint at byte 39"),
        (HEADER + b"\x23\x00", r"field 4 \(tensors\) at byte 38 has wire type 3, .*\(a group"),
        (HEADER + b"\x26", r"field 4 \(tensors\) at byte 38 has wire type 6"),
        (HEADER + b"\x02\x00", r"invalid field number 0 at byte 38"),
        (HEADER + b"\x22\xff\xff\xff\x07", r"truncated: field 4 \(tensors\) at byte 38 needs"),
    ],
)
def test_malformed_wire_structure_is_named(payload: bytes, reason: str) -> None:
    rejects(payload, r"^update does not parse as ModelUpdate: .*" + reason)


def test_too_many_dimensions_packed_or_not() -> None:
    packed = b"\x12\x21" + b"\x01" * 33
    rejects(_tensor(packed), r"^update tensor #1 has more than 32 dimensions$")
    rejects(_tensor(b"\x10\x01" * 33), r"^update tensor #1 has more than 32 dimensions$")


def test_too_many_fields_in_a_tensor_or_an_envelope() -> None:
    rejects(_tensor(b"\xf8\x01\x00" * 65), r"^update tensor #1 has more than 64 fields$")
    rejects(HEADER + b"\x10\x01" * 65, r"^update has more than 64 fields besides its tensors$")


def test_unknown_fields_are_skipped_as_protobuf_does() -> None:
    """A field a later build may add does not stop an older one from reading the rest."""
    extended = edited_update(lambda e: None) + b"\xa8\x06\x01"  # field 101, varint 1
    assert decode_update(extended, expected_shapes=SHAPES).round_num == 3


def test_negative_dimension_reads_as_huge_and_is_refused() -> None:
    def negative(envelope: pb.ModelUpdate) -> None:
        del envelope.tensors[1].shape[:]
        envelope.tensors[1].shape.append(2**64 - 1)  # -1 as a protobuf int64 writes it

    rejects(edited_update(negative), r"expected shape \(10,\), got \(18446744073709551615,\)")


def test_index_past_the_tensor_is_refused() -> None:
    """The largest gap a varint carries (2^35 - 1) cannot reach past the end unnoticed."""
    gaps = encode_varints(np.array([0, 2**35 - 1]))
    edit = with_index_bytes(gaps, 2, pb.INDEX_ENCODING_VARINT_GAPS, 0)
    rejects(edited_update(edit, topk_ratio=0.1), r"index 34359738368 out of range for 160")
