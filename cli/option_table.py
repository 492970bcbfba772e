"""Every option of ``stamen simulate`` and ``stamen server``, each defined once.

A flag that sets a config key names it here (``--over-selection`` sets
``federation.over_selection``); each command lists the options it takes, in
``--help`` order. Settings resolve as the README says: the preset, then the
``--config`` file, then ``--set section.key=value``, then these flags. The defaults
that depend on the dataset follow the rule in ``stamen.config.derived``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stamen.cli.options import Option, OptionValues
from stamen.cli.privacy_options import (  # noqa: F401 (the commands read them from here)
    DP,
    DP_CLIP,
    DP_DELTA,
    PRIVACY,
    SECURE_AGGREGATION,
    TARGET_EPSILON,
)
from stamen.config import Backend, FleetPreset, Preset, parse_assignment

DATA = "Data and model"
FED = "Federation"
COMP = "Compression"
RUN = "Run"
CONF = "Config"
MON = "Monitor"
EDGE = "Edge server"

# Config: where settings come from.
CONFIG_FILE = Option(
    "config_file",
    Path | None,
    "TOML config file; flags override it.",
    CONF,
    flags=("--config", "-c"),
)
ASSIGNMENTS = Option(
    "assignments",
    list[str] | None,
    "Any config key: --set uplink.lossless=zlib (repeatable).",
    CONF,
    flags=("--set",),
)
SWEEP = Option(
    "sweep",
    list[str] | None,
    "Run a grid: --sweep preset=edge,fp32 --sweep seed=0,1,2 (repeatable); "
    "writes sweep.csv and sweep.png.",
    CONF,
    flags=("--sweep",),
)
OUT = Option(
    "out",
    Path | None,
    "Results directory.  \\[default: runs/<time>-<preset>; stamen server: runs/<time>-edge]",
    CONF,
)

# Flags that set a config key.
PRESET = Option(
    "preset",
    Preset | None,
    "[bold]edge[/]: QAT int8, pruning to 50%, top-k+4-bit+error-feedback uplink, "
    "int8 downlink. [bold]private-edge[/]: edge under secure aggregation. "
    "[bold]fp32[/]: plain FedAvg baseline.  \\[default: edge]",
    COMP,
    key="preset",
)
DATASET = Option(
    "dataset",
    str | None,
    "digits, mnist, mnist-small, watch, heart-disease, spoken-digits, or npz:PATH.  "
    "\\[default: mnist]",
    DATA,
    key="data.dataset",
)
MODEL = Option(
    "model",
    str | None,
    "lenet, mobilenet or mlp.  \\[default: lenet for images, mlp for feature vectors]",
    DATA,
    key="training.model",
)
PARTITION = Option(
    "partition",
    str | None,
    "iid, dirichlet, shards or natural.  \\[default: natural where the data names its "
    "clients (watch, heart-disease), else dirichlet]",
    DATA,
    key="data.partition",
)
ALPHA = Option(
    "alpha",
    float | None,
    "Dirichlet alpha; smaller is more non-IID.  \\[default: 0.3]",
    DATA,
    key="data.alpha",
)
NUM_DEVICES = Option(
    "num_devices",
    int | None,
    "Devices in the fleet.  \\[default: from the dataset, one per 100 training rows, "
    "at most 100 (mnist: 100); stamen server: devices-per-round]",
    FED,
    key="federation.num_devices",
)
DEVICES_PER_ROUND = Option(
    "devices_per_round",
    int | None,
    "Devices sampled each round.  \\[default: 10, or the whole fleet if smaller]",
    FED,
    key="federation.devices_per_round",
)
ROUNDS = Option(
    "rounds", int | None, "Training rounds.  \\[default: 20]", FED, key="federation.rounds"
)
SEED = Option(
    "seed",
    int | None,
    "Seeds data split, init, sampling and rounding.  \\[default: 0]",
    FED,
    key="federation.seed",
)
BACKEND = Option(
    "backend",
    Backend | None,
    "local: Stamen's simulation grid (worker processes, simulated clock). "
    "ray: the same grid on Ray actors, across a cluster with --ray-address. "
    "flower-ray: Flower's Simulation Engine.  \\[default: local]",
    FED,
    key="federation.backend",
)
FLEET = Option(
    "fleet",
    FleetPreset | None,
    "Device mix: phones, mixed (phones, IoT boards, microcontrollers), iot, "
    "ideal, or custom from \\[fleet.tiers.NAME] tables.  \\[default: mixed]",
    FED,
    key="fleet.preset",
)
DEADLINE = Option(
    "deadline",
    float | None,
    "Seconds a device has to answer (simulated seconds in a simulation); later replies "
    "are stragglers; 0: none.  \\[default: none; stamen server: 120]",
    FED,
    key="federation.deadline",
)
OVER_SELECTION = Option(
    "over_selection",
    float | None,
    "Sample this fraction more devices; the first devices-per-round to "
    "answer make the round.  \\[default: 0]",
    FED,
    key="federation.over_selection",
)
WORKERS = Option(
    "workers",
    int | None,
    "Worker processes of the local backend.  \\[default: one per core]",
    FED,
    key="federation.workers",
)
DEVICE_BATCH = Option(
    "device_batch",
    int | None,
    "Devices a local-backend worker trains together (1: one by one).  \\[default: by model]",
    FED,
    key="federation.device_batch",
)
TORCH_DEVICE = Option(
    "device",
    str | None,
    "Where the local backend trains devices together: cpu or cuda (a GPU).  \\[default: cpu]",
    FED,
    key="federation.device",
)
RAY_ADDRESS = Option(
    "ray_address",
    str | None,
    "With --backend ray or flower-ray: join this Ray cluster (e.g. 127.0.0.1:6379).",
    FED,
    key="federation.ray_address",
)
SAMPLES_PER_DEVICE = Option(
    "samples_per_device",
    int | None,
    "Give every device this many rows, drawn with the partition's skew "
    "(0 splits the training set).  \\[default: 0]",
    DATA,
    key="data.samples_per_device",
)
LOCAL_EPOCHS = Option(
    "local_epochs",
    int | None,
    "Local epochs per round.  \\[default: enough for 30 SGD steps a round (mnist: 1)]",
    DATA,
    key="training.local_epochs",
)
LR = Option(
    "lr", float | None, "Local SGD learning rate.  \\[default: 0.05]", DATA, key="training.lr"
)
BATCH_SIZE = Option(
    "batch_size",
    int | None,
    "Local batch size.  \\[default: 20, or a fifth of a device's rows if smaller]",
    DATA,
    key="training.batch_size",
)
QAT = Option(
    "qat",
    bool | None,
    "Quantization-aware training on devices.",
    COMP,
    key="qat.enabled",
    flags=("--qat/--no-qat",),
)
QAT_BITS = Option(
    "qat_bits",
    int | None,
    "QAT weight bits: 8, 4 or 2.",
    COMP,
    key="qat.weight_bits",
    implies={"qat.enabled": True},
)
SPARSITY = Option(
    "sparsity",
    float | None,
    "Target pruning sparsity, reached halfway through the run.",
    COMP,
    key="pruning.target_sparsity",
)
TOPK = Option(
    "topk",
    float | None,
    "Uplink top-k ratio in (0, 1]; 1 sends every value.",
    COMP,
    key="uplink.topk_ratio",
)
UPLINK_VALUES = Option(
    "uplink_values",
    str | None,
    "Uplink value format: fp32, fp16, q8, q4, q2.",
    COMP,
    key="uplink.values",
)
ERROR_FEEDBACK = Option(
    "error_feedback",
    bool | None,
    "Keep the uplink residual on devices.",
    COMP,
    key="uplink.error_feedback",
    flags=("--error-feedback/--no-error-feedback",),
)
DOWNLINK_VALUES = Option(
    "downlink_values",
    str | None,
    "Downlink value format: fp32, fp16, q8.",
    COMP,
    key="downlink.values",
)
STRATEGY = Option(
    "strategy",
    str | None,
    "Aggregation strategy: fedavg, fedprox, fedadam, fedyogi, median, trimmed-mean, "
    "norm-bounded, krum, multi-krum, fedbuff (stamen strategies describes them).  "
    "\\[default: fedavg]",
    FED,
    key="strategy.name",
)

# Run.
DRY_RUN = Option(
    "dry_run", bool, "Print the resolved config and exit.", RUN, default=False, flags=("--dry-run",)
)
VERBOSE = Option(
    "verbose",
    bool,
    "Show Flower's and Stamen's logs.",
    RUN,
    default=False,
    flags=("--verbose", "-v"),
)

# Monitor: the service stamen console and stamen status connect to.
MONITOR_PORT = Option(
    "monitor_port",
    int | None,
    "Serve the monitor on this port (0: any free port) for stamen console.",
    MON,
)
MONITOR_HOST = Option(
    "monitor_host",
    str,
    "Address the monitor (and metrics) binds; the default keeps it on this machine.",
    MON,
    default="127.0.0.1",
)
MONITOR_TOKEN_FILE = Option(
    "monitor_token_file",
    Path | None,
    "Monitor tokens, '<operator|read-only> <token>' a line. Without it (or "
    "STAMEN_MONITOR_*_TOKEN) an operator token is generated into --out.",
    MON,
)
MONITOR_TLS_CERT = Option(
    "monitor_tls_cert", Path | None, "PEM certificate for the monitor's TLS.", MON
)
MONITOR_TLS_KEY = Option("monitor_tls_key", Path | None, "PEM key for the monitor's TLS.", MON)
METRICS_PORT = Option(
    "metrics_port",
    int | None,
    "Serve Prometheus metrics on this port (needs --monitor-port).",
    MON,
)

# Edge server: stamen server only.
ADDRESS = Option("address", str, "host:port to listen on.", EDGE, default="0.0.0.0:9443")
CERTS = Option("certs", Path, "Made by: stamen certs init.", EDGE, default=Path("certs"))
INSECURE = Option(
    "insecure", bool, "Plain-text gRPC, no TLS.", EDGE, default=False, flags=("--insecure",)
)
REGISTRY = Option(
    "registry", Path, "Device registry (stamen devices).", EDGE, default=Path("devices.json")
)
STATE_DIR = Option(
    "state_dir",
    Path,
    "Checkpoints. An unfinished run found here resumes; a finished one needs --resume or --fresh.",
    EDGE,
    default=Path("server-state"),
)
RESUME = Option(
    "resume",
    bool,
    "Go on with the run in --state-dir, even a finished one (raise --rounds to train more).",
    EDGE,
    default=False,
    flags=("--resume",),
)
FRESH = Option(
    "fresh",
    bool,
    "Start a new run; the run in --state-dir moves to --state-dir/previous/.",
    EDGE,
    default=False,
    flags=("--fresh",),
)
MAX_PAYLOAD_MB = Option(
    "max_payload_mb", float, "Largest upload accepted, in MiB.", EDGE, default=16.0
)
WAIT = Option("wait", float, "Seconds to wait for devices-per-round devices.", EDGE, default=300.0)
SESSION_TTL = Option(
    "session_ttl",
    float,
    "Seconds a device session lasts; agents then authenticate again, keeping their round.",
    EDGE,
    default=3600.0,
)


TRAINING_AND_COMPRESSION = (
    LOCAL_EPOCHS,
    LR,
    BATCH_SIZE,
    QAT,
    QAT_BITS,
    SPARSITY,
    TOPK,
    UPLINK_VALUES,
    ERROR_FEEDBACK,
    DOWNLINK_VALUES,
)
"""What devices are asked to train and send: the same flags, in the same order, wherever a
command runs a federation."""


def config_overrides(values: OptionValues) -> dict[str, Any]:
    """The overrides a command's flags make: ``--set`` first, then the flags that set a key."""
    overrides = dict(parse_assignment(text) for text in values[ASSIGNMENTS] or [])
    overrides.update(values.flag_overrides())
    return overrides
