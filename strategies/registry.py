"""Every strategy by its config name, with a one-line description and a builder.

``strategy.name`` in a config file and ``stamen simulate --strategy NAME``
select from :data:`STRATEGIES`; ``stamen strategies`` prints it.

Examples:
    >>> from stamen.config import StrategySettings
    >>> from stamen.models import ModelSpec, build_model
    >>> from stamen.contract import TrainTask
    >>> spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10)
    >>> strategy = build_strategy(StrategySettings(name="trimmed-mean", trim_fraction=0.1),
    ...     model_factory=lambda: build_model(spec), task=TrainTask(model=spec.name))
    >>> type(strategy).__name__, strategy.trim_fraction
    ('TrimmedMean', 0.1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stamen.config import PrivacyMode, StamenConfig, StrategyName, StrategySettings
from stamen.privacy import DpMechanism
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.strategies.dp_fedavg import DPFedAvg
from stamen.strategies.fedadam import FedAdam
from stamen.strategies.fedbuff import FedBuff
from stamen.strategies.fedprox import FedProx
from stamen.strategies.fedyogi import FedYogi
from stamen.strategies.krum import Krum
from stamen.strategies.median import CoordinateMedian
from stamen.strategies.norm_bounding import NormBoundedAvg
from stamen.strategies.secure_fedavg import SecureFedAvg
from stamen.strategies.trimmed_mean import TrimmedMean

Builder = Callable[[StrategySettings, dict[str, Any]], CompressedFedAvg]


@dataclass(frozen=True)
class StrategyEntry:
    """One selectable strategy."""

    description: str
    paper: str
    build: Builder


def _trim_fraction(s: StrategySettings) -> float:
    # Trimming the assumed attacker share from each end; 0.45 still leaves a tenth.
    return s.trim_fraction if s.trim_fraction is not None else min(s.attacker_fraction, 0.45)


def _adam_kwargs(s: StrategySettings) -> dict[str, Any]:
    lr = 0.01 if s.server_lr is None else s.server_lr
    return {"server_lr": lr, "beta1": s.beta1, "beta2": s.beta2, "tau": s.tau}


STRATEGIES: dict[StrategyName, StrategyEntry] = {
    StrategyName.FEDAVG: StrategyEntry(
        "Example-weighted mean of the decoded deltas (the default).",
        "McMahan et al. 2017",
        lambda s, kw: CompressedFedAvg(**kw),
    ),
    StrategyName.FEDPROX: StrategyEntry(
        "FedAvg with a proximal term mu/2·||w − w_global||² in each device's loss "
        "(strategy.proximal_mu).",
        "Li et al. 2020",
        lambda s, kw: FedProx(proximal_mu=s.proximal_mu, **kw),
    ),
    StrategyName.FEDADAM: StrategyEntry(
        "Adam on the server over the mean delta, moments kept across rounds "
        "(server_lr, beta1, beta2, tau).",
        "Reddi et al. 2021",
        lambda s, kw: FedAdam(**_adam_kwargs(s), **kw),
    ),
    StrategyName.FEDYOGI: StrategyEntry(
        "FedAdam with Yogi's additive second moment (server_lr, beta1, beta2, tau).",
        "Reddi et al. 2021",
        lambda s, kw: FedYogi(**_adam_kwargs(s), **kw),
    ),
    StrategyName.MEDIAN: StrategyEntry(
        "Coordinate-wise median of the deltas; robust to < 50% bad updates, slow with top-k.",
        "Yin et al. 2018",
        lambda s, kw: CoordinateMedian(**kw),
    ),
    StrategyName.TRIMMED_MEAN: StrategyEntry(
        "Coordinate-wise mean after dropping the extremes at each end (trim_fraction).",
        "Yin et al. 2018",
        lambda s, kw: TrimmedMean(trim_fraction=_trim_fraction(s), **kw),
    ),
    StrategyName.NORM_BOUNDED: StrategyEntry(
        "Mean of the deltas, each clipped to an L2 bound (clip_norm; unset: median norm).",
        "Sun et al. 2019",
        lambda s, kw: NormBoundedAvg(clip_norm=s.clip_norm, **kw),
    ),
    StrategyName.KRUM: StrategyEntry(
        "The one delta closest to its n − f − 2 nearest others (f: krum_byzantine, "
        "or attacker_fraction of the round).",
        "Blanchard et al. 2017",
        lambda s, kw: Krum(
            byzantine=s.krum_byzantine, select=1, attacker_fraction=s.attacker_fraction, **kw
        ),
    ),
    StrategyName.MULTI_KRUM: StrategyEntry(
        "Mean of the m best-scoring deltas by Krum (krum_byzantine, krum_select; 0: n − f).",
        "Blanchard et al. 2017",
        lambda s, kw: Krum(
            byzantine=s.krum_byzantine,
            select=s.krum_select,
            attacker_fraction=s.attacker_fraction,
            **kw,
        ),
    ),
    StrategyName.FEDBUFF: StrategyEntry(
        "Asynchronous: aggregate every buffer_size updates, staleness-weighted; devices "
        "never wait for a round.",
        "Nguyen et al. 2022",
        lambda s, kw: FedBuff(
            buffer_size=s.buffer_size,
            concurrency=s.concurrency,
            staleness_exponent=s.staleness_exponent,
            server_lr=1.0 if s.server_lr is None else s.server_lr,
            **kw,
        ),
    ),
}
"""The strategies ``strategy.name`` selects."""


def build_strategy(settings: StrategySettings, **common: Any) -> CompressedFedAvg:
    """Build the strategy ``settings`` names; ``common`` goes to :class:`CompressedFedAvg`."""
    return STRATEGIES[StrategyName(settings.name)].build(settings, common)


def build_private_strategy(config: StamenConfig, common: dict[str, Any]) -> CompressedFedAvg:
    """FedAvg in the form ``config.privacy`` asks for: under secure aggregation (with central,
    distributed or no DP), or with central DP over plain compressed updates."""
    privacy, federation = config.privacy, config.federation
    dp: dict[str, Any] = {
        "noise_multiplier": privacy.noise_multiplier,
        "target_epsilon": privacy.target_epsilon,
        "delta": privacy.delta,
        "num_devices": federation.num_devices,
        "rounds": federation.rounds,
        "clip": privacy.clip,
    }
    if not privacy.secure_aggregation:
        return DPFedAvg(**dp, **common)
    mechanism = {
        PrivacyMode.OFF: None,
        PrivacyMode.CENTRAL: DpMechanism.GAUSSIAN,
        PrivacyMode.DISTRIBUTED: DpMechanism.SKELLAM,
    }[privacy.mode]
    return SecureFedAvg(
        modulus_bits=privacy.modulus_bits,
        coordinate_ratio=privacy.coordinate_ratio,
        coordinate_rule=privacy.coordinates.value,
        threshold_fraction=privacy.threshold_fraction,
        dropout_tolerance=privacy.dropout_tolerance,
        dp=mechanism,
        **dp,
        **common,
    )
