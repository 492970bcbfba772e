"""Training devices together (as one at a time would) and sharing them out to workers."""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stamen.client.trainer import train_epochs, train_stacked
from stamen.compression import QATConfig, apply_masks, compute_masks, prepare_qat, remove_masks
from stamen.models import ModelSpec, StackedLeNet, build_model, exchanged_state
from stamen.models.stacked import stackable
from stamen.simulations.local_grid import LocalGrid
from stamen.simulations.workers import CLIENT_APP_EXCEPTION, DeviceRunner, WorkerPool

SPEC = ModelSpec("lenet", (1, 28, 28), num_classes=10)


def device_sets(count: int, size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    xs = [torch.randn(size, 1, 28, 28, generator=generator) for _ in range(count)]
    ys = [torch.randint(0, 10, (size,), generator=generator) for _ in range(count)]
    return xs, ys


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_stacked_training_ends_where_one_by_one_training_ends(momentum: float) -> None:
    xs, ys = device_sets(count=3, size=30)  # 30 = 8 + 8 + 8 + 6: a short last batch
    alone = [build_model(SPEC, seed=s) for s in range(3)]
    together = [copy.deepcopy(m) for m in alone]
    settings = {"epochs": 2, "batch_size": 8, "lr": 0.05, "momentum": momentum}
    expected = [
        train_epochs(m, x, y, generator=torch.Generator().manual_seed(i), **settings)
        for i, (m, x, y) in enumerate(zip(alone, xs, ys, strict=True))
    ]
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    stacked = StackedLeNet(together)
    results = train_stacked(stacked, xs, ys, generators=generators, **settings)
    stacked.write_back(together)
    for one, other in zip(alone, together, strict=True):
        for (name, a), (_, b) in zip(
            one.state_dict().items(), other.state_dict().items(), strict=True
        ):
            assert torch.allclose(a, b, atol=1e-5), name
    for result, reference in zip(results, expected, strict=True):
        assert result.num_examples == reference.num_examples == 30
        assert result.loss == pytest.approx(reference.loss, rel=1e-5)


def test_devices_with_different_amounts_of_data_do_not_stack() -> None:
    xs, ys = device_sets(count=2, size=20)
    models = [build_model(SPEC, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="same size"):
        train_stacked(
            StackedLeNet(models),
            [xs[0], xs[1][:10]],
            ys,
            epochs=1,
            batch_size=5,
            lr=0.1,
            generators=[torch.Generator(), torch.Generator()],
        )


def test_only_plain_float_lenets_stack() -> None:
    assert stackable(build_model(SPEC))
    assert not stackable(build_model(ModelSpec("mlp", (1, 28, 28), num_classes=10)))
    assert not stackable(prepare_qat(build_model(SPEC), QATConfig()))
    masked = build_model(SPEC)
    apply_masks(masked, compute_masks(masked, 0.5))
    assert not stackable(masked)


def reply(message: Message, tag: float) -> Message:
    content = RecordDict(
        {
            "update": ArrayRecord({"payload": Array(np.zeros(4, np.uint8))}),
            "metrics": MetricRecord({"tag": tag}),
        }
    )
    return Message(content, reply_to=message)


def test_runner_hands_training_tasks_over_in_groups_and_isolates_failures() -> None:
    app = ClientApp()

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return reply(message, -1.0)

    groups: list[list[int]] = []

    def train_batch(tasks: list[tuple[Message, Context]]) -> list[Message | Exception]:
        groups.append([message.metadata.dst_node_id for message, _ in tasks])
        return [
            ValueError("corrupt model") if m.metadata.dst_node_id == 4 else reply(m, c.node_id)
            for m, c in tasks
        ]

    grid = LocalGrid(app, 10)  # stamps messages with a run, as a ServerApp's grid does
    runner = DeviceRunner(app, 10, run_id=1, run_config={}, train_batch=train_batch, device_batch=3)
    messages = [
        grid.create_message(RecordDict(), "train" if node != 2 else "evaluate", node, "1")
        for node in range(1, 8)
    ]
    replies = dict(runner.run_all(list(enumerate(messages))))
    assert groups == [[1, 3, 4], [5, 6, 7]]
    assert replies[1].content.metric_records["metrics"]["tag"] == -1.0  # evaluate, via the app
    assert replies[3].has_error() and replies[3].error.code == CLIENT_APP_EXCEPTION
    assert "corrupt model" in replies[3].error.reason
    assert replies[4].content.metric_records["metrics"]["tag"] == 5.0  # its own context


@pytest.mark.parametrize("pruned", [False, True])
def test_stacked_qat_computes_what_each_qat_model_computes(pruned: bool) -> None:
    from stamen.compression import StackedQATLeNet

    xs, ys = device_sets(count=3, size=30)
    masks = compute_masks(build_model(SPEC, seed=9), 0.5)

    def device_model(seed: int) -> torch.nn.Module:
        model = prepare_qat(build_model(SPEC, seed=seed), QATConfig(weight_bits=8))
        if pruned:
            apply_masks(model, masks)
        return model

    alone = [device_model(seed) for seed in range(3)]
    together = [device_model(seed) for seed in range(3)]
    assert all(StackedQATLeNet.accepts(m) for m in together)
    assert not any(stackable(m) for m in together)

    # One forward pass: the same logits and the same observed input ranges.
    stacked = StackedQATLeNet(together)
    batch = torch.stack([x[:8] for x in xs])
    logits = stacked.forward(batch)
    for k, model in enumerate(alone):
        assert torch.allclose(logits[k], model(batch[k]), atol=1e-5)
    for index, layer in enumerate(("conv1", "conv2", "fc1", "classifier")):
        expected = [getattr(m, layer).input_quantizer.running_max for m in alone]
        assert torch.allclose(stacked.observers[index].running_max, torch.stack(expected))

    # Training: QAT's rounding grid amplifies float rounding, so the end points agree
    # closely, not exactly.
    alone = [device_model(seed) for seed in range(3)]
    together = [device_model(seed) for seed in range(3)]
    settings = {"epochs": 1, "batch_size": 8, "lr": 0.05}
    expected_results = [
        train_epochs(m, x, y, generator=torch.Generator().manual_seed(i), **settings)
        for i, (m, x, y) in enumerate(zip(alone, xs, ys, strict=True))
    ]
    stacked = StackedQATLeNet(together)
    results = train_stacked(
        stacked,
        xs,
        ys,
        generators=[torch.Generator().manual_seed(i) for i in range(3)],
        **settings,
    )
    states = stacked.device_states()
    stacked.write_back(together)
    for one, other in zip(alone, together, strict=True):
        for (name, a), (_, b) in zip(
            one.state_dict().items(), other.state_dict().items(), strict=True
        ):
            assert torch.allclose(a.float(), b.float(), atol=2e-3), name
    for result, reference in zip(results, expected_results, strict=True):
        assert result.loss == pytest.approx(reference.loss, rel=1e-2)
    # What a device replies with: its model's exchanged state, pruned weights masked.
    for state, model in zip(states, together, strict=True):
        if pruned:
            remove_masks(model)
        expected_state = exchanged_state(model)
        assert state.keys() == expected_state.keys()
        for name, value in expected_state.items():
            assert np.array_equal(state[name], value), name


def test_devices_replicated_from_one_model_start_from_it() -> None:
    model = build_model(SPEC, seed=3)
    states = StackedLeNet.replicate(model, 4).device_states()
    expected = exchanged_state(model)
    assert len(states) == 4
    for state in states:
        assert state.keys() == expected.keys()
        assert all(np.array_equal(state[name], expected[name]) for name in expected)


def test_device_state_travels_with_its_tasks_to_whichever_worker_runs_them() -> None:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if context.node_id % 3 == 0:  # these devices keep a counter between rounds
            seen = context.state.metric_records.get("seen", MetricRecord({"rounds": 0}))
            context.state["seen"] = MetricRecord({"rounds": int(seen["rounds"]) + 1})
            tag = float(context.state.metric_records["seen"]["rounds"])
        else:
            tag = float(os.getpid())
        return reply(message, tag)

    grid = LocalGrid(app, 12)
    runner = DeviceRunner(app, 12, run_id=1, run_config={})
    with WorkerPool(runner, workers=2) as pool:
        tags: dict[int, float] = {}
        for round_num in range(1, 4):
            messages = [
                grid.create_message(RecordDict(), "train", node, str(round_num))
                for node in range(1, 13)
            ]
            tags = {
                messages[i].metadata.dst_node_id: r.content.metric_records["metrics"]["tag"]
                for i, r in pool.run(messages)
            }
        assert sorted(pool.states) == [3, 6, 9, 12]  # only devices with state keep any
    assert all(tags[node] == 3.0 for node in (3, 6, 9, 12))  # counted in every round
    assert len({tags[node] for node in (1, 2, 4, 5, 7, 8, 10, 11)}) == 2  # both workers ran


FAULTS_OF_A_TRAINING_GROUP = """
import resource, torch
from stamen.client.trainer import train_stacked
from stamen.models import ModelSpec, StackedLeNet, build_model
from stamen.simulations.worker_process import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(1)
model = build_model(ModelSpec("lenet", (1, 28, 28), num_classes=10))
xs, ys = [torch.randn(60, 1, 28, 28)] * 8, [torch.randint(0, 10, (60,))] * 8


def train_group():
    generators = [torch.Generator().manual_seed(k) for k in range(8)]
    stacked = StackedLeNet.replicate(model, 8)
    train_stacked(stacked, xs, ys, epochs=1, batch_size=20, lr=0.05, generators=generators)


train_group()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    train_group()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="tunes glibc's malloc",
)
def test_workers_reuse_freed_activation_memory_instead_of_faulting_it_in_again() -> None:
    # Each step frees and allocates activations of a few MB; without the tuning, glibc
    # unmaps them and the kernel zero-fills about 2,000 fresh pages per group again.
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_TRAINING_GROUP],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # 20-150 with the tuning here (measured), more on a loaded machine; about 2,000 without.
    assert float(result.stdout.strip()) < 500
