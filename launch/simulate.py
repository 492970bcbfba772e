"""Run a whole simulated federation on the chosen backend.

``local`` runs the virtual devices on :class:`SimulationGrid`: a pool of
worker processes, device tiers and a simulated clock. ``ray`` runs the same grid
with Ray actors for workers, on a private Ray instance or, with
``federation.ray_address``, across an existing cluster. ``flower-ray`` hands the
same ServerApp and ClientApp to Flower's Simulation Engine instead.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any

import torch
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp

from stamen.client import FleetData, client_app, device_data
from stamen.client.batched import auto_device_batch, handle_train_batch
from stamen.config import Backend, StamenConfig, TorchDevice, fleet_mix, to_run_config
from stamen.core.errors import ConfigError
from stamen.data import load_dataset
from stamen.models import build_model, training_flops_per_sample
from stamen.server import CollectingReporter, Reporters, RoundReporter, server_app
from stamen.server.control import RunControl
from stamen.server.federation import model_spec
from stamen.simulations.attacks import with_attack
from stamen.simulations.profiles import Fleet, build_fleet
from stamen.simulations.ray_workers import RayWorkerPool
from stamen.simulations.sim_grid import PoolFactory, SimulationGrid
from stamen.simulations.workers import ReplyHook, WorkerPool, default_workers

LOG = logging.getLogger("stamen.simulations")

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def fleet_of(config: StamenConfig) -> FleetData:
    """The data settings of a simulated fleet."""
    return FleetData(
        config.data, num_devices=config.federation.num_devices, seed=config.federation.seed
    )


def fleet_app(config: StamenConfig) -> ClientApp:
    """The fleet's ClientApp, with the ``[attack]`` section's attackers when one is set."""
    fed = config.federation
    return with_attack(client_app(fleet_of(config)), config.attack, fed.num_devices, fed.seed)


def simulate(
    config: StamenConfig,
    reporter: RoundReporter | None = None,
    *,
    on_reply: ReplyHook | None = None,
    control: RunControl | None = None,
) -> dict[str, Any]:
    """Run the federation ``config`` describes and return its summary.

    ``control`` (optional) lets a monitor pause, stop or re-tune the run between rounds.

    Examples:
        >>> from stamen.config import load_config
        >>> config = load_config(overrides={"dataset": "digits", "num-devices": 10,
        ...     "devices-per-round": 5, "rounds": 2, "model": "mlp"})
        >>> simulate(config)["rounds"]
        2
    """
    os.environ.update(QUIET_ENV)
    preflight(config)
    collector = CollectingReporter()
    reporters = Reporters(reporter, collector)
    if config.federation.backend is not Backend.FLOWER_RAY:
        with simulation_grid(config, on_reply) as grid:
            context = Context(
                run_id=grid.run.run_id,
                node_id=0,
                node_config={},
                state=RecordDict(),
                run_config={},
            )
            server_app(config, reporters, control)(grid, context)
            where = grid.worker_locations
    else:
        run_on_ray(config, reporters, control)
        where = []
    if collector.summary is None:
        raise RuntimeError("the federation ended without a summary; see the log above")
    collector.summary["backend"] = config.federation.backend.value
    if where:
        collector.summary.update(workers=len(where), worker_nodes=len(set(where)))
    return collector.summary


def device_fleet(config: StamenConfig) -> Fleet:
    """Each simulated device's tier, by the config's fleet mix."""
    custom = tuple((tier.profile, tier.share) for tier in config.fleet.tiers)
    return build_fleet(
        fleet_mix(config.fleet.preset, custom),
        config.federation.num_devices,
        config.federation.seed,
    )


def simulation_grid(config: StamenConfig, on_reply: ReplyHook | None = None) -> SimulationGrid:
    """The grid of the local and ray backends: the fleet, its clock and a worker pool
    (forked processes, or Ray actors)."""
    fed = config.federation
    spec = model_spec(config, load_dataset(config.data.dataset))
    pool: PoolFactory = WorkerPool
    workers = fed.workers or default_workers()
    if fed.backend is Backend.RAY:
        if fed.ray_address:
            check_ray_address(fed.ray_address)
        pool = functools.partial(
            RayWorkerPool, address=fed.ray_address, log_to_driver=LOG.isEnabledFor(logging.INFO)
        )
        workers = fed.workers  # 0: one actor per CPU of the cluster
    device_batch = fed.device_batch or auto_device_batch(
        build_model(spec), spec.input_shape, config.training.batch_size, fed.devices_sampled
    )
    return SimulationGrid(
        fleet_app(config),
        device_fleet(config),
        flops_per_sample=training_flops_per_sample(build_model(spec), spec.input_shape),
        workers=workers,
        pool=pool,
        state_memory=fed.state_memory_mb * 2**20,
        run_config=to_run_config(config),
        on_reply=on_reply,
        # An attack wraps the ClientApp's replies, so attacked runs train one device at a time.
        train_batch=None
        if config.attack.active
        else functools.partial(
            handle_train_batch, fleet=fleet_of(config), device=config.federation.device.value
        ),
        device_batch=device_batch,
    )


def preflight(config: StamenConfig) -> None:
    """Fail fast, with one clear error, on what would otherwise fail on every device.

    Loads the dataset, splits it and checks the model fits it, in this process,
    before any device starts (the local backend reuses the cached results).
    """
    fleet = fleet_of(config)
    model_spec(config, load_dataset(config.data.dataset))
    device_data(fleet, 0)
    check_torch_device(config)


def check_torch_device(config: StamenConfig) -> None:
    """``--device cuda`` needs a GPU torch can use, and the local backend that uses it."""
    if config.federation.device is not TorchDevice.CUDA:
        return
    if config.federation.backend is not Backend.LOCAL:
        raise ConfigError("federation.device = cuda applies to the local backend only")
    # is_available() does not initialise CUDA, so the workers can still be forked after it.
    if not torch.cuda.is_available():
        raise ConfigError(
            "federation.device = cuda, but torch finds no CUDA GPU here "
            "(a CPU-only torch build, or no driver); use --device cpu"
        )


def run_on_ray(
    config: StamenConfig, reporter: RoundReporter, control: RunControl | None = None
) -> None:
    """Run on Flower's Simulation Engine (Ray), one CPU per virtual device."""
    try:
        import ray  # noqa: F401
        from flwr.simulation import run_simulation
    except ImportError:
        raise ConfigError(
            "backend 'flower-ray' needs the simulation extra: pip install 'stamen[simulation]'"
        ) from None
    cpus = os.cpu_count() or 1
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        # Device failures come back as rejections with reasons; the actors'
        # own chatter is for --verbose.
        "log_to_driver": LOG.isEnabledFor(logging.INFO),
    }
    if config.federation.ray_address:
        # Joining a cluster: its size and memory are the cluster's to decide.
        check_ray_address(config.federation.ray_address)
        init_args["address"] = config.federation.ray_address
    else:
        init_args.update(num_cpus=cpus, object_store_memory=256 * 2**20)
    run_simulation(
        server_app=server_app(config, reporter, control),
        client_app=fleet_app(config),
        num_supernodes=config.federation.num_devices,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": init_args,
        },
    )


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds, in one line, when nothing listens at ``address``.

    Ray itself keeps retrying an address with no cluster behind it for many minutes.
    ``auto`` is Ray's to resolve (it fails fast when there is no cluster).
    """
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({error.strerror or error}): start one with "
            "`ray start --head` and pass the address it prints, or drop --ray-address to run "
            "on a private Ray instance"
        ) from None
