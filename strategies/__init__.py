"""Aggregation strategies, one algorithm per module, all speaking Stamen's codecs."""

from stamen.strategies.compressed_fedavg import (
    CompressedFedAvg,
    Rejection,
    RoundStats,
    to_array_record,
    to_numpy,
)
from stamen.strategies.feddf import FedDF, TierStudent
from stamen.strategies.reply_validation import SentModel, ValidUpdate, validate_reply

__all__ = [
    "CompressedFedAvg",
    "FedDF",
    "Rejection",
    "RoundStats",
    "SentModel",
    "TierStudent",
    "ValidUpdate",
    "to_array_record",
    "to_numpy",
    "validate_reply",
]
