"""Strategies in real small federations: real ClientApps, data, codecs and attacks."""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from stamen.client import client_app
from stamen.client.trainer import train_epochs
from stamen.compression import UplinkCodecConfig, ValueFormat, decode_update
from stamen.config import AttackKind, AttackSettings, StamenConfig, StrategyName, load_config
from stamen.contract import (
    DENSE_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    PAYLOAD,
    UPDATE_KEY,
    TrainTask,
    payload_bytes,
)
from stamen.launch import fleet_of, simulate
from stamen.models import ModelName, ModelSpec, build_model, exchanged_state
from stamen.server import CollectingReporter, ResultsWriter
from stamen.simulations import LocalGrid
from stamen.simulations.attacks import DENSE_NUM_EXAMPLES, attacked_partitions, with_attack
from stamen.strategies import CompressedFedAvg, FedProx
from stamen.transport import SentModel, to_array_record, validate_reply
from stamen.transport.deltas import l2_norm


def digits(**overrides: Any) -> StamenConfig:
    base: dict[str, Any] = {
        "dataset": "digits",
        "model": "mlp",
        "num-devices": 10,
        "devices-per-round": 10,
        "rounds": 4,
        "partition": "iid",
        "lr": 0.1,
        "local-epochs": 2,
        "preset": "fp32",
        # Every device online, none drops out: counts in these tests are exact.
        "fleet.preset": "ideal",
        "federation.workers": 1,
    }
    base.update(overrides)
    return load_config(overrides=base)


def test_proximal_term_keeps_local_training_near_the_global_model() -> None:
    """FedProx's defining behaviour, in the trainer: large mu, same data and seed, less drift."""
    spec = ModelSpec(name=ModelName.MLP, input_shape=(64,), num_classes=10)
    x = torch.randn(100, 64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(1))
    drift = {}
    for mu in (0.0, 1.0, 10.0):
        model = build_model(spec, seed=0)
        start = exchanged_state(model)
        train_epochs(
            model,
            x,
            y,
            epochs=2,
            batch_size=20,
            lr=0.05,
            generator=torch.Generator().manual_seed(2),
            proximal_mu=mu,
        )
        end = exchanged_state(model)
        drift[mu] = l2_norm({k: end[k] - start[k] for k in start})
    assert drift[10.0] < drift[1.0] < drift[0.0]
    assert drift[10.0] < 0.5 * drift[0.0]


def deltas_from_devices(strategy: CompressedFedAvg, config: StamenConfig) -> list[float]:
    """Send round 1 to every device through the real ClientApp; the norms of their deltas."""
    grid = LocalGrid(client_app(fleet_of(config)), config.federation.num_devices)
    model = build_model(ModelSpec(ModelName.MLP, (64,), 10), seed=0)
    messages = strategy.configure_train(
        1, to_array_record(exchanged_state(model)), ConfigRecord(), grid
    )
    replies = grid.send_and_receive(messages)
    sent = strategy._sent
    assert sent is not None
    return [
        l2_norm(validate_reply(r, server_round=1, sent=sent, max_update_bytes=2**24).delta)
        for r in replies
    ]


def test_fedprox_mu_travels_to_devices_and_pulls_their_updates_in() -> None:
    config = digits(**{"num-devices": 4, "devices-per-round": 4})
    common: dict[str, Any] = {
        "model_factory": lambda: build_model(ModelSpec(ModelName.MLP, (64,), 10)),
        "task": TrainTask(model=ModelName.MLP, local_epochs=3, lr=0.1),
        "devices_per_round": 4,
    }
    plain = deltas_from_devices(CompressedFedAvg(**common), config)
    prox = deltas_from_devices(FedProx(proximal_mu=5.0, **common), config)
    assert np.mean(prox) < 0.6 * np.mean(plain)
    record = FedProx(proximal_mu=5.0, **common).task.to_config_record()
    assert TrainTask.from_config_record(record).proximal_mu == 5.0


def first_round(config: StamenConfig) -> tuple[Message, SentModel]:
    """The round-1 train message a one-device edge strategy sends, and what it sent."""
    strategy = CompressedFedAvg(
        model_factory=lambda: build_model(ModelSpec(ModelName.MLP, (64,), 10)),
        task=TrainTask(
            model=ModelName.MLP, uplink=UplinkCodecConfig(topk_ratio=0.2, values=ValueFormat.Q8)
        ),
        devices_per_round=1,
    )
    grid = LocalGrid(client_app(fleet_of(config)), 1)
    model = build_model(ModelSpec(ModelName.MLP, (64,), 10), seed=0)
    [message] = strategy.configure_train(
        1, to_array_record(exchanged_state(model)), ConfigRecord(), grid
    )
    assert strategy._sent is not None
    return message, strategy._sent


def reply_of(app: Any, message: Message) -> Message:
    """Device 0's reply to ``message``, from ``app``."""
    context = Context(1, 1, {"partition-id": 0, "num-partitions": 5}, RecordDict(), {})
    return app(Message(message.content, dst_node_id=1, message_type="train"), context)


def test_attackers_send_correctly_encoded_sign_flipped_updates() -> None:
    """The harness decodes, flips and re-encodes with the task's own codec."""
    config = digits(preset="edge", **{"num-devices": 5, "devices-per-round": 5})
    settings = AttackSettings(kind=AttackKind.SIGN_FLIP, fraction=1.0, scale=10.0)
    honest_app = client_app(fleet_of(config))
    attacked_app = with_attack(honest_app, settings, num_devices=5, seed=0)
    message, sent = first_round(config)

    def delta_of(app: Any) -> dict[str, np.ndarray]:
        reply = reply_of(app, message)
        return validate_reply(reply, server_round=1, sent=sent, max_update_bytes=2**24).delta

    honest, attacked = delta_of(honest_app), delta_of(attacked_app)
    for name in honest:
        scale = np.abs(honest[name]).max() * 10 / 127  # one q8 step at the attacked scale
        np.testing.assert_allclose(attacked[name], -10 * honest[name], atol=scale)
        assert (np.count_nonzero(attacked[name])) <= np.count_nonzero(honest[name])


def test_dense_attackers_reply_in_plain_flower_form_with_huge_weights_and_count() -> None:
    """A plain-form reply: dense ``arrays`` far from the model, 10^6 claimed examples."""
    config = digits(preset="edge", **{"num-devices": 5, "devices-per-round": 5})
    settings = AttackSettings(kind=AttackKind.DENSE, fraction=1.0, scale=1000.0)
    honest_app = client_app(fleet_of(config))
    attacked_app = with_attack(honest_app, settings, num_devices=5, seed=0)
    message, sent = first_round(config)
    honest, attacked = reply_of(honest_app, message), reply_of(attacked_app, message)

    assert UPDATE_KEY not in attacked.content.array_records
    dense = {k: v.numpy() for k, v in attacked.content.array_records[DENSE_KEY].items()}
    payload = payload_bytes(honest.content.array_records[UPDATE_KEY][PAYLOAD])
    shapes = {name: value.shape for name, value in sent.decoded.items()}
    delta = decode_update(payload, expected_shapes=shapes).tensors
    assert {k: v.shape for k, v in dense.items()} == shapes
    for name, weights in dense.items():
        assert weights.dtype == np.float32
        np.testing.assert_allclose(weights, sent.decoded[name] + 1000 * delta[name], rtol=1e-5)
    moved = l2_norm({k: dense[k] - sent.dense[k] for k in dense})
    assert moved > 500 * l2_norm(delta)
    metrics = attacked.content.metric_records[METRICS_KEY]
    assert metrics[NUM_EXAMPLES] == DENSE_NUM_EXAMPLES == 10**6
    assert metrics["train-loss"] == honest.content.metric_records[METRICS_KEY]["train-loss"]


def test_attackers_are_chosen_from_the_seed() -> None:
    first = attacked_partitions(100, 0.2, seed=0)
    assert len(first) == 20 and first == attacked_partitions(100, 0.2, seed=0)
    assert first != attacked_partitions(100, 0.2, seed=1)


def test_the_defaults_survive_sign_flipped_attackers_that_wreck_unbounded_fedavg() -> None:
    attack = {"attack.kind": "sign-flip", "attack.fraction": 0.3, "attack.scale": 10}
    unbounded = {
        "defense.clip_factor": 0,
        "defense.weight_cap_factor": 0,
        "defense.min_cosine": -1,
        "defense.full_trust_at": 0,
    }
    clean = simulate(digits(rounds=5))["final_accuracy"]
    wrecked = simulate(digits(rounds=5, **attack, **unbounded))["final_accuracy"]
    defaults = simulate(digits(rounds=5, **attack))
    multi_krum = simulate(digits(rounds=5, strategy="multi-krum", **attack, **unbounded))
    assert clean > 0.85
    assert wrecked < 0.5
    assert defaults["final_accuracy"] > clean - 0.05
    assert multi_krum["final_accuracy"] > clean - 0.05  # f from the attacker fraction alone


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("name", list(StrategyName))
def test_every_strategy_rejects_non_finite_updates(name: StrategyName, kind: str) -> None:
    config = digits(
        rounds=2,
        strategy=name.value,
        **{
            "attack.kind": kind,
            "attack.fraction": 0.4,
            "num-devices": 5,
            "devices-per-round": 5,
            "local-epochs": 1,
            "strategy.buffer_size": 3,
            "strategy.krum_byzantine": 1,
        },
    )
    reporter = CollectingReporter()
    simulate(config, reporter)
    rejections = [r for record in reporter.records for r in record.rejections]
    assert rejections and all("not all finite" in r["reason"] for r in rejections)
    assert all(math.isfinite(record.loss) for record in reporter.records)
    assert reporter.records[-1].accuracy > reporter.initial_accuracy


def test_stale_replays_are_rejected_as_from_another_round() -> None:
    reporter = CollectingReporter()
    simulate(digits(rounds=2, **{"attack.kind": "stale", "attack.fraction": 0.3}), reporter)
    assert reporter.records[0].rejected == 0  # the first update is honest
    reasons = [r["reason"] for r in reporter.records[1].rejections]
    assert len(reasons) == 3 and all("update is for round 1, this is round 2" in r for r in reasons)


def test_fedbuff_runs_asynchronously_and_records_staleness(tmp_path: Path) -> None:
    config = digits(
        rounds=6,
        strategy="fedbuff",
        **{"strategy.buffer_size": 3, "strategy.concurrency": 6, "devices-per-round": 6},
    )
    summary = simulate(config, ResultsWriter(tmp_path))
    assert summary["rounds"] == 6 and summary["strategy"] == "fedbuff"
    histogram = summary["staleness_histogram"]
    # Six devices train at once and every aggregation takes three: half the updates
    # were computed on the model before the last aggregation.
    assert sum(histogram.values()) == 18 and histogram.get("1", 0) > 0
    assert summary["final_accuracy"] > 0.6
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and '"staleness": [' in lines[-1]


def test_fedbuff_is_deterministic_for_a_seed() -> None:
    config = digits(rounds=3, strategy="fedbuff", **{"strategy.buffer_size": 4})
    assert simulate(config)["final_model_sha256"] == simulate(config)["final_model_sha256"]


def test_fedbuff_composes_with_compression_qat_and_pruning() -> None:
    config = digits(
        preset="edge",
        rounds=6,
        strategy="fedbuff",
        **{"uplink.topk_ratio": 0.1, "strategy.buffer_size": 5, "pruning.target_sparsity": 0.5},
    )
    summary = simulate(config)
    assert summary["final_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert summary["uplink_bytes_fp32"] / summary["uplink_bytes"] > 5
    assert summary["final_accuracy"] > 0.5


@pytest.mark.parametrize("name", ["trimmed-mean", "norm-bounded", "multi-krum", "fedadam"])
def test_strategies_compose_with_the_edge_preset(name: str) -> None:
    overrides: dict[str, Any] = {"uplink.topk_ratio": 0.1, "strategy": name, "rounds": 6}
    if name == "fedadam":
        overrides["strategy.server_lr"] = 0.03
    summary = simulate(digits(preset="edge", **overrides))
    assert summary["final_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert summary["final_accuracy"] > 0.6, summary["final_accuracy"]
