"""Workload W1 as a stock Flower user would write it: plain PyTorch, Flower's FedAvg, Ray.

Nothing here uses Stamen's training, compression or grids. The only shared
piece is the MNIST array itself, read through ``stamen.data`` so that both
sides train on identical pixels without a second copy of the loader.

W1 (DESIGN.md): LeNet (conv 1->8 5x5, pool, conv 8->16 5x5, pool, FC 256->64->10),
60 samples per device, 1 local epoch, batch 20, SGD lr 0.05.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

SAMPLES_PER_DEVICE = 60
BATCH_SIZE = 20
LEARNING_RATE = 0.05


class LeNet(nn.Module):
    """The W1 network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5)
        self.conv2 = nn.Conv2d(8, 16, 5)
        self.fc1 = nn.Linear(256, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as float32 images and int64 labels (train, then test)."""
    from stamen.data import load_dataset

    data = load_dataset("mnist")
    return data.x_train, data.y_train, data.x_test, data.y_test


def device_rows(partition_id: int, seed: int) -> np.ndarray:
    """The device's 60 training rows, drawn uniformly (IID)."""
    x_train = mnist()[0]
    rng = np.random.default_rng([seed, partition_id])
    return np.sort(rng.integers(0, x_train.shape[0], size=SAMPLES_PER_DEVICE))


def make_client_app(seed: int = 0) -> ClientApp:
    """A plain PyTorch ClientApp: load weights, one epoch of SGD, send weights back."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        x_train, y_train, _, _ = mnist()
        rows = device_rows(int(context.node_config["partition-id"]), seed)
        x, y = torch.from_numpy(x_train[rows]), torch.from_numpy(y_train[rows])
        model = LeNet()
        model.load_state_dict(message.content.array_records["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        model.train()
        order = torch.randperm(len(rows))
        for start in range(0, len(rows), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(rows)}),
            }
        )
        return Message(content=content, reply_to=message)

    return app


def make_server_app(
    num_devices: int,
    per_round: int,
    rounds: int,
    on_round: Callable[[int], None],
) -> ServerApp:
    """Flower's FedAvg, evaluating the final model centrally."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        _, _, x_test, y_test = mnist()
        model = LeNet()
        strategy = FedAvg(
            fraction_train=per_round / num_devices,
            fraction_evaluate=0.0,
            min_train_nodes=per_round,
            min_available_nodes=num_devices,
        )

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            on_round(server_round)
            if server_round < rounds:  # like Stamen's eval_every: only the final model
                return MetricRecord({})
            model.load_state_dict(arrays.to_torch_state_dict())
            model.eval()
            with torch.no_grad():
                logits = model(torch.from_numpy(x_test.copy()))
            accuracy = float((logits.argmax(1) == torch.from_numpy(y_test)).float().mean())
            return MetricRecord({"accuracy": accuracy})

        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            evaluate_fn=evaluate,
        )

    return app
