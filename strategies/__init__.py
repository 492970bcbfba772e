"""Aggregation strategies, one algorithm per module, all speaking Stamen's codecs."""

from stamen.strategies.compressed_fedavg import CompressedFedAvg, Rejection, RoundStats
from stamen.strategies.reply_validation import SentModel, ValidUpdate, validate_reply

__all__ = [
    "CompressedFedAvg",
    "Rejection",
    "RoundStats",
    "SentModel",
    "ValidUpdate",
    "validate_reply",
]
