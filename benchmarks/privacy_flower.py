"""Flower's SecAgg+ on the privacy benchmark's workload: the comparison arm.

Flower 1.41's own secure aggregation runs only on its legacy workflow API:
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` in a ``ServerApp`` with a
``LegacyContext``, and ``secaggplus_mod`` on a ``ClientApp`` built from a NumPyClient,
run by ``run_simulation``. The devices hold the same MNIST Dirichlet(0.3) partitions as
Stamen's (read through ``stamen.client``, so both train on identical rows) and train the
same LeNet with the same local settings. A client mod outside ``secaggplus_mod`` counts
the bytes of every message of every SecAgg+ stage, both ways, per device and round.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def run_flower_secaggplus(config: Any, out: Path) -> dict[str, Any]:
    """One SecAgg+ run for ``config`` (a ``StamenConfig``); returns its figures."""
    import torch
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    from stamen.client.local_data import FleetData, device_data
    from stamen.client.trainer import evaluate, train_epochs
    from stamen.data import load_dataset
    from stamen.models import ModelSpec, build_model
    from stamen.strategies.secure_fedavg import wire_nbytes

    federation, training = config.federation, config.training
    dataset = load_dataset(config.data.dataset)
    spec = ModelSpec(
        name=training.model, input_shape=dataset.input_shape, num_classes=dataset.num_classes
    )
    fleet = FleetData(config.data, num_devices=federation.num_devices, seed=federation.seed)
    traffic = out / "flower-traffic.jsonl"
    traffic.parent.mkdir(parents=True, exist_ok=True)
    traffic.unlink(missing_ok=True)

    def weights(model: torch.nn.Module) -> list[np.ndarray]:
        return [v.detach().cpu().numpy() for v in model.state_dict().values()]

    def load(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
        keys = list(model.state_dict())
        model.load_state_dict(
            {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays, strict=True)}
        )

    class Device(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.local = device_data(fleet, partition)

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            torch.set_num_threads(1)
            model = build_model(spec)
            load(model, parameters)
            result = train_epochs(
                model,
                self.local.x,
                self.local.y,
                epochs=training.local_epochs,
                batch_size=training.batch_size,
                lr=training.lr,
                momentum=training.momentum,
                generator=torch.Generator().manual_seed(federation.seed),
            )
            return weights(model), result.num_examples, {}

    def counting_mod(message: Any, context: Any, call_next: Any) -> Any:
        started = time.process_time()
        reply = call_next(message, context)
        line = {
            "node": int(context.node_config["partition-id"]),
            "group": message.metadata.group_id,
            "down": wire_nbytes(message),
            "up": wire_nbytes(reply),
            "cpu": time.process_time() - started,
        }
        with traffic.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        return reply

    client = ClientApp(
        client_fn=lambda context: Device(int(context.node_config["partition-id"])).to_client(),
        mods=[counting_mod, secaggplus_mod],
    )
    accuracy: dict[int, float] = {}
    x_test, y_test = torch.tensor(dataset.x_test), torch.tensor(dataset.y_test)

    def central(server_round: int, parameters: list[np.ndarray], _: dict[str, Any]) -> Any:
        if server_round == federation.rounds:
            model = build_model(spec)
            load(model, parameters)
            accuracy[server_round] = evaluate(model, x_test, y_test).accuracy
        return 0.0, {}

    server = ServerApp()
    server_cpu = {"seconds": 0.0}

    @server.main()
    def main(grid: Any, context: Context) -> None:
        started = time.process_time()
        initial = ndarrays_to_parameters(weights(build_model(spec, seed=federation.seed)))
        strategy = FedAvg(
            fraction_fit=federation.devices_per_round / federation.num_devices,
            fraction_evaluate=0.0,
            min_fit_clients=federation.devices_per_round,
            min_available_clients=federation.num_devices,
            initial_parameters=initial,
            evaluate_fn=central,
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=federation.rounds), strategy=strategy
        )
        # Flower's defaults for the shares and threshold, as its SecAgg+ example uses them.
        workflow = DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(num_shares=0.5, reconstruction_threshold=0.7)
        )
        workflow(grid, legacy)
        server_cpu["seconds"] = time.process_time() - started

    wall = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=federation.num_devices,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 1},
        },
    )
    lines = [json.loads(line) for line in traffic.read_text().splitlines()]
    rounds = federation.rounds
    per_device_rounds = federation.devices_per_round * rounds
    return {
        "arm": "flower-secaggplus",
        "final_accuracy": accuracy.get(rounds),
        "uplink_bytes_per_device_round": sum(x["up"] for x in lines) / per_device_rounds,
        "downlink_bytes_per_device_round": sum(x["down"] for x in lines) / per_device_rounds,
        "client_cpu_seconds_per_round": sum(x["cpu"] for x in lines) / rounds,
        "server_cpu_seconds_per_round": server_cpu["seconds"] / rounds,
        "wall_seconds": time.perf_counter() - wall,
        "pid": os.getpid(),
    }
