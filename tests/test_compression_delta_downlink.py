"""The downlink as deltas: devices rebuild the server's replica bit for bit, catch up after
missed rounds with the smaller of a merged delta and the whole model, and refuse anything
that does not add up to the model the server names. The server's memory stays bounded."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from stamen.compression import (
    DecodedModel,
    DeltaPublisher,
    DownlinkCodecConfig,
    decode_model,
    kept_model_bytes,
)
from stamen.core.errors import ConfigError, InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

SHAPES = {"conv.weight": (8, 1, 3, 3), "conv.bias": (8,), "fc.weight": (10, 72)}


def models(rounds: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """A random walk of models, as training makes them: small steps, some larger."""
    rng = np.random.default_rng(seed)
    model = {
        name: rng.standard_normal(shape).astype(np.float32) * 0.1 for name, shape in SHAPES.items()
    }
    model["conv.bias"][:] = 0.0  # a tensor that starts at zero, as biases often do
    walk = []
    for _ in range(rounds):
        model = {
            name: (value + rng.standard_normal(value.shape) * rng.choice([0.001, 0.005])).astype(
                np.float32
            )
            for name, value in model.items()
        }
        walk.append(model)
    return walk


def publisher(**config: object) -> DeltaPublisher:
    return DeltaPublisher(DownlinkCodecConfig(deltas=True, **config))  # type: ignore[arg-type]


def receive(payload: bytes, kept: DecodedModel | None) -> DecodedModel:
    return decode_model(payload, expected_shapes=SHAPES, base=kept)


def test_devices_rebuild_the_replica_bit_for_bit_whatever_rounds_they_miss() -> None:
    server = publisher(grid_bits=6)
    kept: dict[int, DecodedModel] = {}
    rng = np.random.default_rng(1)
    deltas = 0
    for round_num, model in enumerate(models(30), start=1):
        published = server.publish(model, round_num=round_num)
        for device in rng.choice(6, size=2, replace=False).tolist():
            received = receive(server.payload_for(device), kept.get(device))
            assert received.model_hash == published.model_hash
            for name, value in published.replica.items():
                assert np.array_equal(received.tensors[name], value)
            deltas += received.was_delta
            kept[device] = received
            server.confirm(device, received.model_hash)
    assert deltas > 30


def test_the_replica_stays_within_half_a_step_of_the_model() -> None:
    server = publisher(grid_bits=6)
    for round_num, model in enumerate(models(10), start=1):
        replica = server.publish(model, round_num=round_num).replica
    for name, value in model.items():
        step = server.steps[name]
        assert np.max(np.abs(replica[name] - value)) <= step / 2 + 1e-9


def test_a_catch_up_delta_is_smaller_than_the_whole_model_until_it_is_not() -> None:
    server = publisher(grid_bits=6)
    walk = models(40)
    server.publish(walk[0], round_num=1)
    whole = server.payload_for(1)
    start = receive(whole, None)
    server.confirm(1, start.model_hash)
    sizes = []
    for round_num, model in enumerate(walk[1:], start=2):
        server.publish(model, round_num=round_num)
        sizes.append(len(server.payload_for(1)))  # device 1 has not moved since round 1
    assert sizes[0] < len(whole) / 1.8
    assert sizes[-1] > 2 * sizes[0]  # the merged delta grows with the rounds missed ...
    assert sizes[-1] <= len(server.payload_from(None))  # ... and never beyond the whole model
    assert pb.ModelPayload.FromString(server.payload_for(1)).base_model_sha256 == b""


def test_a_device_further_behind_than_the_history_gets_the_whole_model() -> None:
    server = publisher(grid_bits=6, history_rounds=3)
    walk = models(6)
    server.publish(walk[0], round_num=1)
    server.confirm(1, server.model_hash)
    for round_num, model in enumerate(walk[1:4], start=2):
        server.publish(model, round_num=round_num)
    assert pb.ModelPayload.FromString(server.payload_for(1)).base_model_sha256
    server.publish(walk[4], round_num=5)
    assert pb.ModelPayload.FromString(server.payload_for(1)).base_model_sha256 == b""
    assert len(server.history) == 3


def test_server_memory_does_not_grow_with_the_fleet() -> None:
    server = publisher(tracked_devices=100, history_rounds=4)
    for round_num, model in enumerate(models(8), start=1):
        server.publish(model, round_num=round_num)
        for device in range(1000 * round_num, 1000 * round_num + 500):
            server.confirm(device, server.model_hash)
    assert len(server.holders) == 100
    assert len(server.history) == 4
    # The most recently seen devices are the ones remembered.
    assert min(server.holders) == 8 * 1000 + 400


def test_pruned_weights_are_zero_and_kept_ones_never_are() -> None:
    server = publisher(grid_bits=4)
    model = models(1)[0]
    mask = np.abs(model["fc.weight"]) > 0.05
    model["fc.weight"] = np.where(mask, model["fc.weight"], 0.0).astype(np.float32)
    model["fc.weight"][mask] = np.float32(1e-6)  # kept, but far below one grid step
    model["fc.weight"][0, 0], mask[0, 0] = 1.0, True  # sets the grid
    server.publish(model, round_num=1, masks={"fc.weight": mask})
    received = receive(server.payload_for(1), None)
    assert np.array_equal(received.masks["fc.weight"], mask)
    assert set(received.masks) == {"fc.weight"}


def test_the_kept_model_is_stored_exactly_and_compactly() -> None:
    server = publisher(grid_bits=6)
    server.publish(models(1)[0], round_num=1)
    received = receive(server.payload_for(1), None)
    stored = kept_model_bytes(received)
    again = decode_model(stored, expected_shapes=SHAPES)
    assert again.model_hash == received.model_hash and again.keep
    dense_bytes = 4 * sum(int(np.prod(shape)) for shape in SHAPES.values())
    assert len(stored) < dense_bytes / 3


def test_a_restored_server_sends_the_same_payloads() -> None:
    server = publisher(grid_bits=6)
    walk = models(5)
    for round_num, model in enumerate(walk[:4], start=1):
        server.publish(model, round_num=round_num)
        server.confirm(round_num, server.model_hash)
    restored = publisher(grid_bits=6)
    restored.load_state_dict(server.state_dict())
    for copy in (server, restored):
        copy.publish(walk[4], round_num=5)
    for device in (1, 2, 3, 4, 99):
        assert restored.payload_for(device) == server.payload_for(device)


# -- refused payloads ------------------------------------------------------------------------


def two_rounds() -> tuple[DeltaPublisher, DecodedModel, bytes]:
    """A server in round 2, a device that kept round 1's model, and its delta."""
    server = publisher(grid_bits=6)
    walk = models(2)
    server.publish(walk[0], round_num=1)
    kept = receive(server.payload_for(1), None)
    server.confirm(1, kept.model_hash)
    server.publish(walk[1], round_num=2)
    return server, kept, server.payload_for(1)


def edited(payload: bytes, edit: object) -> bytes:
    envelope = pb.ModelPayload.FromString(payload)
    edit(envelope)  # type: ignore[operator]
    for tensor in envelope.tensors:
        tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    return envelope.SerializeToString()


def test_a_delta_to_a_model_the_device_does_not_hold_is_refused() -> None:
    server, kept, delta = two_rounds()
    with pytest.raises(InvalidUpdate, match="does not hold; it needs the whole model"):
        receive(delta, None)
    stranger = publisher(grid_bits=6)
    stranger.publish(models(1, seed=7)[0], round_num=1)
    other = receive(stranger.payload_for(1), None)  # some other model than round 1's
    with pytest.raises(InvalidUpdate, match="does not hold"):
        receive(delta, other)
    assert receive(delta, kept).model_hash == server.model_hash


def test_a_delta_the_device_already_applied_gives_the_model_it_holds() -> None:
    # A server that lost a round sends that round's delta again to a device that applied it.
    _, kept, delta = two_rounds()
    current = receive(delta, kept)
    again = receive(delta, current)
    assert again.model_hash == current.model_hash
    assert all(np.array_equal(again.tensors[n], v) for n, v in current.tensors.items())


def test_a_delta_that_does_not_add_up_to_the_named_model_is_refused() -> None:
    _, kept, delta = two_rounds()

    def nudge(envelope: pb.ModelPayload) -> None:
        steps = list(envelope.steps)
        steps[0] *= 2
        del envelope.steps[:]
        envelope.steps.extend(steps)

    with pytest.raises(InvalidUpdate, match="does not match the payload's"):
        receive(edited(delta, nudge), kept)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.steps.append(1.0), "needs 3 steps, one a tensor; got 4"),
        (lambda e: e.steps.__setitem__(0, 0.3), "0 or a power of two"),
        (lambda e: setattr(e.tensors[0], "scale", 0.5), "signed levels at scale 1"),
        (lambda e: e.pruned.append("evil"), "pruned tensors not in the model"),
        (lambda e: e.pruned.extend(["fc.weight", "fc.weight"]), "named twice"),
        (lambda e: setattr(e.tensors[0], "name", "fc.weight"), "exactly one tensor"),
        (lambda e: setattr(e, "base_model_sha256", b"x"), "base model hash has 1 bytes"),
    ],
)
def test_malformed_flat_payloads_are_refused(edit: object, message: str) -> None:
    _, kept, delta = two_rounds()
    with pytest.raises(InvalidUpdate, match=message):
        receive(edited(delta, edit), kept)


def test_levels_without_a_step_are_refused() -> None:
    server = publisher(grid_bits=6)
    model = models(1)[0]
    server.publish(model, round_num=1)
    payload = server.payload_from(None)
    bias = list(SHAPES).index("conv.bias")

    def zero_step(envelope: pb.ModelPayload) -> None:
        envelope.steps[bias - 1] = 0.0  # conv.weight, whose levels are not zero

    with pytest.raises(InvalidUpdate, match="has non-zero levels and no step"):
        receive(edited(payload, zero_step), None)


def test_too_many_pruned_names_stop_the_scan() -> None:
    _, kept, delta = two_rounds()
    with pytest.raises(InvalidUpdate, match="more than 3 pruned entries"):
        receive(edited(delta, lambda e: e.pruned.extend(["a"] * 1000)), kept)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"grid_bits must be an integer in 2\.\.16"):
        DownlinkCodecConfig(deltas=True, grid_bits=1)
    with pytest.raises(ConfigError, match="move_threshold"):
        DownlinkCodecConfig(deltas=True, move_threshold=0.1)
