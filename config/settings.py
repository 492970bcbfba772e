"""Typed, validated settings for a Stamen federation.

Every setting that a user can write in TOML, pass as a flag or find in a
``summary.json`` lives here as a frozen dataclass field. Enumerated values are
``str`` enums so that they read and write as plain strings. Each class checks
its own values in ``__post_init__`` and raises :class:`~stamen.core.errors.ConfigError`
with one line that names the key and what is allowed.

The compression pieces (QAT, pruning, codecs) own their configs, and the fleet
distillation, defense, privacy and attack sections in their own ``*_settings`` modules;
this module composes them into one :class:`StamenConfig`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from stamen.compression import (
    DownlinkCodecConfig,
    PruningConfig,
    QATConfig,
    UplinkCodecConfig,
)
from stamen.config.attack_settings import AttackSettings
from stamen.config.checks import is_host_port, require, require_member
from stamen.config.defense_settings import DefenseSettings
from stamen.config.distill_settings import DistillSettings
from stamen.config.fleet_settings import FleetSettings
from stamen.config.privacy_settings import PrivacySettings
from stamen.core.errors import ConfigError
from stamen.data import PartitionScheme
from stamen.models import ModelName


class Preset(enum.StrEnum):
    """Named bundles of compression settings."""

    EDGE = "edge"
    """QAT int8, sparsity ramp to 50%; up: one top-3% over the whole model, signs, error
    feedback; down: the change since each device's kept model, on a 6-bit grid."""
    FP32 = "fp32"
    """Plain FedAvg: no QAT, no pruning, dense float32 both ways. The baseline."""
    PRIVATE_EDGE = "private-edge"
    """The edge preset under secure aggregation: the server learns only each round's sum."""


class Backend(enum.StrEnum):
    """Where the virtual devices of a simulation run."""

    LOCAL = "local"
    """Stamen's simulation grid on worker processes forked on this machine."""
    RAY = "ray"
    """Stamen's simulation grid on Ray actors: a private Ray, or a cluster's nodes."""
    FLOWER_RAY = "flower-ray"
    """Flower's Simulation Engine on Ray actors: the apps as plain Flower apps."""


class TorchDevice(enum.StrEnum):
    """Where the local backend's workers train devices together."""

    CPU = "cpu"
    CUDA = "cuda"
    """A CUDA GPU (one per machine, shared by the workers); never required."""


@dataclass(frozen=True)
class DataSettings:
    """Which dataset the devices hold and how it is split among them."""

    dataset: str = "mnist"
    """``digits``, ``mnist``, ``mnist-small``, ``watch``, ``heart-disease``,
    ``spoken-digits`` or ``npz:PATH``. Where nothing sets them, the partition, fleet size,
    devices per round, batch size, local epochs and model follow from this dataset
    (:mod:`stamen.config.derived`); the defaults below are MNIST's."""
    partition: PartitionScheme = PartitionScheme.DIRICHLET
    alpha: float = 0.3
    """Dirichlet concentration: small is more skewed (non-IID)."""
    shards_per_device: int = 2
    samples_per_device: int = 0
    """0 splits the training set among devices; N > 0 gives every device N rows,
    drawn with the partition's label skew and shared between devices (workload W1)."""

    def __post_init__(self) -> None:
        require_member(self, "partition", PartitionScheme, "data.partition")
        require(bool(self.dataset.strip()), "data.dataset", "a dataset name", self.dataset)
        require(
            self.samples_per_device >= 0,
            "data.samples_per_device",
            ">= 0",
            self.samples_per_device,
        )
        require(self.alpha > 0, "data.alpha", "> 0", self.alpha)
        require(
            self.shards_per_device >= 1, "data.shards_per_device", ">= 1", self.shards_per_device
        )


@dataclass(frozen=True)
class FederationSettings:
    """How many devices, how many rounds, and where they run."""

    num_devices: int = 100
    devices_per_round: int = 10
    rounds: int = 20
    seed: int = 0
    backend: Backend = Backend.LOCAL
    round_timeout: float = 3600.0
    """Seconds the server waits for a round's replies."""
    plain_client_compat: bool = False
    """Also send a dense model, so that plain Flower ClientApps can take part."""
    max_update_bytes: int = 64 * 2**20
    """Encoded updates larger than this are rejected."""
    deadline: float = 0.0
    """Seconds a device has to answer once its task is sent, on every grid (simulated seconds
    on the simulation grid, real ones on the edge grid); later replies are dropped as
    stragglers. 0: no deadline, a round waits for every device (up to ``round_timeout``)."""
    over_selection: float = 0.0
    """Sample this fraction more devices (0.3: 30% more), on every grid; the first
    ``devices_per_round`` good replies close the round and later ones are surplus."""
    workers: int = 0
    """Worker processes of the local simulation backend; 0: one per CPU core."""
    device_batch: int = 0
    """Devices a local-backend worker trains together where the maths allows; 1: one by one;
    0: by the model's activation size and the fleet
    (:func:`stamen.client.batched.auto_device_batch`: 32 for LeNet and the MLP, 8 for
    MobileNet on 28x28 images)."""
    device: TorchDevice = TorchDevice.CPU
    """Where devices trained together compute (``cuda``: a GPU); devices that train alone
    always use the CPU."""
    state_memory_mb: int = 256
    """MiB of device state (error-feedback residuals) the simulation grid keeps in memory; the
    states of the devices that trained longest ago spill to a temporary file beyond it."""
    eval_every: int = 1
    """Evaluate the global model centrally every this many rounds (and after the last)."""
    ray_address: str = ""
    """Join this Ray cluster (``ray start --head`` prints it); empty: start a private one."""

    def __post_init__(self) -> None:
        require_member(self, "backend", Backend, "federation.backend")
        require_member(self, "device", TorchDevice, "federation.device")
        require(
            self.ray_address in ("", "auto") or is_host_port(self.ray_address),
            "federation.ray_address",
            "host:port as `ray start --head` prints it, ray://host:port, or auto",
            self.ray_address,
        )
        require(self.num_devices >= 1, "federation.num_devices", ">= 1", self.num_devices)
        require(
            1 <= self.devices_per_round <= self.num_devices,
            "federation.devices_per_round",
            f"between 1 and num_devices ({self.num_devices})",
            self.devices_per_round,
        )
        require(self.rounds >= 1, "federation.rounds", ">= 1", self.rounds)
        require(self.seed >= 0, "federation.seed", ">= 0", self.seed)
        require(self.round_timeout > 0, "federation.round_timeout", "> 0", self.round_timeout)
        require(
            self.max_update_bytes > 0, "federation.max_update_bytes", "> 0", self.max_update_bytes
        )
        require(self.deadline >= 0, "federation.deadline", ">= 0 seconds", self.deadline)
        require(
            0 <= self.over_selection <= 10,
            "federation.over_selection",
            "between 0 and 10",
            self.over_selection,
        )
        require(self.workers >= 0, "federation.workers", ">= 0", self.workers)
        require(
            self.device_batch >= 0, "federation.device_batch", ">= 0 (0: auto)", self.device_batch
        )
        require(
            self.state_memory_mb >= 0, "federation.state_memory_mb", ">= 0", self.state_memory_mb
        )
        require(self.eval_every >= 1, "federation.eval_every", ">= 1", self.eval_every)

    @property
    def devices_sampled(self) -> int:
        """Devices sampled per round: ``devices_per_round`` plus over-selection."""
        extra = round(self.devices_per_round * self.over_selection)
        return min(self.num_devices, self.devices_per_round + extra)


@dataclass(frozen=True)
class TrainingSettings:
    """The model and the local training each device runs."""

    model: ModelName = ModelName.LENET
    width: float = 1.0
    local_epochs: int = 1
    batch_size: int = 20
    lr: float = 0.05
    momentum: float = 0.0

    def __post_init__(self) -> None:
        require_member(self, "model", ModelName, "training.model")
        require(self.width > 0, "training.width", "> 0", self.width)
        require(self.local_epochs >= 1, "training.local_epochs", ">= 1", self.local_epochs)
        require(self.batch_size >= 1, "training.batch_size", ">= 1", self.batch_size)
        require(self.lr > 0, "training.lr", "> 0", self.lr)
        require(0 <= self.momentum < 1, "training.momentum", "in [0, 1)", self.momentum)


@dataclass(frozen=True)
class QATSettings:
    """Whether devices train with fake quantization, and at which precision."""

    enabled: bool = False
    weight_bits: int = 8
    activation_bits: int = 8

    def __post_init__(self) -> None:
        self.to_qat_config()  # validates the bit widths once, here

    def to_qat_config(self) -> QATConfig:
        """The QAT config devices apply, whether or not QAT is enabled."""
        try:
            return QATConfig(weight_bits=self.weight_bits, activation_bits=self.activation_bits)
        except ConfigError as error:
            raise ConfigError(f"qat.{error}") from None


class StrategyName(enum.StrEnum):
    """The aggregation strategies ``strategy.name`` and ``--strategy`` select."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"
    NORM_BOUNDED = "norm-bounded"
    KRUM = "krum"
    MULTI_KRUM = "multi-krum"
    FEDBUFF = "fedbuff"


@dataclass(frozen=True)
class StrategySettings:
    """Which aggregation strategy the server runs, and its hyper-parameters.

    Each strategy reads only its own keys; ``stamen strategies`` lists them.
    """

    name: StrategyName = StrategyName.FEDAVG
    proximal_mu: float = 0.01
    """FedProx: weight of the proximal term on devices."""
    server_lr: float | None = None
    """FedAdam/FedYogi (default 0.01) and FedBuff (default 1.0): the server step size."""
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    """FedAdam/FedYogi: moment decays and adaptivity."""
    attacker_fraction: float = 0.3
    """trimmed-mean, krum, multi-krum: the share of a round's devices assumed malicious;
    their parameters follow from it and the round's size, unless set explicitly."""
    trim_fraction: float | None = None
    """trimmed-mean: fraction dropped at each end of every coordinate; unset:
    ``attacker_fraction`` (at most 0.45)."""
    clip_norm: float | None = None
    """norm-bounded: L2 bound per delta; unset uses each round's median norm."""
    krum_byzantine: int | None = None
    """krum, multi-krum: how many malicious devices a round may hold (f); unset:
    ``ceil(attacker_fraction * n)`` for a round of ``n`` deltas, at most ``(n - 3) // 2``."""
    krum_select: int = 0
    """multi-krum: deltas kept (0: n - f). krum always keeps one."""
    buffer_size: int = 5
    """FedBuff: aggregate whenever this many updates are buffered (K)."""
    concurrency: int | None = None
    """FedBuff: devices training at once; unset uses federation.devices_per_round."""
    staleness_exponent: float = 0.5
    """FedBuff: an update ``s`` versions old is weighted by ``1 / (1 + s) ** exponent``."""

    def __post_init__(self) -> None:
        key = "strategy."
        require_member(self, "name", StrategyName, key + "name")
        require(self.proximal_mu >= 0, key + "proximal_mu", ">= 0", self.proximal_mu)
        if self.server_lr is not None:
            require(self.server_lr > 0, key + "server_lr", "> 0", self.server_lr)
        require(0 <= self.beta1 < 1, key + "beta1", "in [0, 1)", self.beta1)
        require(0 <= self.beta2 < 1, key + "beta2", "in [0, 1)", self.beta2)
        require(self.tau > 0, key + "tau", "> 0", self.tau)
        require(
            0 <= self.attacker_fraction < 0.5,
            key + "attacker_fraction",
            "in [0, 0.5)",
            self.attacker_fraction,
        )
        if self.trim_fraction is not None:
            require(
                0 <= self.trim_fraction < 0.5,
                key + "trim_fraction",
                "in [0, 0.5)",
                self.trim_fraction,
            )
        if self.clip_norm is not None:
            require(self.clip_norm > 0, key + "clip_norm", "> 0", self.clip_norm)
        if self.krum_byzantine is not None:
            require(self.krum_byzantine >= 0, key + "krum_byzantine", ">= 0", self.krum_byzantine)
        require(self.krum_select >= 0, key + "krum_select", ">= 0", self.krum_select)
        require(self.buffer_size >= 1, key + "buffer_size", ">= 1", self.buffer_size)
        if self.concurrency is not None:
            require(self.concurrency >= 1, key + "concurrency", ">= 1", self.concurrency)
        require(
            self.staleness_exponent >= 0,
            key + "staleness_exponent",
            ">= 0",
            self.staleness_exponent,
        )


@dataclass(frozen=True)
class StamenConfig:
    """The whole, resolved configuration of one federation."""

    preset: Preset = Preset.EDGE
    data: DataSettings = field(default_factory=DataSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    qat: QATSettings = field(default_factory=QATSettings)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    uplink: UplinkCodecConfig = field(default_factory=UplinkCodecConfig)
    downlink: DownlinkCodecConfig = field(default_factory=DownlinkCodecConfig)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    defense: DefenseSettings = field(default_factory=DefenseSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)

    def __post_init__(self) -> None:
        require_member(self, "preset", Preset, "preset")
        private = self.privacy.secure_aggregation or self.privacy.dp
        if private and (self.strategy.name is not StrategyName.FEDAVG or self.distill.enabled):
            raise ConfigError(
                "privacy (secure aggregation or DP) runs with strategy fedavg and no "
                "distillation: other rules need each device's update"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values (enums as strings), in TOML's section layout."""
        from stamen.config.loading import config_to_dict

        return config_to_dict(self)


SECTION_TYPES: dict[str, type] = {
    "data": DataSettings,
    "federation": FederationSettings,
    "training": TrainingSettings,
    "qat": QATSettings,
    "pruning": PruningConfig,
    "uplink": UplinkCodecConfig,
    "downlink": DownlinkCodecConfig,
    "strategy": StrategySettings,
    "defense": DefenseSettings,
    "attack": AttackSettings,
    "fleet": FleetSettings,
    "distill": DistillSettings,
    "privacy": PrivacySettings,
}
"""The TOML sections of :class:`StamenConfig` and the dataclass each builds."""
