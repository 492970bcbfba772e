"""Aggregation strategies, one algorithm per module, all speaking Stamen's codecs."""

from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.strategies.dp_fedavg import DPFedAvg
from stamen.strategies.fedadam import FedAdam
from stamen.strategies.fedbuff import FedBuff, staleness_scaled
from stamen.strategies.feddf import FedDF, TierStudent
from stamen.strategies.fedprox import FedProx
from stamen.strategies.fedyogi import FedYogi
from stamen.strategies.krum import Krum, krum_scores, krum_select
from stamen.strategies.median import CoordinateMedian, coordinate_median
from stamen.strategies.norm_bounding import NormBoundedAvg, norm_bounded_mean
from stamen.strategies.registry import (
    STRATEGIES,
    StrategyEntry,
    build_private_strategy,
    build_strategy,
)
from stamen.strategies.secure_fedavg import SecureFedAvg
from stamen.strategies.trimmed_mean import TrimmedMean, trimmed_mean

__all__ = [
    "STRATEGIES",
    "CompressedFedAvg",
    "CoordinateMedian",
    "DPFedAvg",
    "FedAdam",
    "FedBuff",
    "FedDF",
    "FedProx",
    "FedYogi",
    "Krum",
    "NormBoundedAvg",
    "SecureFedAvg",
    "StrategyEntry",
    "TierStudent",
    "TrimmedMean",
    "build_private_strategy",
    "build_strategy",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "norm_bounded_mean",
    "staleness_scaled",
    "trimmed_mean",
]
