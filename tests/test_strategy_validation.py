"""The server's checks on each reply: what a malicious or broken device cannot get past."""

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from stamen.compression import DownlinkCodec, DownlinkCodecConfig, UplinkCodec, UplinkCodecConfig
from stamen.contract import (
    DENSE_KEY,
    METRICS_KEY,
    PAYLOAD,
    UPDATE_KEY,
    message_nbytes,
    payload_bytes,
)
from stamen.core.errors import InvalidUpdate
from stamen.transport import SentModel, ValidUpdate, validate_reply
from stamen.transport.deltas import apply_mean_delta

MODEL = {
    "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "b": np.zeros(3, dtype=np.float32),
}
SHAPES = {name: value.shape for name, value in MODEL.items()}


@pytest.fixture(scope="module", autouse=True)
def task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def sent_model() -> SentModel:
    encoded = DownlinkCodec(DownlinkCodecConfig()).encode(MODEL, round_num=3)
    return SentModel(model_hash=encoded.model_hash, decoded=encoded.decoded, dense=MODEL)


def reply(records: dict[str, ArrayRecord | MetricRecord]) -> Message:
    instruction = Message(RecordDict(), dst_node_id=7, message_type="train")
    return Message(RecordDict(records), reply_to=instruction)


def encoded_reply(
    *, round_num: int = 3, base_hash: str | None = None, num_examples: object = 10
) -> Message:
    delta = {name: np.full(shape, 0.5, dtype=np.float32) for name, shape in SHAPES.items()}
    payload = (
        UplinkCodec(UplinkCodecConfig())
        .encode(
            delta,
            round_num=round_num,
            base_model_hash=base_hash or sent_model().model_hash,
            residual=None,
            rng=np.random.default_rng(0),
        )
        .payload
    )
    return reply(
        {
            UPDATE_KEY: ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, np.uint8))}),
            METRICS_KEY: MetricRecord({"num-examples": num_examples}),
        }
    )


def check(message: Message, **kwargs: Any) -> ValidUpdate:
    options: dict[str, Any] = {
        "server_round": 3,
        "sent": sent_model(),
        "max_update_bytes": 2**20,
    }
    options.update(kwargs)
    return validate_reply(message, **options)


def test_a_valid_update_decodes_to_its_delta() -> None:
    update = check(encoded_reply())
    assert update.num_examples == 10
    np.testing.assert_allclose(update.delta["w"], 0.5)


@pytest.mark.parametrize(
    ("message", "options", "reason"),
    [
        (lambda: encoded_reply(round_num=2), {}, "update is for round 2, this is round 3"),
        (lambda: encoded_reply(base_hash="ab" * 32), {}, "computed against model abababababab"),
        (lambda: encoded_reply(), {"max_update_bytes": 40}, "exceeds the limit of 40"),
        (lambda: encoded_reply(num_examples=0), {}, "'num-examples' must be a whole number"),
        (lambda: encoded_reply(num_examples=2.5), {}, "'num-examples' must be a whole number"),
        (lambda: encoded_reply(), {"max_update_norm": 0.1}, "exceeds the bound"),
        (lambda: reply({METRICS_KEY: MetricRecord({"num-examples": 3})}), {}, "has neither"),
    ],
)
def test_bad_replies_are_refused_with_a_reason(
    message: Callable[[], Message], options: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidUpdate, match=reason):
        check(message(), **options)


def dense_reply(arrays: dict[str, Array], num_examples: int = 4) -> Message:
    return reply(
        {DENSE_KEY: ArrayRecord(arrays), METRICS_KEY: MetricRecord({"num-examples": num_examples})}
    )


def test_dense_replies_are_refused_unless_the_device_was_admitted_as_plain() -> None:
    trained = {k: Array(v + 1) for k, v in MODEL.items()}
    with pytest.raises(InvalidUpdate, match=r"dense \(plain Flower\) reply refused"):
        check(dense_reply(trained, num_examples=10**6))
    plain = check(dense_reply(trained), allow_dense=True)
    assert plain.plain
    np.testing.assert_allclose(plain.delta["w"], 1.0)


def test_dense_replies_are_checked_for_shape_and_values() -> None:
    wrong_shape = {"w": Array(np.zeros((4, 3), np.float32)), "b": Array(np.zeros(3, np.float32))}
    with pytest.raises(InvalidUpdate, match=r"'w': expected shape \(3, 4\), got \(4, 3\)"):
        check(dense_reply(wrong_shape), allow_dense=True)
    with pytest.raises(InvalidUpdate, match=r"missing \['b'\]"):
        check(dense_reply({"w": Array(MODEL["w"])}), allow_dense=True)
    infinite = {"w": Array(np.full((3, 4), np.inf, np.float32)), "b": Array(MODEL["b"])}
    with pytest.raises(InvalidUpdate, match="NaN or infinite"):
        check(dense_reply(infinite), allow_dense=True)
    integers = {"w": Array(np.ones((3, 4), np.int64)), "b": Array(MODEL["b"])}
    with pytest.raises(InvalidUpdate, match="must be float16, float32 or float64; got int64"):
        check(dense_reply(integers), allow_dense=True)


def lying(actual: np.ndarray, declared: tuple[int, ...]) -> Array:
    """An array whose metadata declares ``declared`` but whose bytes hold ``actual``."""
    honest = Array(actual)
    return Array(dtype=honest.dtype, shape=tuple(declared), stype=honest.stype, data=honest.data)


def test_dense_shapes_are_read_from_the_parsed_array_not_the_metadata() -> None:
    big = lying(np.ones((300, 400), np.float32), declared=(3, 4))
    with pytest.raises(InvalidUpdate, match=r"'w': expected shape \(3, 4\), got \(300, 400\)"):
        check(dense_reply({"w": big, "b": Array(MODEL["b"])}), allow_dense=True)


def test_byte_counts_never_exceed_what_the_device_sent() -> None:
    claims_a_gigabyte = lying(np.ones(4, np.float32), declared=(2**28,))
    message = dense_reply({"w": claims_a_gigabyte, "b": Array(MODEL["b"])})
    sent = len(claims_a_gigabyte.data) + len(Array(MODEL["b"]).data)
    assert message_nbytes(message) <= sent
    with pytest.raises(InvalidUpdate, match=r"'w': expected shape \(3, 4\), got \(4,\)"):
        check(message, allow_dense=True)


def test_any_failure_while_reading_a_reply_is_a_rejection_not_a_crash() -> None:
    broken = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=b"not an npy file")
    with pytest.raises(InvalidUpdate, match="cannot be read"):
        check(dense_reply({"w": broken, "b": Array(MODEL["b"])}), allow_dense=True)
    odd_payload = Array(dtype="uint8", shape=(5,), stype="numpy.ndarray", data=b"\x00" * 3)
    odd = reply(
        {
            UPDATE_KEY: ArrayRecord({PAYLOAD: odd_payload}),
            METRICS_KEY: MetricRecord({"num-examples": 3}),
        }
    )
    with pytest.raises(InvalidUpdate):
        check(odd)


def test_error_replies_become_one_line_reasons() -> None:
    instruction = Message(RecordDict(), dst_node_id=7, message_type="train")
    failed = Message(
        Error(code=1, reason="Traceback\n  line 1\nValueError: boom"), reply_to=instruction
    )
    with pytest.raises(InvalidUpdate) as info:
        check(failed)
    assert "\n" not in str(info.value) and "boom" in str(info.value)


def test_mean_delta_is_weighted_by_examples() -> None:
    first = check(encoded_reply(num_examples=30))
    second = check(dense_reply({k: Array(v) for k, v in MODEL.items()}, 10), allow_dense=True)
    merged = apply_mean_delta(MODEL, [first, second])
    np.testing.assert_allclose(merged["b"], 0.5 * 30 / 40)


@pytest.mark.parametrize("size", [0, 1, 1_000, 70_000])
def test_payload_bytes_are_the_arrays_bytes_without_parsing_its_header(size: int) -> None:
    raw = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    assert payload_bytes(Array(raw)) == raw.tobytes()


def test_payload_bytes_of_any_other_array_go_through_numpy() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert payload_bytes(Array(values)) == values.tobytes()
