"""Training devices together in the simulation: groups handed to the batch entry point,
device state travelling with its tasks, workers reusing freed memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stamen.models import GroupedStack, ModelSpec, build_model, exchanged_state
from stamen.simulations.local_grid import LocalGrid
from stamen.simulations.workers import CLIENT_APP_EXCEPTION, DeviceRunner, WorkerPool

SPEC = ModelSpec("lenet", (1, 28, 28), num_classes=10)


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


def test_devices_replicated_from_one_model_start_from_it() -> None:
    model = build_model(SPEC, seed=3)
    states = GroupedStack.replicate(model, 4).device_states()
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
from stamen.models import GroupedStack, ModelSpec, build_model
from stamen.simulations.worker_process import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(1)
model = build_model(ModelSpec("lenet", (1, 28, 28), num_classes=10))
xs, ys = [torch.randn(60, 1, 28, 28)] * 8, [torch.randint(0, 10, (60,))] * 8


def train_group():
    generators = [torch.Generator().manual_seed(k) for k in range(8)]
    stacked = GroupedStack.replicate(model, 8)
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


def round_one_deltas(**overrides: object) -> dict[int, dict[str, np.ndarray]]:
    """Each device's decoded update of round 1 (all start from the same global model)."""
    from stamen.compression import decode_update
    from stamen.config import load_config
    from stamen.contract import PAYLOAD, UPDATE_KEY, payload_bytes
    from stamen.launch import simulate

    settings: dict[str, object] = {
        "dataset": "digits",
        "preset": "fp32",
        "num-devices": 12,
        "devices-per-round": 12,
        "rounds": 1,
        "local-epochs": 2,
        "federation.workers": 1,
        **overrides,
    }
    replies: dict[int, bytes] = {}

    def keep(instruction: Message, answer: Message) -> None:
        if not answer.has_error():
            array = answer.content.array_records[UPDATE_KEY][PAYLOAD]
            replies[instruction.metadata.dst_node_id] = payload_bytes(array)

    simulate(load_config(overrides=settings), on_reply=keep)
    model = build_model(ModelSpec(str(settings["model"]), (1, 8, 8), num_classes=10))
    shapes = {name: value.shape for name, value in exchanged_state(model).items()}
    return {
        node: decode_update(payload, expected_shapes=shapes).tensors
        for node, payload in replies.items()
    }


@pytest.mark.parametrize(
    "setup",
    [
        # Batches of 20: over smaller ones MobileNet's 1x1 BatchNorms make float32 training
        # alone itself drift from float64 (tests/test_stacked_training.py).
        {"model": "mobilenet", "batch-size": 20, "data.samples_per_device": 40},
        {"model": "mlp", "strategy": "fedprox", "strategy.proximal_mu": 0.5},
    ],
    ids=["mobilenet", "mlp-fedprox-dirichlet"],
)
def test_the_client_app_replies_as_if_each_device_had_trained_alone(
    setup: dict[str, object],
) -> None:
    # The MLP's devices hold Dirichlet(0.3) shares of digits: unequal rows, grouped by steps.
    together = round_one_deltas(**setup)
    alone = round_one_deltas(**setup, **{"federation.device_batch": 1})
    assert together.keys() == alone.keys() and len(alone) >= 10
    for node, delta in alone.items():
        for name, value in delta.items():
            np.testing.assert_allclose(together[node][name], value, atol=1e-5, err_msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_device_cuda_without_a_gpu_is_one_line_and_a_failed_exit(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stamen.cli.main import app

    args = ["simulate", "--dataset", "digits", "--rounds", "1", "--device", "cuda"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no CUDA GPU" in errors[0] and "--device cpu" in errors[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "summary.json").exists()


def test_devices_trained_together_compute_where_they_are_told() -> None:
    from stamen.client.trainer import train_stacked

    model = build_model(SPEC, seed=0)
    xs = [torch.randn(20, 1, 28, 28) for _ in range(2)]
    ys = [torch.randint(0, 10, (20,)) for _ in range(2)]
    states = []
    for device in ("cpu", torch.device("cpu")):
        stack = GroupedStack.replicate(model, 2, device)
        assert all(p.device.type == "cpu" for p in stack.parameters())
        generators = [torch.Generator().manual_seed(k) for k in range(2)]
        train_stacked(stack, xs, ys, epochs=1, batch_size=10, lr=0.05, generators=generators)
        states.append(stack.device_states())
    for name, value in states[0][1].items():
        assert np.array_equal(states[1][1][name], value), name
