"""Stamen's transport layer: sampling, masks, encoding, reply validation and traffic stats.

Shared by every strategy; the strategies themselves (``stamen.strategies``) hold only
their aggregation algorithm.
"""

from stamen.transport.asynchronous import AsyncDispatch
from stamen.transport.deltas import (
    apply_masks_np,
    apply_mean_delta,
    l2_norm,
    model_delta,
    next_model,
    to_array_record,
    to_numpy,
    weighted_mean_delta,
)
from stamen.transport.outgoing import CheckedReply, OutgoingRecords
from stamen.transport.reply_validation import (
    SentModel,
    ValidUpdate,
    validate_reply,
)
from stamen.transport.stats import Rejection, RoundStats
from stamen.transport.transport import CompressedTransport

__all__ = [
    "AsyncDispatch",
    "CheckedReply",
    "CompressedTransport",
    "OutgoingRecords",
    "Rejection",
    "RoundStats",
    "SentModel",
    "ValidUpdate",
    "apply_masks_np",
    "apply_mean_delta",
    "l2_norm",
    "model_delta",
    "next_model",
    "to_array_record",
    "to_numpy",
    "validate_reply",
    "weighted_mean_delta",
]
