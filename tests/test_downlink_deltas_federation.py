"""Downlink deltas in a real federation: real ClientApps keep their last model, the server
sends each the change since it, and the hash check holds every round."""

from __future__ import annotations

from flwr.app import ConfigRecord

from stamen.client import client_app
from stamen.compression import DownlinkCodecConfig, UplinkCodecConfig
from stamen.config import load_config
from stamen.contract import LAST_MODEL_KEY, MODEL_KEY, PAYLOAD, TrainTask, payload_bytes
from stamen.launch import fleet_of
from stamen.models import ModelName, ModelSpec, build_model, exchanged_state
from stamen.protos.update.v1 import update_pb2 as pb
from stamen.simulations import LocalGrid
from stamen.strategies import CompressedFedAvg
from stamen.transport import to_array_record

SPEC = ModelSpec(ModelName.MLP, (64,), 10, width=0.25)


def federation(devices: int) -> tuple[CompressedFedAvg, LocalGrid]:
    config = load_config(
        overrides={"dataset": "digits", "model": "mlp", "num-devices": devices, "preset": "fp32"}
    )
    strategy = CompressedFedAvg(
        model_factory=lambda: build_model(SPEC),
        task=TrainTask(
            model=ModelName.MLP,
            width=SPEC.width,
            lr=0.1,
            batch_size=100,
            uplink=UplinkCodecConfig(topk_ratio=0.1, values="sign", error_feedback=True),
        ),
        downlink=DownlinkCodecConfig(deltas=True, grid_bits=6),
        devices_per_round=2,
        seed=0,
    )
    return strategy, LocalGrid(client_app(fleet_of(config)), devices)


def test_devices_get_deltas_and_every_update_is_against_the_right_model() -> None:
    strategy, grid = federation(devices=3)
    arrays = to_array_record(exchanged_state(build_model(SPEC, seed=0)))
    kinds = []
    for round_num in range(1, 7):
        messages = list(strategy.configure_train(round_num, arrays, ConfigRecord(), grid))
        for message in messages:
            payload = payload_bytes(message.content.array_records[MODEL_KEY][PAYLOAD])
            kinds.append(bool(pb.ModelPayload.FromString(payload).base_model_sha256))
        replies = list(grid.send_and_receive(messages))
        new_arrays, _ = strategy.aggregate_train(round_num, replies)
        assert new_arrays is not None
        arrays = new_arrays
        stats = strategy.stats[round_num]
        assert stats.rejections == [] and stats.accepted == 2
    # Three devices, two a round: after each device's first (whole) model, deltas.
    assert kinds.count(False) == 3 and kinds.count(True) == 9
    assert strategy.stats[6].downlink_bytes < 0.5 * strategy.stats[1].downlink_bytes


def test_a_device_that_lost_its_model_refuses_the_delta_then_gets_the_whole_model() -> None:
    strategy, grid = federation(devices=2)
    arrays = to_array_record(exchanged_state(build_model(SPEC, seed=0)))
    for round_num in (1, 2):
        messages = list(strategy.configure_train(round_num, arrays, ConfigRecord(), grid))
        new_arrays, _ = strategy.aggregate_train(round_num, grid.send_and_receive(messages))
        assert new_arrays is not None
        arrays = new_arrays
    del grid.context_of(1).state[LAST_MODEL_KEY]  # device 1 lost its state
    messages = list(strategy.configure_train(3, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    strategy.aggregate_train(3, replies)
    reasons = [r.reason for r in strategy.stats[3].rejections]
    assert len(reasons) == 1 and "does not hold; it needs the whole model" in reasons[0]
    assert strategy.stats[3].accepted == 1
    messages = list(strategy.configure_train(4, arrays, ConfigRecord(), grid))
    whole = [m for m in messages if m.metadata.dst_node_id == 1]
    payload = payload_bytes(whole[0].content.array_records[MODEL_KEY][PAYLOAD])
    assert pb.ModelPayload.FromString(payload).base_model_sha256 == b""
    strategy.aggregate_train(4, grid.send_and_receive(messages))
    assert strategy.stats[4].rejections == [] and strategy.stats[4].accepted == 2
